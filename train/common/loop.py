"""The training-loop core every recipe of ``train/`` runs: pretraining, fine-tuning, linear probing.

:class:`TrainLoop` owns what an optimizer step and an epoch loop have in common, so each recipe
only says how a batch becomes a loss and what it logs:

- one optimizer step from ``accum_steps`` micro-batches: autocast, the loss scaled by the
  gradient scaler and by ``1 / accum_steps``, DDP gradient sync only on the last micro-batch,
  optional gradient clipping, scaler step and update, then the per-step schedule;
- the non-finite-loss stop: a NaN / infinite loss on any rank raises :class:`NonFiniteLossError`
  on every rank before its gradients touch the weights, naming the step, every output, the last
  good checkpoint and what to change;
- the epoch loop with its position ``(step, epoch, step_in_epoch)``, resuming in the middle of an
  epoch, and the checkpoint cadence (:class:`CheckpointCadence`).

The resume bookkeeping shared by every checkpoint: :class:`TrainingParts` (the optimizer,
schedule, scaler, log position and every rank's RNG streams, saved and restored) and
:func:`save_synced` (gather the RNG streams of all ranks, rank 0 writes, everyone waits).

Example:
    >>> loop = TrainLoop(model, optimizer, scheduler, scaler, device, "fp32", failure_hint="Lower optim.lr")
    >>> position = loop.run(loader, sampler, LoopPosition(), epochs, steps_per_epoch, prepare, forward,
    ...                     CheckpointCadence(epochs * steps_per_epoch, every_epochs=1),
    ...                     save=lambda pos: save_synced(folder, build, pos.step, 2, True), samples_per_step=16)
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader

from train.common.checkpoint import checkpoint_path, save_checkpoint
from train.common.distributed import all_gather_object, all_reduce_mean, any_rank_true, barrier
from train.common.precision import autocast
from train.common.run_log import Progress, RunLogger
from train.common.sampling import ResumableBatchSampler
from train.common.seed import get_rng_state, seed_everything, set_rng_state

__all__ = [
    "NonFiniteLossError",
    "LoopPosition",
    "CheckpointCadence",
    "StepResult",
    "TrainLoop",
    "TRAINING_STATE_KEYS",
    "TrainingParts",
    "save_synced",
]

_logger = logging.getLogger(__name__)

#: Sections of a checkpoint's ``state`` that :meth:`TrainingParts.restore` reads.
TRAINING_STATE_KEYS = ("optimizer", "scheduler", "scaler", "logger", "rng")


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; the run stopped and the last good checkpoint is kept."""


