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
import contextlib
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

import fima_models
from fima_models.data import FimaClipPairSampler, build_dataset
from fima_models.transforms import FimaViewTransform
from train.common import checkpoint as ckpt
from fima_models._utils import describe_os_error
from fima_models.checkpoint import CheckpointError
from train.common.config import ConfigError, get, load_yaml, resolve, save_config
from train.common.distributed import (
    DistInfo,
    all_gather_object,
    all_reduce_mean,
    any_rank_true,
    barrier,
    cleanup_distributed,
    init_distributed,
)
from train.common.optim import build_optimizer, build_scheduler
from train.common.precision import autocast, make_grad_scaler, resolve_precision, to_channels_last_3d
from train.common.run_log import Progress, RunLogger, plot_losses, setup_console_logging
from train.common.sampling import ResumableBatchSampler
from train.common.schema import PretrainConfig, check_pretrain
from train.common.seed import SeededDataset, get_rng_state, seed_everything, set_rng_state
from train.fima import AuthorsCheckpointError, authors_fima_config, load_authors_checkpoint
from train.fima.model import FimaPretrainer

__all__ = ["main", "run_pretrain", "build_parser", "NonFiniteLossError", "DEFAULTS", "CHECKPOINT_FORMAT"]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "fima-models-train"
CHECKPOINT_VERSION = 1

