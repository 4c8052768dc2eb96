"""Seeding, RNG state capture/restore and per-sample seeded augmentation.

Exact resume needs two kinds of randomness to be reproducible:

- the training process's own RNG (dropout, batch shuffles for BatchNorm, ...): captured with
  :func:`get_rng_state` into every checkpoint and restored with :func:`set_rng_state`;
- data augmentation: each sample is augmented under a seed derived from ``(seed, epoch, index)``
  (:func:`sample_seed`), inside :func:`seeded_rng`, so it does not depend on worker count,
  worker scheduling or where a run was interrupted. :class:`SeededDataset` applies this to any
  map-style dataset whose sampler yields ``(epoch, index)`` pairs
  (see :class:`train.common.sampling.ResumableBatchSampler`).
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["seed_everything", "sample_seed", "seeded_rng", "get_rng_state", "set_rng_state", "SeededDataset"]


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and all GPUs)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for sample ``index`` of ``epoch`` under run seed ``seed``.

    Args:
        seed: run seed.
        epoch: epoch number.
        index: dataset index.

    Returns:
        A non-negative integer seed; different inputs give (practically) independent seeds.
    """
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run a block with Python, NumPy and torch (CPU) global RNGs seeded to ``seed``, then restore them.

    The caller's RNG streams are untouched afterwards, so seeding samples inside the main process
    (``num_workers=0``) does not disturb the training RNG.

    Args:
        seed: seed for the block.
    """
    py_state = random.getstate()
    np_state = np.random.get_state()
    torch_state = torch.random.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)


def get_rng_state() -> dict[str, Any]:
    """Capture Python, NumPy, torch CPU and (if available) CUDA RNG states.

    The result holds only tensors and plain Python values, so checkpoints that contain it load
    with ``torch.load(..., weights_only=True)``.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states captured by :func:`get_rng_state` (CUDA only when both sides have it)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state(
        (npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    torch.random.set_rng_state(state["torch"].cpu() if isinstance(state["torch"], torch.Tensor) else state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


class SeededDataset(Dataset):
    """Wrap a map-style dataset so item ``(epoch, index)`` is produced under :func:`sample_seed`.

    Args:
        dataset: the wrapped dataset (indexed by int).
        seed: run seed.

    Example:
        >>> ds = SeededDataset(base, seed=0)
        >>> a = ds[(3, 17)]; b = ds[(3, 17)]     # identical augmentation
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int] | int) -> Any:
        if isinstance(key, tuple):
            epoch, index = key
        else:
            epoch, index = 0, int(key)
        with seeded_rng(sample_seed(self.seed, int(epoch), int(index))):
            return self.dataset[int(index)]

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)
