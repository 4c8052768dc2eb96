"""The multi-clip test and batched, distributed clip inference shared by all recipes.

Protocol (docs/recipes.md, "test"): every test video is cut into 10
clips spread uniformly over its length; each clip is resized (short side to
``size / 0.875``) and centre-cropped; the model's logits of the 10 clips are
averaged and top-1 / top-5 accuracy is reported.

:func:`clip_outputs` runs any per-clip function (the classifier for the test,
the pooled backbone for retrieval and the linear probe's feature cache) over a
multi-clip data set. Under ``torchrun`` each rank takes every ``world``-th video
and the results are gathered, so every rank ends with the outputs of the whole
split in data-set order.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from fima_models.inference import optimize_for_inference
from train.common.distributed import all_gather_cat
from train.common.precision import autocast
from train.common.sampling import ResumableBatchSampler
from train.common.seed import SeededDataset

from .build import (
    RunContext,
    backbone_name,
    build_model,
    dataset_classes,
    load_classifier_checkpoint,
    multiclip_dataset,
)
from .metrics import TOPK, average_clip_logits, topk_accuracy
from .results import weights_provenance, write_results

__all__ = ["clip_outputs", "multiclip_accuracy", "run_test", "finish_run"]

_logger = logging.getLogger(__name__)


class _WithIndex(Dataset):
    """Yield ``(sample, label, index)`` so gathered outputs can be put back in data-set order."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = SeededDataset(dataset, seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        sample, label = self.dataset[key]
        return sample, label, int(key[1])


