"""Device and numeric precision: which device, which precision, which memory format.

One precision vocabulary for the whole project: ``fp32`` (no autocast), ``bf16`` (bfloat16
autocast) and ``auto`` (bfloat16 where the hardware computes it natively, else float32); training
also knows ``fp16`` (float16 autocast with a gradient scaler, CUDA only), which ``auto`` picks on
CUDA GPUs without bfloat16 when training. A CPU without native bfloat16 (no AVX512-BF16 / AMX /
Arm BF16) emulates it far slower than float32, so ``auto`` never picks it there and ``bf16`` is
refused unless the caller accepts emulation.
"""
import logging
from typing import Optional, Tuple, Union

import torch
from torch import nn

__all__ = [
    'PRECISIONS', 'TRAINING_PRECISIONS', 'resolve_device', 'cpu_has_native_bf16', 'has_native_bf16',
    'resolve_precision', 'autocast_dtype', 'to_channels_last_3d',
]

_logger = logging.getLogger(__name__)

#: Precisions of inference and feature extraction.
PRECISIONS = ('fp32', 'bf16', 'auto')
#: Precisions of training (``fp16`` needs a CUDA GPU and a gradient scaler).
TRAINING_PRECISIONS = PRECISIONS + ('fp16',)

_AUTOCAST_DTYPES = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def resolve_device(device: Union[str, torch.device, None] = None) -> torch.device:
    """The device to run on: ``None`` means CUDA when available, else the CPU.

    Args:
        device: ``None``, a device name (``'cpu'``, ``'cuda'``, ``'cuda:1'``) or a device.

    Raises:
        ValueError: CUDA asked for where no CUDA GPU is available.
    """
    if device is None:
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'device {device} was asked for but no CUDA GPU is available; use device cpu')
    return device


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16, AMX, or Arm BF16)."""
    cpu_mod = getattr(torch, 'cpu', None)
    for probe in ('_is_avx512_bf16_supported', '_is_amx_tile_supported'):
        fn = getattr(cpu_mod, probe, None)
        if fn is not None:
            try:
                if fn():
                    return True
            except RuntimeError:
                pass
    try:
        with open('/proc/cpuinfo', encoding='utf-8', errors='replace') as handle:
            for line in handle:
                if line.lower().startswith(('flags', 'features')):
                    flags = set(line.split(':', 1)[-1].split())
                    return bool(flags & {'avx512_bf16', 'amx_bf16', 'bf16'})
    except OSError:
        pass
    return False


def has_native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (a CUDA GPU of Ampere or newer, or such a CPU)."""
    if device.type == 'cuda':
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == 'cpu':
        return cpu_has_native_bf16()
    return False


def resolve_precision(
        requested: str,
        device: torch.device,
        training: bool = False,
        allow_emulated: bool = False,
) -> Tuple[str, str]:
    """The precision used on ``device`` for a requested one, and why.

    Args:
        requested: One of :data:`PRECISIONS` (with ``training``, of :data:`TRAINING_PRECISIONS`).
        device: The compute device.
        training: Accept ``fp16``, and let ``auto`` pick it on CUDA GPUs without bfloat16.
        allow_emulated: Accept ``bf16`` on hardware that emulates it (with a warning).

    Returns:
        ``(precision, reason)``: ``'fp32'``, ``'bf16'`` or ``'fp16'``, and one line for the log.

    Raises:
        ValueError: An unknown precision, ``bf16`` where it would be emulated (unless
            ``allow_emulated``), or ``fp16`` outside training or off CUDA.
    """
    choices = TRAINING_PRECISIONS if training else PRECISIONS
    name = str(requested).lower()
    if name not in choices:
        raise ValueError(f'unknown precision {requested!r}; choose one of {", ".join(choices)}')
    if name == 'fp32':
        return 'fp32', 'fp32: asked for'
    native = has_native_bf16(device)
    if name == 'auto':
        if native:
            return 'bf16', f'bf16 autocast: {device.type} computes bfloat16 natively'
        if training and device.type == 'cuda':
            return 'fp16', 'fp16 autocast + gradient scaler: this GPU has no bfloat16'
        return 'fp32', f'fp32: {device.type} has no native bfloat16 (emulated bf16 is far slower)'
    if name == 'fp16':
        if device.type != 'cuda':
            raise ValueError(f'precision fp16 needs a CUDA device (got {device}); use precision auto or fp32')
        return 'fp16', 'fp16 autocast + gradient scaler: asked for'
    if not native:
        message = (f'precision bf16 was asked for, but this {device.type} has no native bfloat16 '
                   '(no avx512_bf16 / amx_bf16 on CPU, or a pre-Ampere GPU): it would be emulated and much '
                   'slower than fp32. Use precision fp32 or auto.')
        if not allow_emulated:
            raise ValueError(message)
        _logger.warning(message)
        return 'bf16', 'bf16 autocast: asked for, emulated by this hardware'
    return 'bf16', 'bf16 autocast: asked for, hardware has it'


def autocast_dtype(precision: str) -> Optional[torch.dtype]:
    """Autocast dtype of a resolved precision (``None`` for ``fp32``)."""
    return _AUTOCAST_DTYPES[precision]


def to_channels_last_3d(obj: Union[nn.Module, torch.Tensor]) -> Union[nn.Module, torch.Tensor]:
    """Put a module's 5-D weights and buffers, or a 5-D tensor, in ``torch.channels_last_3d``.

    Args:
        obj: A module (converted in place and returned) or a tensor (a converted tensor is
            returned; tensors of other ranks are returned unchanged).
    """
    if isinstance(obj, torch.Tensor):
        return obj.contiguous(memory_format=torch.channels_last_3d) if obj.dim() == 5 else obj
    for module in obj.modules():
        for param in module.parameters(recurse=False):
            if param.dim() == 5:
                param.data = param.data.contiguous(memory_format=torch.channels_last_3d)
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf is not None and buf.dim() == 5:
                setattr(module, name, buf.contiguous(memory_format=torch.channels_last_3d))
    return obj
