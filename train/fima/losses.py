"""FIMA's losses, foreground mask and crop-box geometry as small, separately testable functions.

All embeddings passed in are assumed L2-normalised along their feature axis; all losses are
InfoNCE with a temperature (0.1 in FIMA) and computed in float32.

- :func:`info_nce` -- one positive per query, shared negatives (queue). Used by the global loss.
- :func:`info_nce_multi_positive` -- any number of positives per query, explicit negative mask.
  Used by the dense loss.
- :func:`global_instance_loss` -- q of clip m vs key of clip n (and symmetric), queue negatives.
- :func:`foreground_mask` -- RGB + frame-difference key-map saliency, cells above the median.
- :func:`cell_centers`, :func:`cell_diagonals`, :func:`dense_positive_mask` -- which cells of two
  crops of the same video show the same place.
- :func:`dense_motion_loss` -- pixel-level motion alignment.
- :func:`frame_motion_loss` -- frame(segment)-level motion alignment.

Coordinates: a crop box is ``(x1, y1, x2, y2)`` in [0, 1] coordinates of the source frame; a
horizontally flipped view has ``x1 > x2`` (the view's left edge maps to ``x1``). The centre of
cell ``(r, c)`` of an ``H x W`` feature grid is ``x = x1 + (c + 0.5) / W * (x2 - x1)``,
``y = y1 + (r + 0.5) / H * (y2 - y1)``, so flips are handled by the sign of ``x2 - x1``.
Distances are measured in these normalised source coordinates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "info_nce",
    "info_nce_multi_positive",
    "global_instance_loss",
    "foreground_mask",
    "cell_centers",
    "cell_diagonals",
    "dense_positive_mask",
    "dense_motion_loss",
    "frame_motion_loss",
]


def info_nce(query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """InfoNCE with one positive per query and a shared set of negatives.

    ``loss_i = -log( exp(q_i.k_i / tau) / (exp(q_i.k_i / tau) + sum_j exp(q_i.n_j / tau)) )``, averaged.

    Args:
        query: ``(N, D)`` queries.
        positive: ``(N, D)`` the positive key of each query.
        negatives: ``(K, D)`` negatives shared by all queries (a queue), or None.
        temperature: softmax temperature tau.

    Returns:
        Scalar mean loss.
    """
    q = query.float()
    pos = (q * positive.float()).sum(dim=1, keepdim=True)
    logits = pos if negatives is None or negatives.numel() == 0 else torch.cat([pos, q @ negatives.float().t()], dim=1)
    target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits / temperature, target)


def info_nce_multi_positive(
    logits: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE where each query may have several positives and an explicit set of negatives.

    For every positive pair ``(i, j)``:
    ``l_ij = -log( exp(s_ij) / (exp(s_ij) + sum_{k in neg(i)} exp(s_ik)) )``;
    a query's loss is the mean over its positives; queries without positives are skipped.

    Args:
        logits: ``(Q, K)`` similarities already divided by the temperature.
        pos_mask: ``(Q, K)`` bool, positives.
        neg_mask: ``(Q, K)`` bool, negatives (must not overlap ``pos_mask``).

    Returns:
        ``(loss_sum, count)``: the sum of per-query losses over queries that have positives, and
        how many such queries there are (float tensors; divide for the mean).
    """
    logits = logits.float()
    neg_inf = torch.finfo(logits.dtype).min
    neg_lse = torch.logsumexp(logits.masked_fill(~neg_mask, neg_inf), dim=1, keepdim=True)
    no_neg = ~neg_mask.any(dim=1, keepdim=True)
    # log(exp(s) + sum_neg exp) ; without negatives the pair loss is exactly 0
    denom = torch.where(no_neg, logits, torch.logaddexp(logits, neg_lse))
    pair_loss = (denom - logits) * pos_mask
    n_pos = pos_mask.sum(dim=1).to(logits.dtype)
    valid = n_pos > 0
    # masked arithmetic instead of boolean indexing: no host-device synchronisation on GPUs
    per_query = torch.where(valid, pair_loss.sum(dim=1) / n_pos.clamp_min(1.0), torch.zeros_like(n_pos))
    return per_query.sum(), valid.sum().to(logits.dtype)


