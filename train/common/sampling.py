"""A rank-aware, resumable batch sampler that yields ``(epoch, index)`` pairs.

Each epoch's order is a permutation seeded by ``(seed, epoch)`` alone, so a run that resumes
in the middle of an epoch sees exactly the batches it would have seen without interruption:
``set_epoch(epoch, start_batch=k)`` skips the first ``k`` batches. Every element is an
``(epoch, index)`` tuple, which :class:`train.common.seed.SeededDataset` turns into a
per-sample augmentation seed.

With ``world_size`` > 1 the epoch order is split between ranks (rank ``r`` takes positions
``r, r + world, ...``); with ``drop_last=True`` every rank gets the same number of full
batches (required by collectives in the training step); with ``drop_last=False`` the order is
padded by repeating its start so ranks stay equal, as ``DistributedSampler`` does.

Example:
    >>> sampler = ResumableBatchSampler(len(ds), batch_size=8, rank=0, world_size=1, seed=0)
    >>> loader = DataLoader(SeededDataset(ds, seed=0), batch_sampler=sampler)
    >>> sampler.set_epoch(3, start_batch=5)
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

from train.common.seed import sample_seed

__all__ = ["ResumableBatchSampler"]


class ResumableBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(epoch, index)`` for one rank, reproducible per epoch and resumable mid-epoch.

    Args:
        num_samples: dataset length.
        batch_size: samples per batch on this rank.
        rank: this process's rank.
        world_size: number of processes.
        seed: run seed (the permutation of epoch ``e`` depends only on ``seed`` and ``e``).
        shuffle: permute each epoch (False: dataset order).
        drop_last: drop the last incomplete global batch.

    Raises:
        ValueError: if the dataset is too small for one batch per rank with ``drop_last``.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        if drop_last and num_samples < batch_size * world_size:
            raise ValueError(
                f"dataset has {num_samples} samples, fewer than one global batch "
                f"({batch_size} per rank x {world_size} ranks); lower the batch size or add data"
            )
        if num_samples < 1:
            raise ValueError("dataset is empty; check the data root and split files")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch to iterate and how many of its batches to skip (for resuming)."""
        if start_batch < 0 or start_batch > self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} outside 0..{self.batches_per_epoch}")
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    @property
    def batches_per_epoch(self) -> int:
        """Number of batches each rank gets per epoch (independent of ``start_batch``)."""
        per_rank = self._per_rank_count()
        if self.drop_last:
            return per_rank // self.batch_size
        return -(-per_rank // self.batch_size)

    def _per_rank_count(self) -> int:
        if self.drop_last:
            usable = (self.num_samples // (self.batch_size * self.world_size)) * self.batch_size * self.world_size
            return usable // self.world_size
        return -(-self.num_samples // self.world_size)

    def epoch_order(self, epoch: int) -> list[int]:
        """All dataset indices of ``epoch`` for this rank, in order (before batching)."""
        if self.shuffle:
            gen = torch.Generator()
            gen.manual_seed(sample_seed(self.seed, epoch, -1))
            order = torch.randperm(self.num_samples, generator=gen).tolist()
        else:
            order = list(range(self.num_samples))
        per_rank = self._per_rank_count()
        total = per_rank * self.world_size
        if total > len(order):
            order = (order * (-(-total // len(order))))[:total]
        else:
            order = order[:total]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.epoch_order(self.epoch)
        for b in range(self.start_batch, self.batches_per_epoch):
            chunk = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield [(self.epoch, i) for i in chunk]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch
