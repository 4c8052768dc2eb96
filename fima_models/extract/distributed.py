"""The torchrun side of a many-video run: rank and world size, the process group (barriers only)."""
import contextlib
import os
from datetime import timedelta
from typing import Iterator, NamedTuple

__all__ = ['DistEnv', 'dist_env', 'process_group', 'barrier']

#: A rank that finishes early waits at the final barrier for the slowest one, possibly for hours; a
#: rank that dies makes torchrun stop the others, so the long timeout cannot leave them hanging.
_BARRIER_TIMEOUT = timedelta(days=7)


class DistEnv(NamedTuple):
    """This process's place in a torchrun launch (``0, 1, 0`` without one)."""
    rank: int
    world_size: int
    local_rank: int


def dist_env() -> DistEnv:
    """``(rank, world_size, local_rank)`` from the torchrun environment."""
    return DistEnv(int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1)),
                   int(os.environ.get('LOCAL_RANK', 0)))


@contextlib.contextmanager
def process_group(world_size: int) -> Iterator[None]:
    """Join the torchrun process group (gloo, used only for barriers) for the duration of the block.

    Nothing happens for one process, or when a group exists already (it is then left as it is).

    Raises:
        RuntimeError: ``WORLD_SIZE > 1`` without ``MASTER_ADDR`` (not launched by torchrun).
    """
    import torch.distributed as dist

    if world_size <= 1 or dist.is_initialized():
        yield
        return
    if 'MASTER_ADDR' not in os.environ:
        raise RuntimeError('WORLD_SIZE > 1 but MASTER_ADDR is not set; launch multi-process runs with torchrun')
    dist.init_process_group('gloo', timeout=_BARRIER_TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier(world_size: int) -> None:
    """Wait for every rank (no-op for one process)."""
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()
