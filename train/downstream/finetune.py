"""Supervised training loop of the downstream recipes, and the fine-tuning recipe.

Fine-tune protocol (docs/recipes.md, "finetune"): all layers, 150 epochs, SGD lr 0.01, momentum
0.9, weight decay 1e-4, learning rate x0.1 at epochs 60 and 120, batch 16, dropout 0.7
(UCF101) / 0.5 (HMDB51), the pretraining augmentation without blur; then the
10-clip test.

:func:`train_loop` is shared with the linear probe: it trains any classifier on a
data set of ``(input, label)`` pairs with the training-loop core of pretraining
(:class:`train.common.loop.TrainLoop`: autocast and gradient scaler, the non-finite-loss
stop, checkpoint cadence and exact resume), per-step schedules (:mod:`train.common.optim`),
torchrun DDP and a rank-aware resumable sampler, atomic keep-last-K checkpoints,
CSV / TensorBoard / tqdm logging and a loss plot.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fima_models._utils import to_channels_last_3d
from train.common.checkpoint import atomic_torch_save, check_train_checkpoint, find_latest_valid, train_checkpoint
from train.common.distributed import all_reduce_mean, wrap_ddp
from train.common.loop import (
    TRAINING_STATE_KEYS, CheckpointCadence, LoopPosition, StepResult, TrainingParts, TrainLoop, save_synced,
)
from train.common.optim import build_optimizer, build_scheduler
from train.common.precision import make_grad_scaler
from train.common.run_log import RunLogger, plot_losses
from train.common.sampling import ResumableBatchSampler
from train.common.seed import SeededDataset

from .build import RunContext, build_model, dataset_classes, multiclip_dataset, train_dataset, unwrap
from .evaluate import finish_run, multiclip_accuracy

__all__ = ["train_loop", "save_final", "test_and_finish", "run_finetune"]

_logger = logging.getLogger(__name__)


def _check_resumable(path: Path, state: dict[str, Any]) -> None:
    check_train_checkpoint(path, state, TRAINING_STATE_KEYS)


def _checkpoint(
    ctx: RunContext, model: nn.Module, method: str, epoch: int, step: int, num_classes: int, state: dict[str, Any]
) -> dict[str, Any]:
    return train_checkpoint(str(ctx.cfg["model"]), method, epoch, step, unwrap(model).state_dict(), num_classes, ctx.cfg, state)


def save_final(ctx: RunContext, model: nn.Module, method: str, epoch: int, step: int, num_classes: int) -> Path:
    """Write the finished classifier as ``DIR/final.pt`` (loadable by ``python -m train test --checkpoint``)."""
    return atomic_torch_save(_checkpoint(ctx, model, method, epoch, step, num_classes, {}), ctx.out_dir / "final.pt")


def _per_rank_batch(ctx: RunContext, global_batch: int, num_samples: int) -> int:
    world = ctx.dist.world_size
    per_rank = max(1, int(global_batch) // world)
    if per_rank * world > num_samples:
        fitted = max(1, num_samples // world)
        _logger.warning(
            "batch %d does not fit %d training samples on %d process(es); using %d per process",
            global_batch, num_samples, world, fitted,
        )
        per_rank = fitted
    return per_rank


class _EpochStats:
    """Sample-weighted training loss and accuracy of the current epoch, on the device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros((), device=self.device)
        self.correct = torch.zeros((), device=self.device)
        self.seen = 0

    def add(self, outputs: Mapping[str, torch.Tensor], batch_size: int) -> None:
        self.loss_sum += outputs["loss"] * batch_size
        self.correct += outputs["acc1"] * batch_size
        self.seen += batch_size

    def means(self) -> dict[str, float]:
        """``train_loss`` and ``train_acc1`` (percent) over all ranks."""
        return {
            "train_loss": all_reduce_mean(self.loss_sum / max(self.seen, 1)).item(),
            "train_acc1": 100.0 * all_reduce_mean(self.correct / max(self.seen, 1)).item(),
        }


