"""``python -m train pretrain``: FIMA (or MoCo baseline) pretraining, single process or DDP, resumable.

Usage::

    python -m train pretrain --config train/configs/smoke_fima.yaml --out runs/smoke_fima
    python -m train pretrain --config train/configs/pretrain/fima_r2plus1d_ucf101.yaml --out runs/r21d \\
        data.root=/data/ucf101 train.batch_size=48
    torchrun --nproc_per_node 4 -m train pretrain --config ... --out ...

Running the same command again on the same ``--out`` resumes from its newest checkpoint
(``--resume none`` starts over, ``--resume PATH`` resumes from a given file). A resumed run
continues with exactly the losses an uninterrupted run would have produced: data order is a
function of ``(seed, epoch)``, augmentation of ``(seed, epoch, index)``, and every other piece of
state (model, key encoder, queues, optimizer, scheduler, scaler, RNG streams of every rank,
position within the epoch, logger rows) is in the checkpoint.

``--init-from-authors checkpoint_XXXX.pth.tar`` continues a run that was started with the FIMA
authors' code: their MoCo module's weights, key encoder and queues are converted
(:func:`train.fima.load_authors_checkpoint`) and loaded strictly, and training goes on at the
checkpoint's epoch with the learning-rate schedule at that point. Their optimizer's momentum
buffers are not carried over (their parameter order differs), so the first steps are not
bit-identical to their continuation. When ``--out`` already holds a checkpoint of this run, that
one is resumed instead.

Outputs in ``--out``: ``config.yaml`` (resolved config), ``metrics.csv`` (one row per optimizer
step: every loss term, lr, clips/s, data-wait fraction), ``tensorboard/``, ``loss_curve.png``,
``checkpoint_{step:08d}.pt`` (last K kept). Checkpoints are dicts
``{"format": "fima-models-train", "version": 1, "model_name", "method", "epoch", "step",
"model", "num_classes": 0, "config", "state"}``; ``model`` is the query backbone's state dict and
converts with ``fima-models convert``.

Programmatic use: :func:`run_pretrain` (config dict, output folder) -> final checkpoint path.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch.utils.data import DataLoader

import fima_models
from fima_models.data import build_dataset
from fima_models._utils import describe_os_error, to_channels_last_3d
from fima_models.checkpoint import CheckpointError
from train.common.checkpoint import resume_checkpoint, train_checkpoint
from train.common.config import ConfigError, get, load_yaml, resolve, save_config
from train.common.distributed import DistInfo, barrier, cleanup_distributed, init_distributed, wrap_ddp
from train.common.loop import (
    TRAINING_STATE_KEYS,
    CheckpointCadence,
    LoopPosition,
    NonFiniteLossError,
    StepResult,
    TrainingParts,
    TrainLoop,
    save_synced,
)
from train.common.optim import build_optimizer, build_scheduler
from train.common.precision import make_grad_scaler, resolve_precision
from train.common.run_log import RunLogger, plot_losses, setup_console_logging
from train.common.sampling import ResumableBatchSampler
from train.common.schema import PretrainConfig, check_pretrain
from train.common.seed import SeededDataset, seed_everything
from train.fima import AuthorsCheckpointError, read_authors_run, start_from_authors
from train.fima.model import FimaPretrainer
from train.fima.views import FimaClipPairSampler, FimaViewTransform

__all__ = ["main", "run_pretrain", "build_parser", "register", "NonFiniteLossError", "DEFAULTS"]

_logger = logging.getLogger(__name__)

#: Every key a pretraining config may set, with its default (configs override a subset); the
#: schema, types and ranges are :class:`train.common.schema.PretrainConfig`.
DEFAULTS: dict[str, Any] = resolve(PretrainConfig, [])
#: Sections of a checkpoint's ``state`` that resuming reads.
RESUME_STATE = TRAINING_STATE_KEYS + ("pretrainer", "position")
#: What the message of a non-finite loss tells the user to change.
_FAILURE_HINT = "Lower optim.lr, add warm-up (schedule.warmup_epochs) or use precision=fp32"
_DESCRIPTION = "FIMA / MoCo video pretraining (single process or torchrun DDP), resumable."


# --------------------------------------------------------------------------- CLI
def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config (see train/configs/)")
    parser.add_argument("--out", required=True, help="run folder: checkpoints, metrics.csv, tensorboard, plots")
    parser.add_argument("--resume", default="auto", help="auto (default): resume from the newest checkpoint in "
                        "--out if any; none: start over; or a checkpoint path")
    parser.add_argument("--init-from-authors", metavar="CKPT", help="continue a run started with the FIMA authors' "
                        "code: their checkpoint_XXXX.pth.tar (weights, key encoder, queues; training goes on at its epoch)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=0.01 train.epochs=10")
    parser.set_defaults(func=run_command)


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``python -m train pretrain``."""
    parser = argparse.ArgumentParser(prog="python -m train pretrain", description=_DESCRIPTION)
    _add_arguments(parser)
    return parser


def register(subparsers: Any) -> None:
    """Add the ``pretrain`` command to ``python -m train``'s sub-command parsers."""
    _add_arguments(subparsers.add_parser("pretrain", help=_DESCRIPTION, description=_DESCRIPTION))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m train pretrain``; returns the process exit status.

    Args:
        argv: arguments after the command name.

    Returns:
        0 on success, 2 for configuration errors, 3 when the loss became non-finite.
    """
    return run_command(build_parser().parse_args(list(argv) if argv is not None else None))


def run_command(args: argparse.Namespace) -> int:
    """Run ``python -m train pretrain`` with parsed arguments; returns the exit status (see :func:`main`)."""
    setup_console_logging(rank=int(os.environ.get("RANK", "0")))  # ranks > 0 only print warnings
    try:
        # the schema's defaults first, so every key can be overridden even when the YAML omits it
        cfg = resolve_config(load_yaml(args.config), args.overrides)
        final = run_pretrain(cfg, Path(args.out), resume=args.resume, init_from_authors=args.init_from_authors)
    except (ConfigError, AuthorsCheckpointError) as exc:
        _logger.error("configuration error: %s", exc)
        return 2
    except (FileNotFoundError, CheckpointError) as exc:  # data set layout, unusable checkpoint
        _logger.error("%s", exc)
        return 2
    except OSError as exc:  # read-only or full disk, a path that is not a folder
        _logger.error("%s", describe_os_error(exc))
        return 1
    except NonFiniteLossError as exc:
        _logger.error("%s", exc)
        return 3
    _logger.info("final checkpoint: %s", final)
    return 0


# --------------------------------------------------------------------------- pieces
def resolve_config(config: Mapping[str, Any], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Merge a user config (and ``key=value`` overrides) over the schema's defaults and validate it.

    Args:
        config: configuration dict (any subset of :data:`DEFAULTS`).
        overrides: dotted ``key=value`` strings, applied last.

    Returns:
        The complete configuration as a plain dict.

    Raises:
        ConfigError: for unknown keys, wrong types, values out of range or inconsistent values,
            naming the key and the accepted values.
    """
    return resolve(PretrainConfig, [config], overrides, check_pretrain)


def check_environment(cfg: Mapping[str, Any], out_dir: Path) -> None:
    """Refuse what the configuration cannot run with, before anything is written.

    Raises:
        ConfigError: ``out_dir`` is a file, or ``data.root`` does not exist (and no synthetic data is asked for).
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} exists and is not a folder; choose a run folder")
    root = Path(str(cfg["data"]["root"])).expanduser()
    if not cfg["data"].get("synthetic") and not root.exists():
        raise ConfigError(
            f"data.root {root} does not exist; set data.root=/path/to/{cfg['data']['dataset']} (UCF101 layout)")


def micro_batch_size(cfg: Mapping[str, Any], world_size: int) -> int:
    """Per-rank, per-micro-step batch: ``train.batch_size / (world_size * train.accum_steps)``.

    Raises:
        ConfigError: if the global batch does not divide evenly.
    """
    batch = int(get(cfg, "train.batch_size"))
    accum = int(get(cfg, "train.accum_steps"))
    if batch % (world_size * accum):
        raise ConfigError(
            f"train.batch_size {batch} is not divisible by world_size {world_size} x accum_steps {accum}; "
            "pick a batch size that is a multiple of their product"
        )
    return batch // (world_size * accum)


def build_data(cfg: Mapping[str, Any], dist_info: DistInfo) -> SeededDataset:
    """Build the pretraining dataset (generating the synthetic motion data first when configured).

    Args:
        cfg: resolved config.
        dist_info: this process's rank information (rank 0 generates synthetic data).

    Returns:
        The dataset wrapped in :class:`~train.common.seed.SeededDataset`.
    """
    data = cfg["data"]
    root = Path(str(data["root"])).expanduser()
    if data.get("synthetic"):
        if dist_info.is_main:
            from fima_models.data.synthetic import write_motion_dataset

            _logger.info("preparing synthetic motion data in %s", root)
            write_motion_dataset(root, **dict(data["synthetic"]))
        barrier()
    transform = FimaViewTransform(size=int(data["size"]), clip_len=int(data["clip_len"]), **dict(data.get("transform") or {}))

    def build() -> Any:
        return build_dataset(
            str(data["dataset"]),
            root,
            split=int(data["split"]),
            train=True,
            sampler=FimaClipPairSampler(int(data["clip_len"])),
            transform=transform,
            progress=dist_info.is_main,
        )

    # rank 0 probes the videos and writes the persisted index first; the others then read it
    dataset = build() if dist_info.is_main else None
    barrier()
    if dataset is None:
        dataset = build()
    return SeededDataset(dataset, int(cfg["seed"]))


def build_model(cfg: Mapping[str, Any], device: torch.device) -> FimaPretrainer:
    """Create the backbone with ``fima_models.create_model(arch, num_classes=0)`` and wrap it for pretraining.

    This is where the model gets its initial weights, before the optimiser is built and before a
    checkpoint (when resuming) overwrites them.
    """
    arch = str(get(cfg, "model.arch"))
    encoder = fima_models.create_model(arch, num_classes=0, **dict(get(cfg, "model.kwargs", {}) or {}))
    model = FimaPretrainer(encoder, cfg["method"], cfg.get("fima") or {}, channels_last=bool(cfg["channels_last"]))
    model.to(device)
    if cfg["channels_last"]:
        to_channels_last_3d(model)
    return model


def _to_device(batch: tuple[Mapping[str, torch.Tensor], Any], device: torch.device) -> dict[str, torch.Tensor]:
    """The views of a ``(views, labels)`` batch on ``device`` (pretraining does not use the labels)."""
    views, _labels = batch
    return {k: v.to(device, non_blocking=True) for k, v in views.items()}


def _checkpoint_state(
    cfg: Mapping[str, Any], parts: TrainingParts, position: LoopPosition, steps_per_epoch: int, rng_states: list[dict[str, Any]]
) -> dict[str, Any]:
    rest = {k: v for k, v in parts.model.state_dict().items() if not k.startswith("encoder_q.")}
    state = {
        "pretrainer": rest,
        **parts.training_state(rng_states),
        "position": {"epoch": position.epoch, "step_in_epoch": position.step_in_epoch, "steps_per_epoch": steps_per_epoch},
        "world_size": len(rng_states),
    }
    return train_checkpoint(
        str(get(cfg, "model.arch")), cfg["method"], position.step // steps_per_epoch, position.step,
        parts.model.backbone_state_dict(), 0, dict(cfg), state,
    )


def _restore(state: Mapping[str, Any], parts: TrainingParts, dist_info: DistInfo) -> LoopPosition:
    """Load a checkpoint into the live objects; returns the position it was written at."""
    full = {f"encoder_q.{k}": v for k, v in state["model"].items()}
    full.update(state["state"]["pretrainer"])
    parts.model.load_state_dict(full, strict=True)
    parts.restore(state, dist_info.rank, dist_info.world_size)
    pos = state["state"]["position"]
    return LoopPosition(int(state["step"]), int(pos["epoch"]), int(pos["step_in_epoch"]))


# --------------------------------------------------------------------------- run
def run_pretrain(
    config: Mapping[str, Any], out_dir: str | Path, resume: str = "auto", init_from_authors: str | Path | None = None
) -> Path:
    """Pretrain with FIMA or MoCo and return the final checkpoint path.

    Works in one process or under torchrun (the process group is created from the environment
    when ``WORLD_SIZE`` > 1 and torn down at the end if this call created it).

    Args:
        config: configuration dict (keys of :data:`DEFAULTS`; missing ones take defaults).
        out_dir: run folder.
        resume: ``"auto"``, ``"none"`` or a checkpoint path.
        init_from_authors: a ``checkpoint_XXXX.pth.tar`` of the FIMA authors' ``train.py`` to
            continue from when there is nothing to resume (see the module docstring).

    Returns:
        Path of the last checkpoint written (the final one, or the one at ``train.stop_after_steps``).

    Raises:
        ConfigError: invalid configuration, or an authors' checkpoint that does not fit it.
        AuthorsCheckpointError: ``init_from_authors`` is not a checkpoint of the authors' code.
        NonFiniteLossError: a loss became NaN/inf (the last good checkpoint stays in ``out_dir``).
    """
    cfg = resolve_config(config)
    out_dir = Path(out_dir)
    check_environment(cfg, out_dir)
    created_group = not torch.distributed.is_initialized()
    dist_info = init_distributed(str(cfg["device"]))
    try:
        return _run(cfg, out_dir, resume, dist_info, init_from_authors)
    finally:
        if created_group:
            cleanup_distributed()


def _starting_point(
    cfg: Mapping[str, Any], out_dir: Path, resume: str, init_from_authors: str | Path | None
) -> tuple[Path | None, dict[str, Any] | None, tuple[dict[str, torch.Tensor], int] | None]:
    """``(checkpoint path, checkpoint, authors' state)`` the run starts from; a checkpoint of this run wins."""
    resume_path, resume_state = resume_checkpoint(resume, out_dir, RESUME_STATE)
    if init_from_authors is None:
        return resume_path, resume_state, None
    if resume_path is not None:
        _logger.info("%s holds checkpoint %s: resuming it, --init-from-authors is not used", out_dir, resume_path)
        return resume_path, resume_state, None
    return None, None, read_authors_run(Path(init_from_authors), cfg)


def _build_loader(
    cfg: Mapping[str, Any], dataset: SeededDataset, dist_info: DistInfo, micro: int
) -> tuple[ResumableBatchSampler, DataLoader, int]:
    """The resumable sampler, the loader over it and the optimizer steps per epoch.

    Raises:
        ConfigError: an epoch has fewer micro-batches than one optimizer step needs.
    """
    seed, accum = int(cfg["seed"]), int(get(cfg, "train.accum_steps"))
    sampler = ResumableBatchSampler(
        len(dataset), micro, dist_info.rank, dist_info.world_size, seed=seed, shuffle=True, drop_last=True
    )
    steps_per_epoch = sampler.batches_per_epoch // accum
    if steps_per_epoch < 1:
        raise ConfigError(
            f"{len(dataset)} samples give {sampler.batches_per_epoch} micro-batches per rank, fewer than "
            f"accum_steps={accum}; lower train.batch_size or train.accum_steps"
        )
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=int(get(cfg, "data.num_workers")),
                        pin_memory=dist_info.device.type == "cuda", persistent_workers=False,
                        generator=torch.Generator().manual_seed(seed))
    return sampler, loader, steps_per_epoch


