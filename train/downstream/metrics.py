"""Evaluation metrics of the downstream protocols.

All functions work on CPU or GPU tensors and return plain Python floats in
percent, so they can go straight into ``results.json``.

* :func:`topk_accuracy` -- top-k classification accuracy.
* :func:`average_clip_logits` -- the multi-clip test: average the logits of the
  clips of each video.
* :func:`centre_and_normalise` -- the retrieval feature post-processing: subtract
  the gallery mean, then L2-normalise gallery and queries.
* :func:`retrieval_recall` -- Recall@k for nearest-neighbour retrieval, where a
  query counts as a hit when at least one of its k nearest gallery items has the
  query's class.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "RETRIEVAL_KS",
    "TOPK",
    "topk_accuracy",
    "average_clip_logits",
    "centre_and_normalise",
    "retrieval_recall",
]

#: Recall@k values of the retrieval protocol.
RETRIEVAL_KS: tuple[int, ...] = (1, 5, 10, 20, 50)
#: Top-k values reported by classification tests.
TOPK: tuple[int, ...] = (1, 5)


def _check_labels(scores: torch.Tensor, labels: torch.Tensor, what: str) -> None:
    if scores.ndim != 2:
        raise ValueError(f"{what} must be 2-D [N, C], got shape {tuple(scores.shape)}")
    if labels.ndim != 1 or labels.shape[0] != scores.shape[0]:
        raise ValueError(
            f"labels must be 1-D with one entry per row of {what}; got labels {tuple(labels.shape)} "
            f"for {what} {tuple(scores.shape)}"
        )


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, ks: Iterable[int] = TOPK) -> dict[int, float]:
    """Top-k accuracy in percent.

    A sample is correct at k when its target is among the k largest logits. A k
    larger than the number of classes is clamped to it (every sample is then
    correct).

    Args:
        logits: ``[N, C]`` scores (logits or probabilities).
        targets: ``[N]`` integer class indices.
        ks: the k values.

    Returns:
        ``{k: accuracy_percent}`` for every k.

    Raises:
        ValueError: on mismatched shapes or an empty batch.
    """
    _check_labels(logits, targets, "logits")
    if logits.shape[0] == 0:
        raise ValueError("topk_accuracy needs at least one sample; the evaluation set is empty")
    ks = [int(k) for k in ks]
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {ks}")
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices  # [N, kmax], best first
    hits = top.eq(targets.to(top.device).view(-1, 1))  # [N, kmax]
    out: dict[int, float] = {}
    for k in ks:
        correct = hits[:, : min(k, kmax)].any(dim=1).float().mean().item()
        out[k] = 100.0 * correct
    return out


def average_clip_logits(logits: torch.Tensor, num_clips: int | None = None) -> torch.Tensor:
    """Average the clip logits of each video (the multi-clip test).

    Args:
        logits: ``[N, K, C]`` logits of K clips per video, or ``[N * K, C]`` with
            the K clips of a video in consecutive rows (then ``num_clips`` is needed).
        num_clips: K when ``logits`` is 2-D.

    Returns:
        ``[N, C]`` mean logits per video.

    Raises:
        ValueError: when the shape does not fit.
    """
    if logits.ndim == 2:
        if not num_clips or logits.shape[0] % num_clips:
            raise ValueError(
                f"2-D logits {tuple(logits.shape)} need num_clips dividing the row count; got num_clips={num_clips}"
            )
        logits = logits.view(-1, num_clips, logits.shape[-1])
    if logits.ndim != 3:
        raise ValueError(f"expected logits [N, K, C] or [N*K, C], got shape {tuple(logits.shape)}")
    return logits.float().mean(dim=1)


def centre_and_normalise(gallery: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean-centre with the gallery mean, then L2-normalise every row.

    Args:
        gallery: ``[G, D]`` gallery features.
        queries: ``[Q, D]`` query features.

    Returns:
        ``(gallery, queries)`` centred and unit-norm, float32.
    """
    if gallery.ndim != 2 or queries.ndim != 2 or gallery.shape[1] != queries.shape[1]:
        raise ValueError(
            f"gallery and queries must be [G, D] and [Q, D] with the same D; got {tuple(gallery.shape)} "
            f"and {tuple(queries.shape)}"
        )
    if gallery.shape[0] == 0:
        raise ValueError("the retrieval gallery is empty; check the train split of the data set")
    mean = gallery.float().mean(dim=0, keepdim=True)
    return F.normalize(gallery.float() - mean, dim=1), F.normalize(queries.float() - mean, dim=1)


def retrieval_recall(
    query_feats: torch.Tensor,
    query_labels: torch.Tensor,
    gallery_feats: torch.Tensor,
    gallery_labels: torch.Tensor,
    ks: Sequence[int] = RETRIEVAL_KS,
    centre: bool = True,
) -> dict[int, float]:
    """Recall@k of nearest-neighbour video retrieval, in percent.

    Similarity is the cosine of the (gallery-mean-centred, when ``centre``)
    features. A query is a hit at k when any of its k most similar gallery items
    has the query's label. k larger than the gallery is clamped to its size.

    Args:
        query_feats: ``[Q, D]``.
        query_labels: ``[Q]``.
        gallery_feats: ``[G, D]``.
        gallery_labels: ``[G]``.
        ks: the k values.
        centre: subtract the gallery mean before normalising (the protocol does).

    Returns:
        ``{k: recall_percent}``.
    """
    _check_labels(query_feats, query_labels, "query_feats")
    _check_labels(gallery_feats, gallery_labels, "gallery_feats")
    if query_feats.shape[0] == 0:
        raise ValueError("retrieval needs at least one query; the test split is empty")
    if centre:
        gallery, queries = centre_and_normalise(gallery_feats, query_feats)
    else:
        gallery, queries = F.normalize(gallery_feats.float(), dim=1), F.normalize(query_feats.float(), dim=1)
    sim = queries @ gallery.t()  # [Q, G]
    kmax = min(max(ks), gallery.shape[0])
    nn_idx = sim.topk(kmax, dim=1).indices  # [Q, kmax]
    hits = gallery_labels.to(nn_idx.device)[nn_idx].eq(query_labels.to(nn_idx.device).view(-1, 1))
    return {int(k): 100.0 * hits[:, : min(int(k), kmax)].any(dim=1).float().mean().item() for k in ks}
