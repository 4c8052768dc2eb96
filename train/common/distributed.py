"""torchrun-style distributed setup, rank information and small collective helpers.

``torchrun --nproc_per_node N -m train ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` reads them and starts a process
group (``nccl`` on CUDA, ``gloo`` on CPU). Without those variables it returns a single-process
:class:`DistInfo` and every helper below degrades to the identity, so the same training code
runs on one process and on many.

Example:
    >>> dist_info = init_distributed("auto")
    >>> keys = all_gather_cat(local_keys)      # (world * n, d), identical on every rank
    >>> cleanup_distributed()
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from fima_models import _utils

__all__ = [
    "DistInfo",
    "init_distributed",
    "cleanup_distributed",
    "is_distributed",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "barrier",
    "all_gather_cat",
    "all_reduce_mean",
    "all_reduce_sum",
    "broadcast_tensor",
    "any_rank_true",
    "all_gather_object",
    "resolve_device",
    "wrap_ddp",
]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes:
        rank: global rank (0 .. world_size-1).
        world_size: number of processes.
        local_rank: rank on this machine (selects the GPU).
        device: the torch device this process computes on.
        backend: process-group backend (``"nccl"``, ``"gloo"``) or ``None`` for one process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes logs and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group with more than one process is active."""
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:K"`` into this process's device.

    :func:`fima_models._utils.resolve_device` decides the device; under torchrun a bare
    ``"cuda"`` (or ``"auto"`` on a GPU machine) becomes the GPU of this process's ``local_rank``.

    Args:
        device: requested device; ``"auto"`` picks CUDA when available.
        local_rank: used as GPU index for ``"auto"``/``"cuda"`` under torchrun.

    Returns:
        The device.

    Raises:
        ValueError: if CUDA is requested but unavailable.
    """
    resolved = _utils.resolve_device(None if device == "auto" else device)
    if resolved.type == "cuda" and resolved.index is None:
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return resolved


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Initialise the process group from torchrun's environment (if present).

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"``; decides the backend (nccl for CUDA, else gloo).
        timeout_s: collective timeout.

    Returns:
        The :class:`DistInfo` of this process.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistInfo(0, 1, 0, dev, None)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s)
        )
    _logger.info("process group ready: rank %d/%d backend %s device %s", rank, world_size, backend, dev)
    return DistInfo(rank, world_size, local_rank, dev, backend)


def cleanup_distributed() -> None:
    """Destroy the process group if one is active."""
    if is_distributed():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True when a process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """Global rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op on one process)."""
    if is_distributed():
        dist.barrier()


@torch.no_grad()
def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Gather equally shaped tensors from all ranks and concatenate them along dim 0 (rank order).

    No gradient flows through the result. On one process the input is returned unchanged.

    Args:
        tensor: local tensor; the same shape on every rank.

    Returns:
        ``(world_size * n, ...)`` tensor, identical on every rank.
    """
    if not is_distributed():
        return tensor
    tensor = tensor.contiguous()
    out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(out, tensor)
    return torch.cat(out, dim=0)


@torch.no_grad()
def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (returns a new tensor; identity on one process)."""
    out = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


@torch.no_grad()
def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average a tensor over ranks (returns a new tensor; identity on one process)."""
    return all_reduce_sum(tensor) / get_world_size()


@torch.no_grad()
def broadcast_tensor(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Broadcast ``tensor`` in place from rank ``src`` and return it (identity on one process)."""
    if is_distributed():
        dist.broadcast(tensor, src=src)
    return tensor


def all_gather_object(obj: Any) -> list[Any]:
    """Gather one picklable object per rank into a list indexed by rank (``[obj]`` on one process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def any_rank_true(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True if ``flag`` is True on any rank (an all-reduce of one number; local value on one process)."""
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def wrap_ddp(model: torch.nn.Module, dist_info: DistInfo, broadcast_buffers: bool = True) -> torch.nn.Module:
    """``model`` wrapped in DistributedDataParallel on this process's device (unchanged on one process)."""
    if not dist_info.distributed:
        return model
    device = dist_info.device
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=broadcast_buffers
    )
