"""Nearest-neighbour video retrieval with frozen features.

Protocol (docs/recipes.md, "retrieval"): the training split is the gallery, the test split the
queries. A video's feature is the mean of the backbone's pooled features of
``retrieval.clips`` clips spread uniformly over it (centre crop, as in the
test). Features are mean-centred with the gallery mean and L2-normalised; the
similarity is their cosine. Recall@k (k = 1, 5, 10, 20, 50) is the percentage of
queries with at least one video of their own class among the k most similar
gallery videos.
"""

from __future__ import annotations

import logging

from .build import RunContext, build_model, multiclip_dataset
from .evaluate import clip_outputs, finish_run
from .metrics import retrieval_recall

__all__ = ["run_retrieval"]

_logger = logging.getLogger(__name__)


def run_retrieval(ctx: RunContext) -> dict[str, float]:
    """``python -m train retrieval``: Recall@k of test-split queries against the train-split gallery.

    Returns:
        The metrics written to ``results.json`` (``R@1`` ... ``R@50``, sizes).
    """
    cfg = ctx.cfg
    section = cfg["retrieval"]
    backbone, weights = build_model(cfg, 0)
    backbone.to(ctx.device).eval()
    clips = int(section["clips"])
    batch, workers = int(cfg["test"]["batch_size"]), int(cfg["data"]["workers"])
    gallery, gallery_labels = clip_outputs(
        backbone, multiclip_dataset(cfg, backbone, True, clips), ctx, batch, workers, desc="gallery"
    )
    queries, query_labels = clip_outputs(
        backbone, multiclip_dataset(cfg, backbone, False, clips), ctx, batch, workers, desc="queries"
    )
    ks = [int(k) for k in section.get("ks", (1, 5, 10, 20, 50))]
    recall = retrieval_recall(queries.mean(1), query_labels, gallery.mean(1), gallery_labels, ks)
    metrics = {f"R@{k}": v for k, v in recall.items()}
    metrics.update({"num_queries": float(queries.shape[0]), "num_gallery": float(gallery.shape[0])})
    _logger.info("retrieval: %s", ", ".join(f"R@{k} {v:.1f}" for k, v in recall.items()))
    if ctx.is_main:
        finish_run(ctx, "retrieval", weights, metrics)
    return metrics
