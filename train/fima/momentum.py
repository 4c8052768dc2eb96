"""Momentum (key) encoder helpers: EMA update, shuffled BatchNorm and key queues.

Shuffled BatchNorm keeps BatchNorm's batch statistics from leaking which query and key belong
together (MoCo). The key encoder runs in training mode, on a batch whose order has been
shuffled so that each BatchNorm sees a different subset of samples than the query encoder:

- several processes (DDP): the key inputs of all ranks are gathered, permuted by one
  permutation drawn on rank 0 and broadcast, each rank encodes its slice of the permuted batch
  (its BatchNorm statistics come from samples of other ranks), and the outputs are gathered and
  un-permuted;
- one process: the same permutation is applied within the batch, which is then encoded in
  ``splits`` chunks, each chunk with its own BatchNorm statistics ("split BN"); with
  ``splits = world size`` this reproduces exactly what the multi-process path computes.
  Both paths also apply ``splits`` per rank, so a run's behaviour depends only on the
  total number of BatchNorm groups.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from train.common.distributed import all_gather_cat, broadcast_tensor, get_rank, is_distributed

__all__ = ["momentum_update", "FeatureQueue", "shuffled_forward"]


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """EMA of parameters: ``target = momentum * target + (1 - momentum) * online``.

    Buffers (BatchNorm running statistics) are left to the target's own forward passes, as in MoCo.

    Args:
        online: the trained module (query side).
        target: the EMA module (key side), same architecture.
        momentum: EMA coefficient (0.999 in FIMA).

    Raises:
        ValueError: if the two modules' parameters do not match.
    """
    online_params = list(online.parameters())
    target_params = list(target.parameters())
    if len(online_params) != len(target_params):
        raise ValueError("momentum_update: online and target modules have different parameter lists")
    # target * m and online * (1 - m) are rounded separately, then added: the FIMA authors' arithmetic to the
    # last bit (a fused multiply-add rounds differently, and BatchNorm over small maps amplifies that)
    if any(o.dtype != t.dtype or o.device != t.device for o, t in zip(online_params, target_params)):
        for o, t in zip(online_params, target_params):
            t.mul_(momentum).add_(o.detach().to(t.dtype) * (1.0 - momentum))
        return
    # one fused multi-tensor kernel per op instead of two kernels per parameter
    torch._foreach_mul_(target_params, momentum)
    torch._foreach_add_(target_params, torch._foreach_mul([o.detach() for o in online_params], 1.0 - momentum))


class FeatureQueue(nn.Module):
    """Fixed-size FIFO of L2-normalised keys with wrap-around, stored as buffers (saved in state dicts).

    Args:
        size: number of keys K.
        dim: key width D.

    Example:
        >>> queue = FeatureQueue(2240, 128)
        >>> queue.enqueue(keys)        # (B, 128), gathered from all ranks
        >>> negatives = queue.keys     # (2240, 128)
    """

    queue: torch.Tensor
    ptr: torch.Tensor

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size must be >= 1, got {size}")
        self.size = size
        self.dim = dim
        self.register_buffer("queue", nn.functional.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def keys(self) -> torch.Tensor:
        """A ``(K, D)`` snapshot of the stored keys (a copy, so later enqueues do not alter it; no gradient)."""
        return self.queue.detach().clone()

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` at the pointer, wrapping around the end; keeps only the last K if more are given.

        Args:
            keys: ``(B, D)`` new keys.
        """
        keys = keys.detach().to(self.queue.dtype)
        if keys.dim() != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"queue expects keys of shape (B, {self.dim}), got {tuple(keys.shape)}")
        b = keys.shape[0]
        if b == 0:
            return
        start = self.ptr
        if b > self.size:
            start = self.ptr + (b - self.size)
            keys = keys[-self.size :]
            b = self.size
        # index arithmetic stays on the device: no host-device synchronisation per step
        idx = (start + torch.arange(b, device=self.queue.device)) % self.size
        self.queue.index_copy_(0, idx, keys)
        self.ptr.copy_((start + b) % self.size)


@torch.no_grad()
def shuffled_forward(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, splits: int = 1) -> torch.Tensor:
    """Run ``fn`` (the key encoder) on ``x`` with shuffled BatchNorm, returning outputs in input order.

    Args:
        fn: encoder forward (in train mode), ``(B, ...) -> (B, ...)``.
        x: this rank's inputs ``(B, ...)``; B must be equal on all ranks.
        splits: BatchNorm groups per rank: the (shuffled) local batch is encoded in this many chunks.

    Returns:
        ``fn``'s outputs for ``x`` in the original order.
    """
    if is_distributed():
        b = x.shape[0]
        x_all = all_gather_cat(x)
        perm = torch.randperm(x_all.shape[0], device=x.device) if get_rank() == 0 else torch.empty(
            x_all.shape[0], dtype=torch.long, device=x.device
        )
        broadcast_tensor(perm, src=0)
        rank = get_rank()
        local = x_all[perm[rank * b : (rank + 1) * b]]
        out_local = _split_forward(fn, local, splits)
        out_all = all_gather_cat(out_local)
        unperm = torch.argsort(perm)
        return out_all[unperm[rank * b : (rank + 1) * b]]
    perm = torch.randperm(x.shape[0], device=x.device)
    out = _split_forward(fn, x[perm], splits)
    return out[torch.argsort(perm)]


def _split_forward(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, splits: int) -> torch.Tensor:
    if splits <= 1 or x.shape[0] < 2:
        return fn(x)
    splits = min(splits, x.shape[0])
    return torch.cat([fn(chunk) for chunk in torch.tensor_split(x, splits, dim=0)], dim=0)