def _start_position(
    cfg: Mapping[str, Any],
    parts: TrainingParts,
    start: tuple[Path | None, dict[str, Any] | None, tuple[dict[str, torch.Tensor], int] | None],
    init_from_authors: str | Path | None,
    steps_per_epoch: int,
    dist_info: DistInfo,
) -> LoopPosition:
    """Load the checkpoint (or the authors' state) the run starts from; returns the position to go on at.

    Raises:
        ConfigError: the checkpoint was written with another number of steps per epoch.
    """
    resume_path, resume_state, authors = start
    if resume_path is not None and resume_state is not None:
        position = _restore(resume_state, parts, dist_info)
        written = resume_state["state"]["position"]["steps_per_epoch"]
        if written != steps_per_epoch:
            raise ConfigError(f"checkpoint {resume_path} was written with {written} steps per epoch, this run has "
                              f"{steps_per_epoch}; resume with the same data, batch size and world size")
        _logger.info("resumed from %s at step %d (epoch %d, step %d of the epoch)",
                     resume_path, position.step, position.epoch, position.step_in_epoch)
        return position
    if authors is not None:
        epoch = start_from_authors(
            parts.model, parts.scheduler, authors, Path(str(init_from_authors)), str(get(cfg, "model.arch")), steps_per_epoch
        )
        _logger.info("continuing the authors' run %s at epoch %d (step %d)", init_from_authors, epoch, epoch * steps_per_epoch)
        return LoopPosition(step=epoch * steps_per_epoch, epoch=epoch)
    return LoopPosition()