def _classify(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    inputs, labels = batch
    logits = model(inputs)
    return {"loss": F.cross_entropy(logits.float(), labels), "acc1": (logits.argmax(1) == labels).float().mean()}


class _WholeBatches(Dataset):
    """A data set with ``take(indices)`` served a batch at a time: item = the sampler's ``(epoch, index)`` keys."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, keys: list[tuple[int, int]]) -> Any:
        return self.dataset.take(torch.tensor([index for _, index in keys], dtype=torch.long))


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
        video_input: inputs are clips (enables ``channels_last``); False for cached features, whose
            data set serves whole batches with ``take(indices) -> (features, labels)``.
        log_dir: where ``metrics.csv``, TensorBoard and ``loss.png`` go (default: the run folder).

    Returns:
        ``(model, {"train_loss": ..., "train_acc1": ..., "epochs": ..., "steps": ...})``.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite (the last good checkpoint is kept).
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
    if video_input:
        workers = int(cfg["data"]["workers"])
        loader = DataLoader(
            SeededDataset(dataset, seed),
            batch_sampler=sampler,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
        )
    else:
        # cached features need no augmentation (no per-sample seed): one indexing per batch instead of
        # one item per sample, which dominated the linear probe (same batches, same values)
        loader = DataLoader(_WholeBatches(dataset), sampler=sampler, batch_size=None)
    model.to(device)
    if channels_last:
        to_channels_last_3d(model)
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], section["optim"])
    steps_per_epoch = sampler.batches_per_epoch
    parts = TrainingParts(
        model,
        optimizer,
        build_scheduler(optimizer, section["schedule"], steps_per_epoch, epochs),
        make_grad_scaler(device, ctx.precision),
        RunLogger(
            log_dir,
            enabled=ctx.is_main,
            tensorboard=bool(cfg["log"].get("tensorboard", True)),
            print_every=int(cfg["log"].get("print_every", 10)),
        ),
    )
    position = LoopPosition()
    stats = {"train_loss": float("nan"), "train_acc1": float("nan")}
    latest, state = find_latest_valid(ckpt_dir, _check_resumable)
    if latest is not None and state is not None:
        unwrap(model).load_state_dict(state["model"])
        parts.restore(state, ctx.dist.rank, ctx.dist.world_size)
        position = LoopPosition(step=int(state["step"]), epoch=int(state["epoch"]))
        stats = dict(state["state"].get("stats", stats))
        _logger.info("resumed from %s (epoch %d, step %d)", latest, position.epoch, position.step)
    loop = TrainLoop(
        wrap_ddp(model, ctx.dist), optimizer, parts.scheduler, parts.scaler, device, ctx.precision,
        failure_hint=f"Lower the learning rate ({method}.optim.lr) or use precision=fp32",
    )
    loop.last_checkpoint = latest
    epoch_stats = _EpochStats(device)

    def prepare(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, labels = batch
        inputs = inputs.to(device, non_blocking=True)
        return (to_channels_last_3d(inputs) if channels_last else inputs), labels.to(device, non_blocking=True)

    def log_step(result: StepResult) -> None:
        epoch_stats.add(result.outputs, sampler.batch_size)
        # the learning rate of the next step, as this log has always shown
        parts.run_logger.log(result.position.step, {"loss": result.scalars["loss"], "acc1": 100.0 * result.scalars["acc1"],
                                                    "lr": optimizer.param_groups[0]["lr"], "epoch": result.position.epoch})

    def end_epoch(epoch: int) -> None:
        stats.update(epoch_stats.means())
        epoch_stats.reset()
        _logger.info("%s epoch %d/%d: loss %.4f, train acc %.1f%%", method, epoch + 1, epochs, stats["train_loss"],
                     stats["train_acc1"])

    def save(pos: LoopPosition) -> Path:
        return save_synced(
            ckpt_dir, lambda rngs: _checkpoint(ctx, model, method, pos.epoch, pos.step, num_classes,
                                               {**parts.training_state(rngs), "stats": dict(stats)}),
            pos.step, int(section.get("keep_last", 2)), ctx.is_main,
        )

    cadence = CheckpointCadence(epochs * steps_per_epoch, every_epochs=int(section.get("save_every", 1)))
    resumed_finished = position.epoch >= epochs
    model.train()
    try:
        position = loop.run(
            loader, sampler, position, epochs, steps_per_epoch, prepare, _classify,
            cadence, save, samples_per_step=sampler.batch_size * ctx.dist.world_size, progress=ctx.is_main, desc=method,
            on_step=log_step, on_epoch_end=end_epoch,
        )
    finally:
        parts.run_logger.close()
    if ctx.is_main:
        plot_losses(log_dir / "metrics.csv", log_dir / "loss.png", columns=["loss"], title=f"{method}: {ctx.out_dir.name}")
    if resumed_finished:
        _logger.info("%s: nothing left to train (resumed after the last epoch)", method)
    stats.update({"epochs": float(epochs), "steps": float(position.step)})
    return unwrap(model), stats


def test_and_finish(
    ctx: RunContext, model: nn.Module, method: str, weights: dict[str, Any], stats: Mapping[str, float], num_classes: int
) -> dict[str, float]:
    """Save a trained classifier as ``final.pt``, run the multi-clip test and write the results.

    Returns:
        The metrics written to ``results.json`` (the test's and the training ``stats``).
    """
    cfg = ctx.cfg
    if ctx.is_main:
        save_final(ctx, model, method, int(stats["epochs"]), int(stats["steps"]), num_classes)
    test_set = multiclip_dataset(cfg, model, False, int(cfg["data"]["test_clips"]))
    metrics = multiclip_accuracy(model, test_set, ctx, int(cfg["test"]["batch_size"]), int(cfg["data"]["workers"]))
    metrics.update(stats)
    if ctx.is_main:
        finish_run(ctx, method, weights, metrics, extra={"classifier": str(ctx.out_dir / "final.pt")})
    return metrics


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
    _logger.info("fine-tuning on %d training videos, %d classes", len(dataset), num_classes)
    model, stats = train_loop(ctx, model, dataset, section, "finetune", num_classes, video_input=True)
    return test_and_finish(ctx, model, "finetune", weights, stats, num_classes)