@torch.no_grad()
def clip_outputs(
    fn: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    ctx: RunContext,
    batch_size: int,
    workers: int = 0,
    desc: str = "clips",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``fn`` to every clip of a multi-clip data set.

    Args:
        fn: maps a clip batch ``[B, 3, T, S, S]`` to ``[B, D]`` (logits or features). A module
            runs as its ``optimize_for_inference`` copy unless the config sets ``test.optimize: false``.
        dataset: items ``([K, 3, T, S, S], label)``.
        ctx: run context (device, ranks, precision).
        batch_size: videos per batch (each contributes K clips).
        workers: DataLoader worker processes.
        desc: progress-bar label.

    Returns:
        ``(outputs [N, K, D] float32 on CPU, labels [N])`` for the whole split, on every rank.
    """
    sampler = ResumableBatchSampler(
        len(dataset),
        batch_size,
        rank=ctx.dist.rank,
        world_size=ctx.dist.world_size,
        seed=int(ctx.cfg.get("seed", 0)),
        shuffle=False,
        drop_last=False,
    )
    loader = DataLoader(
        _WithIndex(dataset, int(ctx.cfg.get("seed", 0))),
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=ctx.device.type == "cuda",
        persistent_workers=False,
    )
    optimize = isinstance(fn, nn.Module) and bool(ctx.cfg.get("test", {}).get("optimize", True))
    outs, labels, indices = [], [], []
    bar = tqdm(loader, desc=desc, unit="batch", disable=not ctx.is_main, dynamic_ncols=True)
    for clips, label, index in bar:
        if clips.ndim != 6:
            raise ValueError(
                f"expected multi-clip batches [B, K, 3, T, S, S], got {tuple(clips.shape)}; "
                "build the data set with UniformClipSampler and EvalTransform"
            )
        b, k = clips.shape[:2]
        x = clips.flatten(0, 1).to(ctx.device, non_blocking=True)
        if optimize:  # on the first batch, whose clip shape the fast path is checked on
            fn = optimize_for_inference(fn, device=ctx.device, example_shape=(1, *x.shape[1:]))
            optimize = False
        with autocast(ctx.device, ctx.precision):
            y = fn(x)
        outs.append(y.float().view(b, k, -1))
        labels.append(label.to(ctx.device))
        indices.append(index.to(ctx.device))
    bar.close()
    out = all_gather_cat(torch.cat(outs)).cpu()
    lab = all_gather_cat(torch.cat(labels)).cpu()
    idx = all_gather_cat(torch.cat(indices)).cpu()
    # ranks were padded to equal length by repeating videos: keep the first copy of each index
    order = torch.argsort(idx, stable=True)
    idx, out, lab = idx[order], out[order], lab[order]
    keep = torch.ones_like(idx, dtype=torch.bool)
    keep[1:] = idx[1:] != idx[:-1]
    if int(keep.sum()) != len(dataset):
        raise RuntimeError(f"gathered {int(keep.sum())} videos for a split of {len(dataset)}; ranks disagree")
    return out[keep], lab[keep].long()


def multiclip_accuracy(
    model: nn.Module, dataset: Dataset, ctx: RunContext, batch_size: int, workers: int = 0
) -> dict[str, float]:
    """The multi-clip test: average the clips' logits per video, then top-1 / top-5 in percent.

    Args:
        model: classifier (``[B, 3, T, S, S] -> [B, C]``); set to eval mode here.
        dataset: multi-clip test split (:func:`~train.downstream.build.multiclip_dataset`).
        ctx: run context.
        batch_size: videos per batch.
        workers: DataLoader workers.

    Returns:
        ``{"top1", "top5", "num_videos", "num_clips"}``.
    """
    model.eval()
    logits, labels = clip_outputs(model, dataset, ctx, batch_size, workers, desc="test")
    acc = topk_accuracy(average_clip_logits(logits), labels, TOPK)
    metrics = {f"top{k}": v for k, v in acc.items()}
    metrics.update({"num_videos": float(logits.shape[0]), "num_clips": float(logits.shape[1])})
    _logger.info("multi-clip test on %d videos x %d clips: top-1 %.2f, top-5 %.2f",
             logits.shape[0], logits.shape[1], metrics["top1"], metrics["top5"])
    return metrics


def run_test(ctx: RunContext) -> dict[str, Any]:
    """``python -m train test``: multi-clip test of a trained classifier.

    The classifier is ``--checkpoint FILE`` (a finetune / linear result, loaded completely)
    or ``--model local-dir:DIR`` / a zoo name whose weights include a classifier for the
    data set's classes.

    Returns:
        The metrics written to ``results.json``.
    """
    cfg = ctx.cfg
    checkpoint = cfg.get("init_checkpoint")
    num_classes = len(dataset_classes(cfg))
    if checkpoint:
        # a complete classifier: build the bare architecture, then load every key strictly
        model, _ = build_model({**cfg, "init_checkpoint": None, "pretrained": False}, num_classes)
        meta = load_classifier_checkpoint(model, checkpoint)
        weights = {**weights_provenance(str(cfg["model"]), False, checkpoint), "method": meta.get("method")}
    else:
        model, weights = build_model(cfg, num_classes)
    model.to(ctx.device)
    dataset = multiclip_dataset(cfg, model, False, int(cfg["data"]["test_clips"]))
    metrics = multiclip_accuracy(model, dataset, ctx, int(cfg["test"]["batch_size"]), int(cfg["data"]["workers"]))
    if ctx.is_main:
        finish_run(ctx, "test", weights, metrics)
    return metrics


def finish_run(
    ctx: RunContext,
    command: str,
    weights: dict[str, Any],
    metrics: dict[str, float],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write ``results.json`` / ``results.md`` of a finished run (call on rank 0 only)."""
    path = write_results(
        ctx.out_dir,
        command=command,
        dataset=str(ctx.cfg["dataset"]),
        split=ctx.cfg.get("split"),
        model=str(ctx.cfg["model"]),
        backbone=backbone_name(str(ctx.cfg["model"])),
        weights=weights,
        metrics=metrics,
        config=ctx.cfg,
        wall_time_s=ctx.elapsed(),
        extra=extra,
    )
    _logger.info("wrote %s", path)
