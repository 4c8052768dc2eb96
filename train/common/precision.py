"""What training adds to the library's precision vocabulary: the autocast context and the gradient scaler.

The ``channels_last_3d`` memory format is :func:`fima_models._utils.to_channels_last_3d`.

``precision`` in configs is one of :data:`PRECISIONS` (``fp32``, ``bf16``, ``auto``, ``fp16``),
resolved by :func:`fima_models._utils.resolve_precision` with ``training=True``:

- ``auto``: bf16 autocast where the device computes bfloat16 natively (Ampere and newer GPUs,
  CPUs with AMX / AVX512-BF16), fp16 + gradient scaler on older GPUs, else fp32; emulated bf16 on a
  plain CPU is slower than fp32, so it is never chosen automatically there.
- ``bf16``: bf16 autocast; refused where the hardware has no native bf16.
- ``fp16``: fp16 autocast + :class:`torch.amp.GradScaler` (CUDA only).
- ``fp32``: no autocast.

Example:
    >>> prec = resolve_precision("auto", device)
    >>> scaler = make_grad_scaler(device, prec)
    >>> with autocast(device, prec):
    ...     loss = model(x)
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import torch

from fima_models import _utils
from fima_models._utils import TRAINING_PRECISIONS, autocast_dtype

__all__ = ["PRECISIONS", "resolve_precision", "autocast", "make_grad_scaler"]

_logger = logging.getLogger(__name__)

#: Precisions a training config may ask for.
PRECISIONS = TRAINING_PRECISIONS


def resolve_precision(requested: str, device: torch.device) -> str:
    """The training precision used on ``device`` (``fp32``, ``bf16`` or ``fp16``); logs why.

    Raises:
        ValueError: an unknown name, bf16 without native hardware support, or fp16 off CUDA.
    """
    precision, reason = _utils.resolve_precision(requested, device, training=True)
    _logger.debug("precision %s -> %s", requested, reason)
    return precision


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Autocast context for a resolved precision (a no-op context for fp32).

    Args:
        device: compute device.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (see :func:`resolve_precision`).
    """
    dtype = autocast_dtype(precision)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def make_grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Gradient scaler, enabled only for fp16 on CUDA (otherwise a pass-through that still has a state dict)."""
    enabled = precision == "fp16" and device.type == "cuda"
    return torch.amp.GradScaler(device.type if device.type == "cuda" else "cpu", enabled=enabled)