#: Every key a pretraining config may set, with its default (configs override a subset); the
#: schema, types and ranges are :class:`train.common.schema.PretrainConfig`.
DEFAULTS: dict[str, Any] = resolve(PretrainConfig, [])
#: Sections of a checkpoint's ``state`` that resuming reads.
RESUME_STATE = ("pretrainer", "optimizer", "scheduler", "scaler", "rng", "position", "logger")


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; the run stopped and the last good checkpoint is kept."""


# --------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``python -m train pretrain``."""
    parser = argparse.ArgumentParser(
        prog="python -m train pretrain",
        description="FIMA / MoCo video pretraining (single process or torchrun DDP), resumable.",
    )
    parser.add_argument("--config", required=True, help="YAML config (see train/configs/)")
    parser.add_argument("--out", required=True, help="run folder: checkpoints, metrics.csv, tensorboard, plots")
    parser.add_argument(
        "--resume",
        default="auto",
        help="auto (default): resume from the newest checkpoint in --out if any; none: start over; or a checkpoint path",
    )
    parser.add_argument(
        "--init-from-authors",
        metavar="CKPT",
        help="continue a run started with the FIMA authors' code: their checkpoint_XXXX.pth.tar "
        "(weights, key encoder, queues; training goes on at its epoch)",
    )
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=0.01 train.epochs=10")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m train pretrain``; returns the process exit status.

    Args:
        argv: arguments after the command name.

    Returns:
        0 on success, 2 for configuration errors, 3 when the loss became non-finite.
    """
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    setup_console_logging(rank=int(os.environ.get("RANK", "0")))  # ranks > 0 only print warnings
    try:
        # the schema's defaults first, so every key can be overridden even when the YAML omits it
        cfg = resolve_config(load_yaml(args.config), args.overrides)
        final = run_pretrain(cfg, Path(args.out), resume=args.resume, init_from_authors=args.init_from_authors)
    except (ConfigError, AuthorsCheckpointError) as exc:
        logger.error("configuration error: %s", exc)
        return 2
    except (FileNotFoundError, CheckpointError) as exc:  # data set layout, unusable checkpoint
        logger.error("%s", exc)
        return 2
    except OSError as exc:  # read-only or full disk, a path that is not a folder
        logger.error("%s", describe_os_error(exc))
        return 1
    except NonFiniteLossError as exc:
        logger.error("%s", exc)
        return 3
    logger.info("final checkpoint: %s", final)
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

            logger.info("preparing synthetic motion data in %s", root)
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


def _to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _checkpoint_state(
    cfg: Mapping[str, Any],
    model: FimaPretrainer,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    run_logger: RunLogger,
    step: int,
    epoch: int,
    step_in_epoch: int,
    steps_per_epoch: int,
    rng_states: list[dict[str, Any]],
) -> dict[str, Any]:
    full = model.state_dict()
    rest = {k: v for k, v in full.items() if not k.startswith("encoder_q.")}
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_name": str(get(cfg, "model.arch")),
        "method": cfg["method"],
        "epoch": step // steps_per_epoch,
        "step": step,
        "model": model.backbone_state_dict(),
        "num_classes": 0,
        "config": dict(cfg),
        "state": {
            "pretrainer": rest,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_states,
            "position": {"epoch": epoch, "step_in_epoch": step_in_epoch, "steps_per_epoch": steps_per_epoch},
            "logger": run_logger.state_dict(),
            "world_size": len(rng_states),
        },
    }


def _restore(
    state: Mapping[str, Any],
    model: FimaPretrainer,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    run_logger: RunLogger,
    dist_info: DistInfo,
) -> tuple[int, int, int]:
    """Load a checkpoint into the live objects; returns ``(step, epoch, step_in_epoch)``."""
    inner = state["state"]
    full = {f"encoder_q.{k}": v for k, v in state["model"].items()}
    full.update(inner["pretrainer"])
    model.load_state_dict(full, strict=True)
    optimizer.load_state_dict(inner["optimizer"])
    scheduler.load_state_dict(inner["scheduler"])
    scaler.load_state_dict(inner["scaler"])
    rngs = inner["rng"]
    if len(rngs) == dist_info.world_size:
        set_rng_state(rngs[dist_info.rank])
    else:
        logger.warning(
            "checkpoint was written by %d processes, this run has %d: RNG streams are reseeded, so the "
            "continuation is valid but not bit-identical to an uninterrupted run",
            len(rngs),
            dist_info.world_size,
        )
        seed_everything(int(state["config"].get("seed", 0)) + 1000 * dist_info.rank + int(state["step"]))
    run_logger.load_state_dict(inner["logger"], step=int(state["step"]))
    pos = inner["position"]
    return int(state["step"]), int(pos["epoch"]), int(pos["step_in_epoch"])


def _save(
    out_dir: Path, state_fn: Any, dist_info: DistInfo, step: int, keep_last: int
) -> Path:
    rng_states = all_gather_object(get_rng_state())
    path = ckpt.checkpoint_path(out_dir, step)
    if dist_info.is_main:
        path = ckpt.save_checkpoint(state_fn(rng_states), out_dir, step, keep_last=keep_last)
        logger.info("saved %s", path)
    barrier()
    return path


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
    accum = int(tcfg["accum_steps"])
    resume_path, resume_state = _resume_state(resume, out_dir)
    authors: tuple[dict[str, torch.Tensor], int] | None = None
    if init_from_authors is not None and resume_path is None:
        authors = _read_authors_checkpoint(Path(init_from_authors), cfg)
    elif init_from_authors is not None:
        logger.info("%s holds checkpoint %s: resuming it, --init-from-authors is not used", out_dir, resume_path)
    if dist_info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    logger.info(
        "pretraining %s on %s | %s | world %d | micro-batch %d x accum %d | precision %s",
        cfg["method"], get(cfg, "model.arch"), device, dist_info.world_size, micro, accum, precision,
    )

    dataset = build_data(cfg, dist_info)
    sampler = ResumableBatchSampler(
        len(dataset), micro, dist_info.rank, dist_info.world_size, seed=seed, shuffle=True, drop_last=True
    )
    steps_per_epoch = sampler.batches_per_epoch // accum
    if steps_per_epoch < 1:
        raise ConfigError(
            f"{len(dataset)} samples give {sampler.batches_per_epoch} micro-batches per rank, fewer than "
            f"accum_steps={accum}; lower train.batch_size or train.accum_steps"
        )
    epochs = int(tcfg["epochs"])
    total_steps = steps_per_epoch * epochs
    workers = int(get(cfg, "data.num_workers"))
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        generator=torch.Generator().manual_seed(seed),
    )

    model = build_model(cfg, device)
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], cfg["optim"])
    scheduler = build_scheduler(optimizer, cfg["schedule"], steps_per_epoch, epochs)
    scaler = make_grad_scaler(device, precision)
    run_logger = RunLogger(
        out_dir, enabled=dist_info.is_main, tensorboard=bool(tcfg["tensorboard"]), print_every=int(tcfg["print_every"])
    )
    # different dropout / shuffle streams per rank (weights are synchronised by DDP at wrap time)
    torch.manual_seed(seed + 1000 * dist_info.rank)

    step, start_epoch, start_step_in_epoch = 0, 0, 0
    if resume_path is not None and resume_state is not None:
        state = resume_state
        step, start_epoch, start_step_in_epoch = _restore(
            state, model, optimizer, scheduler, scaler, run_logger, dist_info
        )
        if state["state"]["position"]["steps_per_epoch"] != steps_per_epoch:
            raise ConfigError(
                f"checkpoint {resume_path} was written with {state['state']['position']['steps_per_epoch']} steps per "
                f"epoch, this run has {steps_per_epoch}; resume with the same data, batch size and world size"
            )
        logger.info("resumed from %s at step %d (epoch %d, step %d of the epoch)", resume_path, step, start_epoch, start_step_in_epoch)
    elif authors is not None:
        start_epoch = _start_from_authors(
            model, scheduler, authors, Path(str(init_from_authors)), str(get(cfg, "model.arch")), steps_per_epoch
        )
        step = start_epoch * steps_per_epoch
        logger.info("continuing the authors' run %s at epoch %d (step %d)", init_from_authors, start_epoch, step)

    train_model: nn.Module = model
    if dist_info.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=bool(get(cfg, "ddp.broadcast_buffers")),
        )
    model.train()

    stop_after = tcfg.get("stop_after_steps")
    stop_after = int(stop_after) if stop_after is not None else None
    nan_step = get(cfg, "debug.inject_nan_at_step", None)
    keep_last = int(tcfg["keep_last"])
    ckpt_steps = int(tcfg["checkpoint_every_steps"] or 0)
    ckpt_epochs = int(tcfg["checkpoint_every_epochs"] or 0)
    log_every = max(1, int(tcfg["log_every"]))
    clips_per_step = 2 * int(tcfg["batch_size"])
    progress = Progress(total_steps, initial=step, enabled=dist_info.is_main and bool(tcfg["progress"]), desc=cfg["method"])
    last_path: Path | None = resume_path
    epoch, step_in_epoch = start_epoch, start_step_in_epoch

    def state_fn(rngs: list[dict[str, Any]]) -> dict[str, Any]:
        return _checkpoint_state(
            cfg, model, optimizer, scheduler, scaler, run_logger, step, epoch, step_in_epoch, steps_per_epoch, rngs
        )

    try:
        done = step >= total_steps or (stop_after is not None and step >= stop_after)
        while not done and epoch < epochs:
            sampler.set_epoch(epoch, start_batch=step_in_epoch * accum)
            batches: Iterator[Any] = iter(loader)
            while step_in_epoch < steps_per_epoch:
                t_step = time.perf_counter()
                data_wait = 0.0
                model.momentum_update()
                sums: dict[str, torch.Tensor] = {}
                for micro_i in range(accum):
                    t0 = time.perf_counter()
                    views, _labels = next(batches)
                    views = _to_device(views, device)
                    data_wait += time.perf_counter() - t0
                    sync_ctx = (
                        train_model.no_sync()  # type: ignore[operator]
                        if dist_info.distributed and micro_i < accum - 1
                        else contextlib.nullcontext()
                    )
                    with sync_ctx:
                        with autocast(device, precision):
                            out = train_model(views)
                        loss = out["loss"].float()
                        if nan_step is not None and step + 1 == int(nan_step):
                            loss = loss * float("nan")
                        if any_rank_true(not bool(torch.isfinite(loss).item()), device):
                            raise NonFiniteLossError(
                                f"non-finite loss at step {step + 1} (epoch {epoch}): "
                                + ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in out.items())
                                + f". The run stopped; the last good checkpoint is {last_path or 'none (no checkpoint yet)'}. "
                                "Lower optim.lr, add warm-up (schedule.warmup_epochs) or use precision=fp32, then "
                                "rerun the same command to resume from that checkpoint."
                            )
                        scaler.scale(loss / accum).backward()
                    for k, v in out.items():
                        sums[k] = sums.get(k, 0.0) + v.detach().float() / accum
                if tcfg.get("grad_clip"):
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), float(tcfg["grad_clip"]))
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                step += 1
                step_in_epoch += 1
                names = sorted(sums)
                means = all_reduce_mean(torch.stack([sums[k] for k in names])).tolist()
                step_time = time.perf_counter() - t_step
                scalars = dict(zip(names, means))
                rate = progress.update(clips_per_step, {"loss": scalars["loss"]})
                if step % log_every == 0 or step == total_steps:
                    row = {"epoch": epoch, "lr": lr, **scalars}
                    row.update(
                        {"clips_per_s": clips_per_step / step_time, "avg_clips_per_s": rate, "data_wait_frac": data_wait / step_time}
                    )
                    run_logger.log(step, row)
                epoch_end = step_in_epoch == steps_per_epoch
                stop_now = stop_after is not None and step >= stop_after
                if epoch_end:
                    epoch, step_in_epoch = epoch + 1, 0
                due = (
                    (ckpt_steps and step % ckpt_steps == 0)
                    or (epoch_end and ckpt_epochs and epoch % ckpt_epochs == 0)
                    or step == total_steps
                    or stop_now
                )
                if due:
                    last_path = _save(out_dir, state_fn, dist_info, step, keep_last)
                if stop_now:
                    logger.info("stopping after step %d (train.stop_after_steps); rerun to resume", step)
                    done = True
                    break
                if epoch_end:
                    break
            del batches
    finally:
        progress.close()
        run_logger.close()
        if dist_info.is_main:
            plot_losses(out_dir / run_logger.csv_path.name, out_dir / "loss_curve.png", title=f"{cfg['method']} {get(cfg, 'model.arch')}")
    if last_path is None or not Path(last_path).exists():
        last_path = _save(out_dir, state_fn, dist_info, step, keep_last)
    return Path(last_path)


def _check_resumable(path: Path, state: dict[str, Any]) -> None:
    ckpt.check_train_checkpoint(path, state, RESUME_STATE)


def _read_authors_checkpoint(path: Path, cfg: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], int]:
    """Read and convert an authors' checkpoint, checking that this run's sizes can hold it.

    Raises:
        ConfigError: the run is not FIMA, has no epochs left after the checkpoint's, or its queue
            sizes or embedding width differ from the checkpoint's.
        AuthorsCheckpointError: the file is not a checkpoint of the authors' ``train.py``.
    """
    if cfg["method"] != "fima":
        raise ConfigError(f"--init-from-authors needs method=fima (the authors' module is FIMA); this run is {cfg['method']}")
    state, epoch = load_authors_checkpoint(path)
    epochs = int(cfg["train"]["epochs"])
    if epoch >= epochs:
        raise ConfigError(f"--init-from-authors {path} has finished {epoch} epochs; set train.epochs above {epoch} to continue")
    ours = cfg["fima"]
    wrong = [f"fima.{key}={value} (this run has {ours[key]})" for key, value in authors_fima_config(state).items() if ours[key] != value]
    if wrong:
        raise ConfigError(f"--init-from-authors {path} needs {', '.join(wrong)}; set those keys to the checkpoint's values")
    return state, epoch


def _start_from_authors(
    model: FimaPretrainer,
    scheduler: Any,
    authors: tuple[dict[str, torch.Tensor], int],
    path: Path,
    arch: str,
    steps_per_epoch: int,
) -> int:
    """Load the converted authors' state strictly and move the schedule to their epoch; returns that epoch."""
    state, epoch = authors
    missing, unexpected = model.state_dict().keys() - state.keys(), state.keys() - model.state_dict().keys()
    if missing or unexpected:
        raise ConfigError(
            f"--init-from-authors {path} does not fit model.arch={arch}: missing keys "
            f"{sorted(missing)[:5]} ({len(missing)}), unexpected keys {sorted(unexpected)[:5]} ({len(unexpected)}); "
            "set model.arch to the backbone the authors' run trained"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # same keys, other shapes
        raise ConfigError(f"--init-from-authors {path} does not fit this run: {str(exc).splitlines()[-1].strip()}") from None
    steps = epoch * steps_per_epoch
    with warnings.catch_warnings():
        # the schedule is moved, not stepped by training: torch would warn that no optimizer step came first
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        scheduler.last_epoch = steps - 1
        scheduler.step()
    return epoch


def _resume_state(resume: str, out_dir: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """The checkpoint to resume from and its content, per ``--resume`` (auto, none, a file or a run folder).

    ``auto`` and a folder take the newest checkpoint that loads, skipping (with a warning naming
    each) truncated or foreign ones.

    Raises:
        ConfigError: the path does not exist, or a folder holds checkpoints of which none is usable.
        CheckpointError: a given file is not a usable training checkpoint (unreadable, unsafe, incomplete).
    """
    if resume in ("none", "", None):
        return None, None
    folder = out_dir if resume == "auto" else Path(resume)
    if resume == "auto" or folder.is_dir():
        path, state = ckpt.find_latest_valid(folder, _check_resumable)
        found = ckpt.list_checkpoints(folder)
        if path is None and found:
            raise ConfigError(
                f"none of the {len(found)} checkpoints in {folder} can be resumed from (see the warnings above); "
                "pass --resume PATH to a good one, or --resume none to start over"
            )
        if path is None and resume != "auto":
            raise ConfigError(f"--resume {folder}: folder has no checkpoint_*.pt; pass a checkpoint file or --resume none")
        return path, state
    if not folder.is_file():
        raise ConfigError(f"--resume {folder}: file not found; pass an existing checkpoint, a run folder, auto or none")
    state = ckpt.load_checkpoint(folder)
    _check_resumable(folder, state)
    return folder, state


if __name__ == "__main__":  # pragma: no cover - use `python -m train pretrain`
    import sys

    sys.exit(main())
