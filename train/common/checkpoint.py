"""Atomic checkpoint files, keep-last-K rotation and resume discovery.

Files are written with :func:`fima_models._utils.atomic_write` (a per-process unique temporary
name in the destination folder, flushed and renamed over the destination), so a crash never
leaves a half-written checkpoint and concurrent writers never mix: a reader sees either the old
file or the new one.

Checkpoints of a run live in one folder as ``checkpoint_{step:08d}.pt``; :func:`save_checkpoint`
writes one and deletes the oldest beyond ``keep_last``; :func:`find_latest` returns the newest
(highest step) one; :func:`find_latest_valid` the newest one that loads, for resuming.

Example:
    >>> path = save_checkpoint({"step": 10, "model": model.state_dict()}, out_dir, step=10, keep_last=3)
    >>> state = load_checkpoint(find_latest(out_dir))
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Callable

import torch

from fima_models._utils import TRAIN_CHECKPOINT_FORMAT, atomic_write
from fima_models.checkpoint import CheckpointError, read_checkpoint
from train.common.config import ConfigError

__all__ = [
    "CHECKPOINT_PATTERN",
    "TRAIN_CHECKPOINT_VERSION",
    "train_checkpoint",
    "atomic_torch_save",
    "checkpoint_path",
    "list_checkpoints",
    "find_latest",
    "find_latest_valid",
    "save_checkpoint",
    "load_checkpoint",
    "check_train_checkpoint",
    "resume_checkpoint",
]

_logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint_(\d{8,})\.pt$")
#: ``version`` of the checkpoints :func:`train_checkpoint` makes.
TRAIN_CHECKPOINT_VERSION = 1


def train_checkpoint(
    model_name: str,
    method: str,
    epoch: int,
    step: int,
    model_state: dict[str, Any],
    num_classes: int,
    config: Any,
    state: dict[str, Any],
) -> dict[str, Any]:
    """A checkpoint of a ``python -m train`` run, in the format :mod:`fima_models.checkpoint` reads.

    Args:
        model_name: the backbone's architecture (or ``local-dir:...`` source).
        method: ``fima``, ``moco``, ``finetune`` or ``linear``.
        epoch: epochs done.
        step: optimizer steps done.
        model_state: the model's state dict (the query backbone when pretraining).
        num_classes: classifier size (0: a backbone without classifier).
        config: the run's resolved configuration.
        state: what resuming reads (optimizer, schedule, RNG ...; empty for a final classifier).
    """
    return {
        "format": TRAIN_CHECKPOINT_FORMAT,
        "version": TRAIN_CHECKPOINT_VERSION,
        "model_name": model_name,
        "method": method,
        "epoch": epoch,
        "step": step,
        "model": model_state,
        "num_classes": num_classes,
        "config": config,
        "state": state,
    }


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically."""
    return atomic_write(path, lambda fh: torch.save(obj, fh), mode="wb")


def checkpoint_path(out_dir: str | Path, step: int) -> Path:
    """Return the file name used for the checkpoint of optimizer step ``step``."""
    return Path(out_dir) / f"checkpoint_{step:08d}.pt"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Return a run's checkpoints sorted by step (oldest first); empty if none or no folder."""
    folder = Path(out_dir)
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        match = CHECKPOINT_PATTERN.match(child.name)
        if match and child.is_file():
            found.append((int(match.group(1)), child))
    return [p for _, p in sorted(found)]


def find_latest(out_dir: str | Path) -> Path | None:
    """Return the newest checkpoint of a run folder, or None when there is none."""
    ckpts = list_checkpoints(out_dir)
    return ckpts[-1] if ckpts else None


