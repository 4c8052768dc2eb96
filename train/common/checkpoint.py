"""Atomic checkpoint files, keep-last-K rotation and resume discovery.

Files are written to a temporary name in the destination folder, flushed to disk and renamed
over the destination (``os.replace``), so a crash never leaves a half-written checkpoint: a
reader sees either the old file or the new one.

Checkpoints of a run live in one folder as ``checkpoint_{step:08d}.pt``; :func:`save_checkpoint`
writes one and deletes the oldest beyond ``keep_last``; :func:`find_latest` returns the newest
(highest step) one for resuming.

Example:
    >>> path = save_checkpoint({"step": 10, "model": model.state_dict()}, out_dir, step=10, keep_last=3)
    >>> state = load_checkpoint(find_latest(out_dir))
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = [
    "CHECKPOINT_PATTERN",
    "atomic_write",
    "atomic_write_text",
    "atomic_write_bytes",
    "atomic_torch_save",
    "checkpoint_path",
    "list_checkpoints",
    "find_latest",
    "save_checkpoint",
    "load_checkpoint",
]

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint_(\d{8,})\.pt$")


def atomic_write(path: str | Path, writer: Callable[[Any], None], mode: str = "wb") -> Path:
    """Write a file atomically through a callback.

    Args:
        path: destination.
        writer: called with an open file object (opened with ``mode``) that it writes to.
        mode: ``"wb"`` or ``"w"``.

    Returns:
        The destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as fh:
            writer(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Atomically write a text file (UTF-8)."""
    return atomic_write(path, lambda fh: fh.write(text), mode="w")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Atomically write a binary file."""
    return atomic_write(path, lambda fh: fh.write(data), mode="wb")


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically."""
    return atomic_write(path, lambda fh: torch.save(obj, fh), mode="wb")


def _fsync_dir(folder: Path) -> None:
    """Flush a directory entry so a rename survives power loss (no-op where unsupported)."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
            logger.debug("removed old checkpoint %s", old)
        except FileNotFoundError:
            pass
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Checkpoints written by ``train/`` hold only tensors and plain Python values, so they are read
    with ``weights_only=True`` (no code from the file is executed).

    Args:
        path: checkpoint file.
        map_location: device to map tensors to.

    Returns:
        The checkpoint dict.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the file is not a dict checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}; pass an existing file or a run folder that has checkpoint_*.pt")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a training checkpoint (expected a dict, got {type(state).__name__})")
    return state