@dataclass
class LoopPosition:
    """Where a run stands: optimizer steps done, the current epoch and the steps done in it."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0


@dataclass(frozen=True)
class CheckpointCadence:
    """When the loop writes a checkpoint and when it stops early.

    A checkpoint is due every ``every_steps`` optimizer steps, after every ``every_epochs``-th
    epoch, at the last step and at ``stop_after_steps`` (0 / None switch a rule off).
    """

    total_steps: int
    every_steps: int = 0
    every_epochs: int = 0
    stop_after_steps: int | None = None

    def stops_at(self, step: int) -> bool:
        """True when ``train.stop_after_steps`` ends the run after ``step``."""
        return self.stop_after_steps is not None and step >= self.stop_after_steps

    def finished(self, step: int) -> bool:
        """True when nothing is left to train after ``step`` steps."""
        return step >= self.total_steps or self.stops_at(step)

    def due(self, step: int, epochs_done: int, epoch_end: bool) -> bool:
        """Whether the state after ``step`` (``epochs_done`` epochs complete) is written."""
        return bool(
            (self.every_steps and step % self.every_steps == 0)
            or (epoch_end and self.every_epochs and epochs_done % self.every_epochs == 0)
            or step == self.total_steps
            or self.stops_at(step)
        )


@dataclass
class StepResult:
    """What one optimizer step produced.

    Attributes:
        position: the run's position after the step.
        outputs: the forward's outputs, detached, float32, averaged over the micro-batches (this rank).
        scalars: the same averaged over ranks, as Python numbers.
        lr: learning rate of the first parameter group used by this step.
        seconds: wall time of the step.
        data_wait: seconds of it spent waiting for (and moving) data.
        avg_rate: samples per second since the loop started.
    """

    position: LoopPosition
    outputs: dict[str, torch.Tensor]
    scalars: dict[str, float]
    lr: float
    seconds: float
    data_wait: float
    avg_rate: float


@dataclass
class TrainLoop:
    """Optimizer steps with AMP, accumulation and the non-finite stop, and the resumable epoch loop.

    Attributes:
        model: the module the forward runs (DDP-wrapped or not).
        optimizer: its optimizer.
        scheduler: per-step learning-rate schedule (stepped after every optimizer step).
        scaler: gradient scaler (:func:`train.common.precision.make_grad_scaler`).
        device: compute device.
        precision: resolved precision (``fp32``, ``bf16``, ``fp16``).
        failure_hint: what the non-finite-loss message tells the user to change, e.g.
            ``"Lower optim.lr or use precision=fp32"``.
        accum_steps: micro-batches per optimizer step.
        grad_clip: clip the gradient norm to this value (0 / None: no clipping).
        inject_nan_at_step: test hook: make the loss of this (1-based) step NaN.
        last_checkpoint: the newest checkpoint written (or resumed from); a non-finite stop names it.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    device: torch.device
    precision: str
    failure_hint: str
    accum_steps: int = 1
    grad_clip: float | None = None
    inject_nan_at_step: int | None = None
    last_checkpoint: Path | None = None

    def _sync_context(self, micro_index: int) -> Any:
        """DDP syncs gradients only on the last micro-batch of a step."""
        if isinstance(self.model, nn.parallel.DistributedDataParallel) and micro_index < int(self.accum_steps) - 1:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def _check_finite(self, loss: torch.Tensor, outputs: Mapping[str, torch.Tensor], position: LoopPosition) -> None:
        if any_rank_true(not bool(torch.isfinite(loss).item()), self.device):
            raise NonFiniteLossError(
                f"non-finite loss at step {position.step + 1} (epoch {position.epoch}): "
                + ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in outputs.items())
                + f". The run stopped; the last good checkpoint is {self.last_checkpoint or 'none (no checkpoint yet)'}. "
                + f"{self.failure_hint}, then rerun the same command to resume from that checkpoint."
            )

    def step(
        self,
        batches: Iterator[Any],
        prepare: Callable[[Any], Any],
        forward: Callable[[nn.Module, Any], Mapping[str, torch.Tensor]],
        position: LoopPosition,
    ) -> tuple[dict[str, torch.Tensor], float, float]:
        """Run one optimizer step on the next ``accum_steps`` batches of ``batches``.

        Args:
            batches: the epoch's batch iterator.
            prepare: moves a batch to the device (timed as data wait).
            forward: ``(model, batch) -> outputs`` with a scalar ``"loss"``; runs under autocast.
            position: the position before the step (for the failure message).

        Returns:
            ``(outputs averaged over the micro-batches, lr used, data-wait seconds)``.

        Raises:
            NonFiniteLossError: the loss is NaN or infinite on any rank.
        """
        accum = int(self.accum_steps)
        data_wait = 0.0
        sums: dict[str, torch.Tensor] = {}
        for micro_index in range(accum):
            t0 = time.perf_counter()
            batch = prepare(next(batches))
            data_wait += time.perf_counter() - t0
            with self._sync_context(micro_index):
                with autocast(self.device, self.precision):
                    outputs = forward(self.model, batch)
                loss = outputs["loss"].float()
                if self.inject_nan_at_step is not None and position.step + 1 == int(self.inject_nan_at_step):
                    loss = loss * float("nan")
                self._check_finite(loss, outputs, position)
                self.scaler.scale(loss / accum).backward()
            for k, v in outputs.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float() / accum
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), float(self.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        return sums, lr, data_wait

    def run(
        self,
        loader: DataLoader,
        sampler: ResumableBatchSampler,
        position: LoopPosition,
        epochs: int,
        steps_per_epoch: int,
        prepare: Callable[[Any], Any],
        forward: Callable[[nn.Module, Any], Mapping[str, torch.Tensor]],
        cadence: CheckpointCadence,
        save: Callable[[LoopPosition], Path],
        samples_per_step: int,
        progress: bool = True,
        desc: str = "train",
        on_step: Callable[[StepResult], None] | None = None,
        on_epoch_end: Callable[[int], None] | None = None,
        before_step: Callable[[], None] | None = None,
    ) -> LoopPosition:
        """Train from ``position`` to the end (or to ``cadence.stop_after_steps``); returns the final position.

        Every epoch iterates ``sampler`` from the position's batch on, so a run resumed in the
        middle of an epoch sees the batches an uninterrupted run would have seen.

        Args:
            loader: DataLoader over ``sampler``.
            sampler: the resumable batch sampler (``set_epoch(epoch, start_batch)``).
            position: where to start (the resumed position, or zeros).
            epochs: epochs of the run.
            steps_per_epoch: optimizer steps per epoch.
            prepare: moves a batch to the device.
            forward: ``(model, batch) -> outputs`` with a scalar ``"loss"``.
            cadence: when checkpoints are written and when the run stops early.
            save: writes the checkpoint of a position and returns its path.
            samples_per_step: clips (or samples) of one optimizer step over all ranks (for the rate).
            progress: show a progress bar (rank 0 only).
            desc: the progress bar's label.
            on_step: called after every step (logging).
            on_epoch_end: called with the epoch just finished, before its checkpoint is written.
            before_step: called before every step (e.g. the momentum update of a key encoder).
        """
        position = replace(position)
        bar = Progress(cadence.total_steps, initial=position.step, enabled=progress, desc=desc)
        try:
            done = cadence.finished(position.step)
            while not done and position.epoch < epochs:
                sampler.set_epoch(position.epoch, start_batch=position.step_in_epoch * self.accum_steps)
                batches: Iterator[Any] = iter(loader)
                while position.step_in_epoch < steps_per_epoch:
                    t_step = time.perf_counter()
                    if before_step is not None:
                        before_step()
                    outputs, lr, data_wait = self.step(batches, prepare, forward, position)
                    position.step += 1
                    position.step_in_epoch += 1
                    names = sorted(outputs)
                    means = all_reduce_mean(torch.stack([outputs[k] for k in names])).tolist()
                    seconds = time.perf_counter() - t_step
                    scalars = dict(zip(names, means))
                    rate = bar.update(samples_per_step, {"loss": scalars["loss"]})
                    if on_step is not None:
                        on_step(StepResult(replace(position), outputs, scalars, lr, seconds, data_wait, rate))
                    epoch_end = position.step_in_epoch == steps_per_epoch
                    stop_now = cadence.stops_at(position.step)
                    if epoch_end:
                        if on_epoch_end is not None:
                            on_epoch_end(position.epoch)
                        position.epoch, position.step_in_epoch = position.epoch + 1, 0
                    if cadence.due(position.step, position.epoch, epoch_end):
                        self.last_checkpoint = save(replace(position))
                    if stop_now:
                        _logger.info("stopping after step %d (train.stop_after_steps); rerun to resume", position.step)
                        done = True
                        break
                    if epoch_end:
                        break
                del batches
        finally:
            bar.close()
        return position


@dataclass
class TrainingParts:
    """The live objects every recipe's checkpoint holds, and their resume bookkeeping.

    Attributes:
        model: the trained module, not DDP-wrapped (its weights are saved by the recipe).
        optimizer: its optimizer.
        scheduler: the per-step learning-rate schedule.
        scaler: the gradient scaler.
        run_logger: the CSV / TensorBoard logger (its row position is resumed).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    run_logger: RunLogger

    def training_state(self, rng_states: list[dict[str, Any]]) -> dict[str, Any]:
        """The sections of a checkpoint's ``state`` every recipe resumes from (:data:`TRAINING_STATE_KEYS`)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "logger": self.run_logger.state_dict(),
            "rng": rng_states,
        }

    def restore(self, checkpoint: Mapping[str, Any], rank: int, world_size: int) -> None:
        """Load :meth:`training_state`'s sections of ``checkpoint`` into the live objects.

        Each rank takes its own RNG streams back; a checkpoint written by another number of
        processes reseeds them instead (with a warning: the continuation is valid, not bit-identical).
        """
        inner = checkpoint["state"]
        self.optimizer.load_state_dict(inner["optimizer"])
        self.scheduler.load_state_dict(inner["scheduler"])
        self.scaler.load_state_dict(inner["scaler"])
        rngs = inner["rng"]
        if len(rngs) == world_size:
            set_rng_state(rngs[rank])
        else:
            _logger.warning(
                "checkpoint was written by %d processes, this run has %d: RNG streams are reseeded, so the "
                "continuation is valid but not bit-identical to an uninterrupted run",
                len(rngs),
                world_size,
            )
            seed_everything(int(checkpoint["config"].get("seed", 0)) + 1000 * rank + int(checkpoint["step"]))
        self.run_logger.load_state_dict(inner["logger"], step=int(checkpoint["step"]))


def save_synced(
    folder: Path, build: Callable[[list[dict[str, Any]]], dict[str, Any]], step: int, keep_last: int, is_main: bool
) -> Path:
    """Write the checkpoint of ``step`` from rank 0 with every rank's RNG streams; all ranks wait for it.

    Args:
        folder: checkpoint folder (``checkpoint_{step:08d}.pt``, the newest ``keep_last`` kept).
        build: makes the checkpoint dict from the gathered RNG states (called on rank 0 only).
        step: optimizer step (names the file).
        keep_last: checkpoints kept.
        is_main: whether this process writes.

    Returns:
        The checkpoint's path (on every rank).
    """
    rng_states = all_gather_object(get_rng_state())
    path = checkpoint_path(folder, step)
    if is_main:
        path = save_checkpoint(build(rng_states), folder, step, keep_last=keep_last)
        _logger.info("saved %s", path)
    barrier()
    return path
