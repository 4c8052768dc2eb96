"""Supervised training loop of the downstream recipes, and the fine-tuning recipe.

Fine-tune protocol (DESIGN.md): all layers, 150 epochs, SGD lr 0.01, momentum 0.9,
weight decay 1e-4, learning rate x0.1 at epochs 60 and 120, batch 16, dropout 0.7
(UCF101) / 0.5 (HMDB51), the pretraining augmentation without blur; then the
10-clip test.

:func:`train_loop` is shared with the linear probe: it trains any classifier on a
data set of ``(input, label)`` pairs with the common pieces of ``train/`` --
per-step schedules (:mod:`train.common.optim`), autocast (:mod:`train.common.precision`),
torchrun DDP and a rank-aware resumable sampler, atomic keep-last-K checkpoints with
exact resume, CSV / TensorBoard / tqdm logging and a loss plot.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fima_models.checkpoint import TRAIN_FORMAT
from train.common.checkpoint import atomic_torch_save, check_train_checkpoint, find_latest_valid, save_checkpoint
from train.common.distributed import all_gather_object, all_reduce_mean, barrier
from train.common.optim import build_optimizer, build_scheduler
from train.common.precision import autocast, make_grad_scaler, to_channels_last_3d
from train.common.run_log import Progress, RunLogger, plot_losses
from train.common.sampling import ResumableBatchSampler
from train.common.seed import SeededDataset, get_rng_state, set_rng_state

from .build import RunContext, build_model, dataset_classes, multiclip_dataset, train_dataset, unwrap
from .evaluate import finish_run, multiclip_accuracy

__all__ = ["TRAIN_FORMAT", "train_loop", "save_final", "run_finetune"]

log = logging.getLogger(__name__)

#: Sections of a checkpoint's ``state`` a resumed fine-tune or linear run reads.
_RESUME_STATE = ("optimizer", "scheduler", "scaler", "logger", "rng")


def _check_resumable(path: Path, state: dict[str, Any]) -> None:
    check_train_checkpoint(path, state, _RESUME_STATE)


def _checkpoint(
    ctx: RunContext, model: nn.Module, method: str, epoch: int, step: int, num_classes: int, state: dict[str, Any]
) -> dict[str, Any]:
    return {
        "format": TRAIN_FORMAT,
        "version": 1,
        "model_name": str(ctx.cfg["model"]),
        "method": method,
        "epoch": epoch,
        "step": step,
        "model": unwrap(model).state_dict(),
        "num_classes": num_classes,
        "config": ctx.cfg,
        "state": state,
    }


def save_final(ctx: RunContext, model: nn.Module, method: str, epoch: int, step: int, num_classes: int) -> Path:
    """Write the finished classifier as ``DIR/final.pt`` (loadable by ``python -m train test --checkpoint``)."""
    return atomic_torch_save(_checkpoint(ctx, model, method, epoch, step, num_classes, {}), ctx.out_dir / "final.pt")


def _per_rank_batch(ctx: RunContext, global_batch: int, num_samples: int) -> int:
    world = ctx.dist.world_size
    per_rank = max(1, int(global_batch) // world)
    if per_rank * world > num_samples:
        fitted = max(1, num_samples // world)
        log.warning(
            "batch %d does not fit %d training samples on %d process(es); using %d per process",
            global_batch, num_samples, world, fitted,
        )
        per_rank = fitted
    return per_rank


def train_loop(
    ctx: RunContext,
    model: nn.Module,
    dataset: Dataset,
    section: Mapping[str, Any],
    method: str,
    num_classes: int,
    video_input: bool = True,
    log_dir: Path | None = None,
) -> tuple[nn.Module, dict[str, float]]:
    """Train ``model`` with cross-entropy on ``dataset`` and return it (unwrapped) with final statistics.

    Resumes from the newest checkpoint in ``DIR/checkpoints`` when one exists (same epoch,
    step, optimizer, schedule, scaler, RNG and log position).

    Args:
        ctx: run context.
        model: the classifier; only parameters with ``requires_grad`` are optimised.
        dataset: items ``(input, label)``; wrapped so each sample's augmentation is seeded by
            ``(seed, epoch, index)``.
        section: recipe config: ``epochs``, ``batch_size`` (global), ``optim``, ``schedule``,
            ``keep_last``, ``save_every``.
        method: recorded in checkpoints (``finetune`` / ``linear``).
        num_classes: classifier size (recorded in checkpoints).
        video_input: inputs are clips (enables ``channels_last``; False for cached features).
        log_dir: where ``metrics.csv``, TensorBoard and ``loss.png`` go (default: the run folder).

    Returns:
        ``(model, {"train_loss": ..., "train_acc1": ..., "epochs": ..., "steps": ...})``.
    """
    cfg = ctx.cfg
    device = ctx.device
    log_dir = log_dir or ctx.out_dir
    ckpt_dir = ctx.out_dir / "checkpoints"
    epochs = int(section["epochs"])
    seed = int(cfg.get("seed", 0))
    channels_last = bool(cfg.get("channels_last", False)) and video_input
    sampler = ResumableBatchSampler(
        len(dataset),
        _per_rank_batch(ctx, int(section["batch_size"]), len(dataset)),
        rank=ctx.dist.rank,
        world_size=ctx.dist.world_size,
        seed=seed,
        shuffle=True,
        drop_last=True,
    )
    workers = int(cfg["data"]["workers"]) if video_input else 0
    loader = DataLoader(
        SeededDataset(dataset, seed),
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    model.to(device)
    if channels_last:
        to_channels_last_3d(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(trainable, section["optim"])
    steps_per_epoch = sampler.batches_per_epoch
    scheduler = build_scheduler(optimizer, section["schedule"], steps_per_epoch, epochs)
    scaler = make_grad_scaler(device, ctx.precision)
    run_log = RunLogger(
        log_dir,
        enabled=ctx.is_main,
        tensorboard=bool(cfg["log"].get("tensorboard", True)),
        print_every=int(cfg["log"].get("print_every", 10)),
    )
    start_epoch, step = 0, 0
    stats = {"train_loss": float("nan"), "train_acc1": float("nan")}
    latest, state = find_latest_valid(ckpt_dir, _check_resumable)
    if latest is not None and state is not None:
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["state"]["optimizer"])
        scheduler.load_state_dict(state["state"]["scheduler"])
        scaler.load_state_dict(state["state"]["scaler"])
        run_log.load_state_dict(state["state"]["logger"], step=int(state["step"]))
        set_rng_state(state["state"]["rng"][min(ctx.dist.rank, len(state["state"]["rng"]) - 1)])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        stats = dict(state["state"].get("stats", stats))
        log.info("resumed from %s (epoch %d, step %d)", latest, start_epoch, step)
    if ctx.dist.distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    progress = Progress(epochs * steps_per_epoch, initial=step, enabled=ctx.is_main, desc=method)
    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = 0
        for inputs, labels in loader:
            inputs = inputs.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            if channels_last:
                inputs = to_channels_last_3d(inputs)
            with autocast(device, ctx.precision):
                logits = model(inputs)
                loss = F.cross_entropy(logits.float(), labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"{method}: loss is {loss.item()} at epoch {epoch} step {step}; lower the learning rate "
                    f"({method}.optim.lr) or use precision=fp32"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            batch_acc = (logits.argmax(1) == labels).float().mean()
            loss_sum += loss.detach() * labels.shape[0]
            correct += batch_acc.detach() * labels.shape[0]
            seen += labels.shape[0]
            scalars = {"loss": loss.item(), "acc1": 100.0 * batch_acc.item(), "lr": optimizer.param_groups[0]["lr"],
                       "epoch": epoch}
            run_log.log(step, scalars)
            progress.update(labels.shape[0] * ctx.dist.world_size, {"loss": scalars["loss"]})
        epoch_loss = all_reduce_mean(loss_sum / max(seen, 1)).item()
        epoch_acc = 100.0 * all_reduce_mean(correct / max(seen, 1)).item()
        stats = {"train_loss": epoch_loss, "train_acc1": epoch_acc}
        log.info("%s epoch %d/%d: loss %.4f, train acc %.1f%%", method, epoch + 1, epochs, epoch_loss, epoch_acc)
        last = epoch + 1 == epochs
        if last or (epoch + 1) % int(section.get("save_every", 1)) == 0:
            rng = all_gather_object(get_rng_state())
            if ctx.is_main:
                state = {
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "logger": run_log.state_dict(),
                    "rng": rng,
                    "stats": stats,
                }
                save_checkpoint(
                    _checkpoint(ctx, model, method, epoch + 1, step, num_classes, state),
                    ckpt_dir,
                    step=step,
                    keep_last=int(section.get("keep_last", 2)),
                )
            barrier()
    progress.close()
    run_log.close()
    if ctx.is_main:
        plot_losses(log_dir / "metrics.csv", log_dir / "loss.png", columns=["loss"], title=f"{method}: {ctx.out_dir.name}")
    if start_epoch >= epochs:
        log.info("%s: nothing left to train (resumed after the last epoch)", method)
    stats.update({"epochs": float(epochs), "steps": float(step)})
    return unwrap(model), stats


def run_finetune(ctx: RunContext) -> dict[str, float]:
    """``python -m train finetune``: train all layers, then the multi-clip test.

    Returns:
        The metrics written to ``results.json`` (``top1``, ``top5``, ``train_loss`` ...).
    """
    cfg = ctx.cfg
    section = cfg["finetune"]
    num_classes = len(dataset_classes(cfg))
    model, weights = build_model(cfg, num_classes, drop_rate=float(section["dropout"]))
    dataset = train_dataset(cfg, model)
    log.info("fine-tuning on %d training videos, %d classes", len(dataset), num_classes)
    model, stats = train_loop(ctx, model, dataset, section, "finetune", num_classes, video_input=True)
    if ctx.is_main:
        save_final(ctx, model, "finetune", int(stats["epochs"]), int(stats["steps"]), num_classes)
    test_set = multiclip_dataset(cfg, model, False, int(cfg["data"]["test_clips"]))
    metrics = multiclip_accuracy(model, test_set, ctx, int(cfg["test"]["batch_size"]), int(cfg["data"]["workers"]))
    metrics.update(stats)
    if ctx.is_main:
        finish_run(ctx, "finetune", weights, metrics, extra={"classifier": str(ctx.out_dir / "final.pt")})
    return metrics