def global_instance_loss(
    q_m: torch.Tensor, q_n: torch.Tensor, k_m: torch.Tensor, k_n: torch.Tensor, queue: torch.Tensor | None, temperature: float
) -> torch.Tensor:
    """Global instance loss: q of clip m against the key of clip n (and n against m), queue negatives.

    Args:
        q_m: ``(N, D)`` queries of clips m.
        q_n: ``(N, D)`` queries of clips n.
        k_m: ``(N, D)`` momentum keys of clips m.
        k_n: ``(N, D)`` momentum keys of clips n.
        queue: ``(K, D)`` negative keys, or None.
        temperature: tau.

    Returns:
        Scalar: mean of the two directions.
    """
    return 0.5 * (info_nce(q_m, k_n, queue, temperature) + info_nce(q_n, k_m, queue, temperature))


def foreground_mask(rgb_map: torch.Tensor, diff_map: torch.Tensor) -> torch.Tensor:
    """Foreground cells of each clip from its key-encoder feature maps.

    Both maps are averaged over channels and time, added, and the cells strictly above the
    per-clip median (``torch.median``: the lower middle value for an even count) are kept.

    Args:
        rgb_map: ``(N, C, T, H, W)`` key map of the RGB view.
        diff_map: ``(N, C, T, H, W)`` key map of the frame-difference view (same grid).

    Returns:
        ``(N, H, W)`` bool mask.

    Raises:
        ValueError: if the spatial grids differ.
    """
    if rgb_map.shape[0] != diff_map.shape[0] or rgb_map.shape[-2:] != diff_map.shape[-2:]:
        raise ValueError(f"RGB and difference maps must share batch and grid, got {tuple(rgb_map.shape)} and {tuple(diff_map.shape)}")
    score = rgb_map.float().mean(dim=(1, 2)) + diff_map.float().mean(dim=(1, 2))
    median = score.flatten(1).median(dim=1).values
    return score > median[:, None, None]


