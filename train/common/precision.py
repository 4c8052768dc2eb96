"""Mixed precision per device and the ``channels_last_3d`` memory format.

``precision`` in configs is one of ``auto``, ``fp32``, ``bf16``, ``fp16``:

- ``auto``: bf16 autocast on GPUs that support it (Ampere and newer), fp16 + gradient scaler on
  older GPUs, fp32 on CPU unless the CPU has native bf16 (AMX / AVX512-BF16); emulated bf16 on a
  plain CPU is slower than fp32, so it is never chosen automatically there.
- ``bf16``: bf16 autocast; raises where the hardware has no bf16.
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
from typing import Iterator

import torch
from torch import nn

from fima_models.features import cpu_has_native_bf16

__all__ = [
    "PRECISIONS",
    "cpu_has_native_bf16",
    "resolve_precision",
    "autocast",
    "make_grad_scaler",
    "to_channels_last_3d",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_precision(requested: str, device: torch.device) -> str:
    """Decide the precision actually used on ``device``.

    Args:
        requested: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        device: compute device.

    Returns:
        ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    Raises:
        ValueError: for an unknown name, bf16 without hardware support, or fp16 off CUDA.
    """
    requested = str(requested).lower()
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; use one of {', '.join(PRECISIONS)}")
    cuda = device.type == "cuda"
    bf16_ok = (cuda and torch.cuda.is_bf16_supported()) or (device.type == "cpu" and cpu_has_native_bf16())
    if requested == "auto":
        if cuda:
            return "bf16" if bf16_ok else "fp16"
        return "bf16" if bf16_ok else "fp32"
    if requested == "bf16" and not bf16_ok:
        raise ValueError(f"precision bf16 requested but {device} has no native bf16; use precision=auto or fp32")
    if requested == "fp16" and not cuda:
        raise ValueError(f"precision fp16 needs a CUDA device (got {device}); use precision=auto or fp32")
    return requested


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Autocast context for a resolved precision (a no-op context for fp32).

    Args:
        device: compute device.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (see :func:`resolve_precision`).
    """
    if precision == "fp32":
        yield
        return
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def make_grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Gradient scaler, enabled only for fp16 on CUDA (otherwise a pass-through that still has a state dict)."""
    enabled = precision == "fp16" and device.type == "cuda"
    return torch.amp.GradScaler(device.type if device.type == "cuda" else "cpu", enabled=enabled)


def to_channels_last_3d(obj: nn.Module | torch.Tensor) -> nn.Module | torch.Tensor:
    """Convert a module's 5-D weights or a 5-D tensor to ``torch.channels_last_3d`` (other tensors unchanged).

    Args:
        obj: module (converted in place and returned) or tensor (a converted tensor is returned).

    Returns:
        The converted module or tensor.
    """
    if isinstance(obj, torch.Tensor):
        return obj.contiguous(memory_format=torch.channels_last_3d) if obj.dim() == 5 else obj
    for module in obj.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if param.dim() == 5:
                param.data = param.data.contiguous(memory_format=torch.channels_last_3d)
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf is not None and buf.dim() == 5:
                setattr(module, name, buf.contiguous(memory_format=torch.channels_last_3d))
    return obj
