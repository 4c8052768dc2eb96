"""FIMA's losses, foreground mask and crop-box geometry as small, separately testable functions.

Every function computes what the FIMA authors' code computes (github.com/ZMHH-H/FIMA,
``moco/builder.py`` and ``moco/loss.py``); docs/pretraining.md ("Fidelity") lists the checks.
All embeddings passed in are assumed L2-normalised along their feature axis; all losses are
computed in float32 with a temperature (0.1 in FIMA).

- :func:`info_nce` -- one positive per query, shared negatives (a queue).
- :func:`global_instance_loss` -- q of m against the key of n, then q of n against the key of m,
  n's keys enqueued in between.
- :func:`foreground_mask` -- RGB + frame-difference key-map saliency, cells above the median.
- :func:`cell_centers`, :func:`cell_diagonals`, :func:`dense_positive_mask` -- which cells of two
  crops of the same video show the same place.
- :func:`dense_motion_loss` -- pixel-level motion alignment (one direction, one time index).
- :func:`frame_motion_loss` -- frame(segment)-level motion alignment (one direction).

Coordinates: a crop box is ``(x1, y1, x2, y2)`` in [0, 1] coordinates of the source frame; a
horizontally flipped view has ``x1 > x2`` (the view's left edge maps to ``x1``). The centre of
cell ``(r, c)`` of an ``H x W`` feature grid is ``x = (c + 0.5) * (x2 - x1) / W + x1``,
``y = (r + 0.5) * (y2 - y1) / H + y1``, so flips are handled by the sign of ``x2 - x1``.
Distances are measured in these normalised source coordinates.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

import torch
import torch.nn.functional as F

from train.common.distributed import all_gather_cat
from train.fima.momentum import FeatureQueue

__all__ = [
    "info_nce",
    "global_instance_loss",
    "foreground_mask",
    "cell_centers",
    "cell_diagonals",
    "dense_positive_mask",
    "dense_motion_loss",
    "frame_motion_loss",
]

#: The authors' dense loss returns ``-log(S / (S + 1e-3))`` (S: the summed exponentiated
#: similarities of a sample's own key cells) for a term in which no sample has a positive pair:
#: almost 0, with a tiny gradient. We return the same number.
NO_POSITIVE_EPS = 1e-3


_Loss = TypeVar("_Loss", bound=Callable[..., Any])


def _float32(loss_fn: _Loss) -> _Loss:
    """Run a loss in float32 even inside a bf16/fp16 autocast region.

    Its logits are similarities over a temperature of 0.07-0.2 and its masked log-sum-exps fill with
    float32's lowest value: both need float32's precision and range, and autocast would otherwise
    run the matmuls in the low precision. Outside autocast this changes nothing.
    """
    @functools.wraps(loss_fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return loss_fn(*args, **kwargs)
    return wrapper  # type: ignore[return-value]


@_float32
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


def global_instance_loss(
    q_m: torch.Tensor,
    q_n: torch.Tensor,
    k_m: torch.Tensor,
    k_n: torch.Tensor,
    queue: FeatureQueue | None,
    temperature: float,
    gather: Callable[[torch.Tensor], torch.Tensor] = all_gather_cat,
) -> torch.Tensor:
    """Global instance loss in the authors' order; **updates the queue**.

    ``InfoNCE(q_m, k_n, queue)``; then n's keys (gathered from all processes) are enqueued; then
    ``InfoNCE(q_n, k_m, queue)`` (its negatives include this batch's n keys); then m's keys are
    enqueued. Returns the mean of the two directions.

    Args:
        q_m: ``(N, D)`` queries of clips m.
        q_n: ``(N, D)`` queries of clips n.
        k_m: ``(N, D)`` momentum keys of clips m.
        k_n: ``(N, D)`` momentum keys of clips n.
        queue: the key queue (None: no negatives, nothing enqueued).
        temperature: tau.
        gather: collects keys from all processes before they are enqueued.

    Returns:
        Scalar: mean of the two directions.
    """
    loss_mn = info_nce(q_m, k_n, queue.keys if queue is not None else None, temperature)
    if queue is not None:
        queue.enqueue(gather(k_n))
    loss_nm = info_nce(q_n, k_m, queue.keys if queue is not None else None, temperature)
    if queue is not None:
        queue.enqueue(gather(k_m))
    return 0.5 * (loss_mn + loss_nm)


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
    score = rgb_map.float().mean(dim=1).mean(dim=1) + diff_map.float().mean(dim=1).mean(dim=1)
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
    cols = torch.arange(width, device=boxes.device, dtype=torch.float32) + 0.5
    rows = torch.arange(height, device=boxes.device, dtype=torch.float32) + 0.5
    bin_w = ((boxes[:, 2] - boxes[:, 0]) / width)[:, None, None]
    bin_h = ((boxes[:, 3] - boxes[:, 1]) / height)[:, None, None]
    cx = cols[None, None, :] * bin_w + boxes[:, 0, None, None]  # (N, 1, W)
    cy = rows[None, :, None] * bin_h + boxes[:, 1, None, None]  # (N, H, 1)
    grid = torch.stack(torch.broadcast_tensors(cx, cy), dim=-1)  # (N, H, W, 2)
    return grid.reshape(boxes.shape[0], height * width, 2)


def cell_diagonals(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Diagonal length of one grid cell of each crop, in source coordinates: ``(N,)``."""
    boxes = boxes.float()
    w = (boxes[:, 2] - boxes[:, 0]) / width
    h = (boxes[:, 3] - boxes[:, 1]) / height
    return torch.sqrt(w**2 + h**2)


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
    their centres in source coordinates, divided by the larger of the two views' cell diagonals,
    is below ``ratio``, and both cells are foreground.

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
    # explicit differences, not torch.cdist (whose matmul path is less exact near the threshold)
    delta = cq[:, :, None, :] - ck[:, None, :, :]
    dist = torch.sqrt(delta[..., 0] ** 2 + delta[..., 1] ** 2)
    max_diag = torch.maximum(cell_diagonals(boxes_q, height, width), cell_diagonals(boxes_k, height, width))
    pos = dist / max_diag[:, None, None] < ratio
    if fg_q is not None:
        pos = pos & fg_q.flatten(1)[:, :, None]
    if fg_k is not None:
        pos = pos & fg_k.flatten(1)[:, None, :]
    return pos


@_float32
def dense_motion_loss(
    pred: torch.Tensor,
    keys: torch.Tensor,
    t_index: int,
    pos_pairs: torch.Tensor,
    queue: torch.Tensor | None,
    temperature: float,
) -> torch.Tensor:
    """Pixel-level motion loss for one direction (m -> n) and one temporal index t.

    For predicted cell ``i`` of sample ``b``, with ``s_ic = pred[b, :, i] . c / tau``::

        l_bi = -log( sum_{j in P(b, i)} exp(s_ij) / sum_{c in candidates} exp(s_ic) )

    ``P(b, i)``: the cells ``j`` of ``keys[b, t_index]`` with ``pos_pairs[b, i, j]``; candidates:
    the keys of every sample at every time index (positives included) plus the queue. A sample's
    loss is the mean of ``l_bi`` over its cells with at least one positive; the term is the mean
    over the samples that have any positive. When no sample has one, the term is the authors'
    near-zero ``mean_b -log(S_b / (S_b + 1e-3))``, ``S_b = sum_{i, j} exp(s_ij)`` over the own
    sample's cells at ``t_index``.

    Args:
        pred: ``(N, D, H, W)`` predicted dense motion of clip n (in m's grid), normalised over D.
        keys: ``(N, T, D, H, W)`` dense motion keys of clips n, normalised over D.
        t_index: which time index of ``keys`` the prediction targets.
        pos_pairs: ``(N, H*W, H*W)`` from :func:`dense_positive_mask` (query cells x key cells).
        queue: ``(K, D)`` dense key queue, or None.
        temperature: tau.

    Returns:
        Scalar loss of this term.
    """
    n, d, h, w = pred.shape
    hw = h * w
    queries = pred.float().flatten(2).transpose(1, 2)  # (N, HW, D)
    own = keys[:, t_index].float().flatten(2)  # (N, D, HW)
    own_logits = torch.bmm(queries, own) / temperature  # (N, HW, HW)
    cand = keys.float().permute(0, 1, 3, 4, 2).reshape(-1, d)  # every sample, every time index
    if queue is not None and queue.numel():
        cand = torch.cat([cand, queue.float()], dim=0)
    all_lse = torch.logsumexp(queries.reshape(n * hw, d) @ cand.t() / temperature, dim=1).reshape(n, hw)
    has_pos = pos_pairs.any(dim=2)  # (N, HW)
    pos_lse = torch.logsumexp(own_logits.masked_fill(~pos_pairs, torch.finfo(torch.float32).min), dim=2)
    cell_loss = torch.where(has_pos, all_lse - pos_lse, torch.zeros_like(all_lse))
    cells = has_pos.sum(dim=1).float()  # (N,)
    valid = cells > 0
    per_sample = cell_loss.sum(dim=1) / cells.clamp_min(1.0)
    n_valid = valid.sum().float()
    loss = torch.where(valid, per_sample, torch.zeros_like(per_sample)).sum() / n_valid.clamp_min(1.0)
    # masked arithmetic instead of a data-dependent branch: no host-device synchronisation on GPUs
    no_positive = torch.log1p(NO_POSITIVE_EPS * torch.exp(-torch.logsumexp(own_logits.flatten(1), dim=1))).mean()
    return torch.where(n_valid > 0, loss, no_positive)


@_float32
def frame_motion_loss(
    pred: torch.Tensor,
    target_local: torch.Tensor,
    source_local: torch.Tensor,
    queue: torch.Tensor | None,
    temperature: float,
) -> torch.Tensor:
    """Frame-level (segment) motion loss for one direction m -> n.

    The query for segment ``s`` of sample ``b`` is the decoder's predicted cls ``pred[b, s]``; its
    positive is n's local motion key ``target_local[b, s]``. Negatives: n's other segments of
    **every** sample, m's segments of every sample, and the motion queue; the target segment ``s``
    of the other samples is not a candidate. One cross-entropy per segment, averaged.

    Args:
        pred: ``(N, S, D)`` predicted local motion keys of n (S = 2 segments).
        target_local: ``(N, S, D)`` local motion keys of clips n.
        source_local: ``(N, S, D)`` local motion keys of clips m.
        queue: ``(K, D)`` motion queue, or None.
        temperature: tau.

    Returns:
        Scalar mean loss over the ``N * S`` queries.
    """
    s_count, d = pred.shape[1], pred.shape[2]
    target = target_local.float()
    shared = [source_local.float().reshape(-1, d)]
    if queue is not None and queue.numel():
        shared.append(queue.float())
    terms = []
    for s in range(s_count):
        others = target[:, [o for o in range(s_count) if o != s]].reshape(-1, d)
        terms.append(info_nce(pred[:, s], target[:, s], torch.cat([others, *shared], dim=0), temperature))
    return torch.stack(terms).mean()