def cell_centers(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Centres of the cells of an ``height x width`` grid over each crop, in source coordinates.

    Args:
        boxes: ``(N, 4)`` crop boxes ``(x1, y1, x2, y2)``, ``x1 > x2`` for flipped views.
        height: grid rows H.
        width: grid columns W.

    Returns:
        ``(N, H * W, 2)`` ``(x, y)`` centres, cells in row-major order.
    """
    boxes = boxes.float()
    ys = (torch.arange(height, device=boxes.device, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, device=boxes.device, dtype=torch.float32) + 0.5) / width
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    gx = gx.reshape(1, -1)
    gy = gy.reshape(1, -1)
    x1, y1, x2, y2 = (boxes[:, i : i + 1] for i in range(4))
    cx = x1 + gx * (x2 - x1)
    cy = y1 + gy * (y2 - y1)
    return torch.stack([cx, cy], dim=-1)


def cell_diagonals(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Diagonal length of one grid cell of each crop, in source coordinates: ``(N,)``."""
    boxes = boxes.float()
    w = (boxes[:, 2] - boxes[:, 0]).abs() / width
    h = (boxes[:, 3] - boxes[:, 1]).abs() / height
    return torch.sqrt(w * w + h * h)


def dense_positive_mask(
    boxes_q: torch.Tensor,
    boxes_k: torch.Tensor,
    fg_q: torch.Tensor | None,
    fg_k: torch.Tensor | None,
    height: int,
    width: int,
    ratio: float = 0.7,
) -> torch.Tensor:
    """Positive cell pairs between two views of the same video.

    Cell ``i`` of the query view and cell ``j`` of the key view are positive when the distance of
    their centres in source coordinates is below ``ratio`` x the larger of the two views' cell
    diagonals, and both cells are foreground.

    Args:
        boxes_q: ``(N, 4)`` crop boxes of the query views.
        boxes_k: ``(N, 4)`` crop boxes of the key views.
        fg_q: ``(N, H, W)`` bool foreground of the query views (None: all foreground).
        fg_k: ``(N, H, W)`` bool foreground of the key views (None: all foreground).
        height: grid rows H.
        width: grid columns W.
        ratio: distance threshold as a fraction of the larger cell diagonal (0.7 in FIMA).

    Returns:
        ``(N, H * W, H * W)`` bool: ``[b, i, j]`` is True when (i, j) is a positive pair of sample b.
    """
    cq = cell_centers(boxes_q, height, width)
    ck = cell_centers(boxes_k, height, width)
    dist = torch.cdist(cq, ck)
    thresh = ratio * torch.maximum(cell_diagonals(boxes_q, height, width), cell_diagonals(boxes_k, height, width))
    pos = dist < thresh[:, None, None]
    if fg_q is not None:
        pos = pos & fg_q.flatten(1)[:, :, None]
    if fg_k is not None:
        pos = pos & fg_k.flatten(1)[:, None, :]
    return pos


def dense_motion_loss(
    pred: torch.Tensor,
    keys: torch.Tensor,
    t_index: int,
    pos_pairs: torch.Tensor,
    queue: torch.Tensor | None,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-level motion loss for one direction (m -> n) and one temporal index t.

    Every predicted cell ``(b, i)`` is a query; candidates are all dense keys of the batch at all
    time indices (``keys`` flattened) plus the dense queue. Its positives are the cells ``j`` of
    its own sample at time ``t_index`` with ``pos_pairs[b, i, j]``; every other candidate is a
    negative.

    Args:
        pred: ``(N, D, H, W)`` predicted dense motion of clip n (in m's grid), normalised over D.
        keys: ``(N, T, D, H, W)`` dense motion keys of clips n, normalised over D.
        t_index: which time index of ``keys`` the prediction targets.
        pos_pairs: ``(N, H*W, H*W)`` from :func:`dense_positive_mask` (query cells x key cells).
        queue: ``(K, D)`` dense key queue, or None.
        temperature: tau.

    Returns:
        ``(loss_sum, count)`` over query cells that have positives (see :func:`info_nce_multi_positive`).
    """
    n, d, h, w = pred.shape
    t = keys.shape[1]
    hw = h * w
    queries = pred.float().permute(0, 2, 3, 1).reshape(n * hw, d)
    cand = keys.float().permute(0, 1, 3, 4, 2).reshape(n * t * hw, d)
    if queue is not None and queue.numel():
        cand = torch.cat([cand, queue.float()], dim=0)
    logits = queries @ cand.t() / temperature
    pos = torch.zeros(n, hw, n, t, hw, dtype=torch.bool, device=pred.device)
    idx = torch.arange(n, device=pred.device)
    pos[idx, :, idx, t_index, :] = pos_pairs
    pos = pos.reshape(n * hw, n * t * hw)
    if cand.shape[0] > pos.shape[1]:
        pos = torch.cat([pos, pos.new_zeros(n * hw, cand.shape[0] - pos.shape[1])], dim=1)
    return info_nce_multi_positive(logits, pos, ~pos)


def frame_motion_loss(
    pred: torch.Tensor,
    target_local: torch.Tensor,
    source_local: torch.Tensor,
    queue: torch.Tensor | None,
    temperature: float,
) -> torch.Tensor:
    """Frame-level (segment) motion loss for one direction m -> n.

    The query for segment ``s`` of sample ``b`` is the decoder's predicted cls ``pred[b, s]``; its
    positive is n's local motion key ``target_local[b, s]``. Negatives: every other local key of the
    batch -- n's other segment, the other samples' segments, all of m's local keys -- and the
    motion queue.

    Args:
        pred: ``(N, S, D)`` predicted local motion keys of n (S = 2 segments).
        target_local: ``(N, S, D)`` local motion keys of clips n.
        source_local: ``(N, S, D)`` local motion keys of clips m.
        queue: ``(K, D)`` motion queue, or None.
        temperature: tau.

    Returns:
        Scalar mean loss over the ``N * S`` queries.
    """
    n, s, d = pred.shape
    queries = pred.float().reshape(n * s, d)
    cand = torch.cat([target_local.float().reshape(n * s, d), source_local.float().reshape(n * s, d)], dim=0)
    if queue is not None and queue.numel():
        cand = torch.cat([cand, queue.float()], dim=0)
    logits = queries @ cand.t() / temperature
    target = torch.arange(n * s, device=pred.device)
    return F.cross_entropy(logits, target)