def save_checkpoint(state: dict[str, Any], out_dir: str | Path, step: int, keep_last: int = 3) -> Path:
    """Atomically save a checkpoint for ``step`` and delete the oldest beyond ``keep_last``.

    Args:
        state: the checkpoint dict.
        out_dir: run folder.
        step: optimizer step the state belongs to (names the file).
        keep_last: how many checkpoints to keep (>= 1).

    Returns:
        The path written.

    Raises:
        ValueError: if ``keep_last`` < 1.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 (got {keep_last}); set checkpoint.keep_last to 1 or more")
    path = atomic_torch_save(state, checkpoint_path(out_dir, step))
    for old in list_checkpoints(out_dir)[:-keep_last]:
        try:
            old.unlink()
            _logger.debug("removed old checkpoint %s", old)
        except FileNotFoundError:
            pass
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, on the CPU.

    The file is read with :func:`fima_models.checkpoint.read_checkpoint`: weights-only unpickling,
    so a file that tries to run code is refused before anything runs, and a truncated, random or
    foreign file gives one :class:`~fima_models.checkpoint.CheckpointError` naming it.

    Args:
        path: checkpoint file.

    Returns:
        The checkpoint dict.

    Raises:
        CheckpointError: the file is missing, unreadable, unsafe or not a dict checkpoint.
    """
    path = Path(path)
    state = read_checkpoint(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a training checkpoint (expected a dict, got {type(state).__name__})")
    return state


def check_train_checkpoint(path: str | Path, state: dict[str, Any], state_keys: tuple[str, ...] = ()) -> None:
    """Raise unless ``state`` is a complete ``train/`` checkpoint that a run can resume from.

    Args:
        path: where it was read (for the message).
        state: the loaded checkpoint.
        state_keys: entries its ``state`` section must hold (``optimizer``, ``scheduler`` ...).

    Raises:
        CheckpointError: naming the file and what is wrong.
    """
    if state.get("format") != TRAIN_CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a {TRAIN_CHECKPOINT_FORMAT} checkpoint (format {state.get('format')!r}); resume only from "
            "checkpoint_*.pt files of a `python -m train` run, or pass --resume none to start over"
        )
    inner = state.get("state")
    missing = [k for k in ("model", "step", "epoch", "state") if k not in state]
    missing += [f"state.{k}" for k in state_keys if not isinstance(inner, dict) or k not in inner]
    if missing:
        raise CheckpointError(f"{path} is incomplete (no {', '.join(missing)}); resume from another checkpoint")


def find_latest_valid(
    out_dir: str | Path, validate: Callable[[Path, dict[str, Any]], None] | None = None
) -> tuple[Path | None, dict[str, Any] | None]:
    """Newest checkpoint of a run folder that loads (and passes ``validate``), skipping broken ones.

    A checkpoint that cannot be read (truncated by a full disk, damaged copy ...) or that
    ``validate`` rejects is skipped with a warning naming it and the reason, and the next older
    one is tried, so an interrupted run resumes from its last good state.

    Args:
        out_dir: run folder.
        validate: called with ``(path, state)``; raises ``CheckpointError``/``ValueError`` to reject it.

    Returns:
        ``(path, state)`` of the newest usable checkpoint, or ``(None, None)`` when there is none.
    """
    for path in reversed(list_checkpoints(out_dir)):
        try:
            state = load_checkpoint(path)
            if validate is not None:
                validate(path, state)
        except (CheckpointError, ValueError) as err:
            _logger.warning("skipping checkpoint %s: %s", path, err)
            continue
        return path, state
    return None, None


def resume_checkpoint(
    resume: str | None, out_dir: Path, state_keys: tuple[str, ...]
) -> tuple[Path | None, dict[str, Any] | None]:
    """The checkpoint a run resumes from and its content, per ``--resume`` (auto, none, a file or a run folder).

    ``auto`` (the run folder ``out_dir``) and a folder take the newest checkpoint that loads,
    skipping (with a warning naming each) truncated or foreign ones.

    Args:
        resume: ``"auto"``, ``"none"`` (or empty / None: start over), a checkpoint file or a run folder.
        out_dir: the run folder (searched for ``auto``).
        state_keys: sections a checkpoint's ``state`` must hold (see :func:`check_train_checkpoint`).

    Returns:
        ``(path, checkpoint)``, or ``(None, None)`` when the run starts over.

    Raises:
        ConfigError: the path does not exist, or a folder holds checkpoints of which none is usable.
        CheckpointError: a given file is not a usable training checkpoint (unreadable, unsafe, incomplete).
    """
    if resume in ("none", "", None):
        return None, None

    def check(path: Path, state: dict[str, Any]) -> None:
        check_train_checkpoint(path, state, state_keys)

    folder = out_dir if resume == "auto" else Path(str(resume))
    if resume == "auto" or folder.is_dir():
        path, state = find_latest_valid(folder, check)
        found = list_checkpoints(folder)
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
    state = load_checkpoint(folder)
    check(folder, state)
    return folder, state