def _run(
    cfg: dict[str, Any], out_dir: Path, resume: str, dist_info: DistInfo, init_from_authors: str | Path | None
) -> Path:
    device = dist_info.device
    precision = resolve_precision(str(cfg["precision"]), device)
    tcfg = cfg["train"]
    seed = int(cfg["seed"])
    if cfg.get("threads"):
        # intra-op threads of this process; on small CPUs shared with DataLoader workers, 1 avoids the
        # heavy slow-down of oversubscribed OpenMP threads
        torch.set_num_threads(int(cfg["threads"]))
    seed_everything(seed)
    micro = micro_batch_size(cfg, dist_info.world_size)
    start = _starting_point(cfg, out_dir, resume, init_from_authors)
    if dist_info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    _logger.info(
        "pretraining %s on %s | %s | world %d | micro-batch %d x accum %d | precision %s",
        cfg["method"], get(cfg, "model.arch"), device, dist_info.world_size, micro, int(tcfg["accum_steps"]), precision,
    )
    sampler, loader, steps_per_epoch = _build_loader(cfg, build_data(cfg, dist_info), dist_info, micro)
    epochs = int(tcfg["epochs"])
    model = build_model(cfg, device)
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], cfg["optim"])
    parts = TrainingParts(
        model,
        optimizer,
        build_scheduler(optimizer, cfg["schedule"], steps_per_epoch, epochs),
        make_grad_scaler(device, precision),
        RunLogger(out_dir, enabled=dist_info.is_main, tensorboard=bool(tcfg["tensorboard"]), print_every=int(tcfg["print_every"])),
    )
    # different dropout / shuffle streams per rank (weights are synchronised by DDP at wrap time)
    torch.manual_seed(seed + 1000 * dist_info.rank)
    position = _start_position(cfg, parts, start, init_from_authors, steps_per_epoch, dist_info)
    loop = TrainLoop(
        wrap_ddp(model, dist_info, bool(get(cfg, "ddp.broadcast_buffers"))), parts.optimizer, parts.scheduler, parts.scaler, device, precision,
        accum_steps=int(tcfg["accum_steps"]), grad_clip=tcfg.get("grad_clip"), failure_hint=_FAILURE_HINT,
        inject_nan_at_step=get(cfg, "debug.inject_nan_at_step", None),
    )
    loop.last_checkpoint = start[0]

    def save(position: LoopPosition) -> Path:
        return save_synced(
            out_dir, lambda rngs: _checkpoint_state(cfg, parts, position, steps_per_epoch, rngs), position.step,
            int(tcfg["keep_last"]), dist_info.is_main,
        )

    model.train()
    try:
        position = _train(cfg, loop, parts, sampler, loader, position, steps_per_epoch, save, dist_info)
    finally:
        parts.run_logger.close()
        if dist_info.is_main:
            plot_losses(out_dir / parts.run_logger.csv_path.name, out_dir / "loss_curve.png", title=f"{cfg['method']} {get(cfg, 'model.arch')}")
    last_path = loop.last_checkpoint
    if last_path is None or not Path(last_path).exists():
        last_path = save(position)
    return Path(last_path)


def _train(
    cfg: Mapping[str, Any],
    loop: TrainLoop,
    parts: TrainingParts,
    sampler: ResumableBatchSampler,
    loader: DataLoader,
    position: LoopPosition,
    steps_per_epoch: int,
    save: Callable[[LoopPosition], Path],
    dist_info: DistInfo,
) -> LoopPosition:
    """Run the loop from ``position``, logging a row every ``train.log_every`` steps; returns the final position."""
    tcfg = cfg["train"]
    epochs = int(tcfg["epochs"])
    total_steps = steps_per_epoch * epochs
    stop_after = tcfg.get("stop_after_steps")
    cadence = CheckpointCadence(total_steps, int(tcfg["checkpoint_every_steps"] or 0), int(tcfg["checkpoint_every_epochs"] or 0),
                                int(stop_after) if stop_after is not None else None)
    log_every = max(1, int(tcfg["log_every"]))
    clips_per_step = 2 * int(tcfg["batch_size"])

    def log_row(result: StepResult) -> None:
        step = result.position.step
        if step % log_every == 0 or step == total_steps:
            row = {"epoch": result.position.epoch, "lr": result.lr, **result.scalars}
            row.update({"clips_per_s": clips_per_step / result.seconds, "avg_clips_per_s": result.avg_rate,
                        "data_wait_frac": result.data_wait / result.seconds})
            parts.run_logger.log(step, row)

    return loop.run(
        loader, sampler, position, epochs, steps_per_epoch,
        prepare=lambda batch: _to_device(batch, dist_info.device),
        forward=lambda model, views: model(views),
        cadence=cadence,
        save=save,
        samples_per_step=clips_per_step,
        progress=dist_info.is_main and bool(tcfg["progress"]),
        desc=cfg["method"],
        on_step=log_row,
        before_step=parts.model.momentum_update,
    )


if __name__ == "__main__":  # pragma: no cover - use `python -m train pretrain`
    import sys

    sys.exit(main())
