"""The model side of extraction: a model made ready for inference, run on batches, its maps pooled.

:func:`prepare_inference` is the single place where a model is made ready for extraction (eval
mode, device, memory format, precision, the fast inference path); :class:`FeatureRunner` is what
it returns, and :func:`pool_maps` pools its ``(N, C, T, H, W)`` maps as a level asks.
"""
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn

from fima_models._utils import autocast_dtype, has_native_bf16, resolve_device, resolve_precision, to_channels_last_3d
from fima_models.inference import optimize_for_inference

__all__ = ['LEVELS', 'POOLINGS', 'resolve_pooling', 'pool_maps', 'FeatureRunner', 'check_layer', 'prepare_inference']

#: Feature levels: pooled per clip, mean over the clips of a video, unpooled maps per clip.
LEVELS = ('clip', 'video', 'dense')
#: Pooling of the time or the space axes: average, maximum, or keep the axis.
POOLINGS = ('avg', 'max', 'keep')


def resolve_pooling(level: str, spatial_pool: Optional[str], temporal_pool: Optional[str]) -> Tuple[str, str]:
    """Pooling of space and time for a level; ``None`` means the level's default.

    Raises:
        ValueError: unknown level or pooling, or pooling asked for with ``dense``.
    """
    if level not in LEVELS:
        raise ValueError(f'unknown feature level {level!r}; choose one of {", ".join(LEVELS)}')
    for name, value in (('spatial_pool', spatial_pool), ('temporal_pool', temporal_pool)):
        if value is not None and value not in POOLINGS:
            raise ValueError(f'unknown {name} {value!r}; choose one of {", ".join(POOLINGS)}')
    if level == 'dense':
        if (spatial_pool or 'keep') != 'keep' or (temporal_pool or 'keep') != 'keep':
            raise ValueError("level 'dense' keeps the full maps; use level 'clip' to pool time or space")
        return 'keep', 'keep'
    return spatial_pool or 'avg', temporal_pool or 'avg'


def pool_maps(maps: torch.Tensor, spatial: str = 'avg', temporal: str = 'avg') -> torch.Tensor:
    """Pool ``(N, C, T, H, W)`` maps over time and/or space.

    Returns:
        ``(N, C)``, ``(N, C, T)``, ``(N, C, H, W)`` or the maps unchanged, depending on which
        axes are kept.
    """
    if maps.ndim != 5:
        raise ValueError(f'expected (N, C, T, H, W) feature maps, got shape {tuple(maps.shape)}')
    ops = {'avg': lambda x, dims: x.mean(dim=dims), 'max': lambda x, dims: x.amax(dim=dims)}
    if temporal != 'keep' and spatial != 'keep' and temporal == spatial:
        return ops[temporal](maps, (2, 3, 4))
    if spatial != 'keep':
        maps = ops[spatial](maps, (3, 4))
    if temporal != 'keep':
        maps = ops[temporal](maps, (2,))
    return maps


@dataclass
class FeatureRunner:
    """A model made ready for inference: ``runner(clips) -> float32 (N, C, T', H', W')`` maps.

    Build it with :func:`prepare_inference`. The call moves the batch to the device (in the
    channels-last-3d format if asked), runs under ``torch.inference_mode`` and autocast, and
    returns the final feature map or the intermediate block ``layer``.

    Attributes:
        model: the prepared model.
        device: where it runs.
        precision: ``'fp32'`` or ``'bf16'`` (bfloat16 autocast), as resolved.
        channels_last: feed the clips in the channels-last-3d format.
        layer: intermediate block to read; ``None`` for the final ``forward_features`` map.
    """
    model: nn.Module
    device: torch.device
    precision: str = 'fp32'
    channels_last: bool = False
    layer: Optional[int] = None

    def __call__(self, clips: torch.Tensor) -> torch.Tensor:
        """Feature maps of a batch of normalised clips ``(N, 3, T, H, W)``."""
        clips = clips.to(self.device, non_blocking=True)
        if self.channels_last:
            clips = to_channels_last_3d(clips)
        dtype = autocast_dtype(self.precision)
        with torch.inference_mode(), torch.autocast(
                device_type=self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            if self.layer is None:
                maps = self.model.forward_features(clips)
            else:
                maps = self.model.forward_intermediates(clips, indices=[self.layer], intermediates_only=True)[0]
        if maps.ndim != 5:
            raise RuntimeError(
                f'{type(self.model).__name__} returned a {maps.ndim}-D feature map; feature extraction '
                'needs a video backbone whose forward_features returns (N, C, T, H, W)')
        return maps.float()


def check_layer(model: nn.Module, layer: Optional[int]) -> None:
    """Refuse a ``layer`` index the model does not have, naming the valid ones.

    Raises:
        ValueError: ``layer`` is not an integer in ``-N .. N-1`` for a model with ``N`` blocks.
    """
    if layer is None:
        return
    blocks = len(getattr(model, 'feature_info', None) or [])
    if isinstance(layer, bool) or not isinstance(layer, int) or (blocks and not -blocks <= layer < blocks):
        valid = f'0..{blocks - 1} (or -{blocks}..-1 from the end)' if blocks else 'an integer'
        raise ValueError(f'layer={layer!r} does not exist in {type(model).__name__}: it has {blocks} blocks; '
                         f'choose {valid}, or omit it for the final map')


def prepare_inference(
        model: nn.Module,
        device: Union[str, torch.device, None] = None,
        precision: str = 'fp32',
        channels_last: bool = False,
        layer: Optional[int] = None,
        allow_emulated: bool = False,
        optimize: bool = True,
        example_shape: Optional[Sequence[int]] = None,
) -> FeatureRunner:
    """Make ``model`` ready for inference and wrap it in a :class:`FeatureRunner`.

    This is the one place that prepares a model for extraction: eval mode, device, memory format,
    precision (see :func:`fima_models._utils.resolve_precision`) and, by default, the fast
    inference path of :func:`fima_models.inference.optimize_for_inference` (an optimised copy;
    ``model`` itself is left as it is).

    Args:
        model: a fima_models backbone (timm interface on 5-D input).
        device: ``cpu``, ``cuda``, ``cuda:1`` ...; ``None`` picks CUDA when available.
        precision: ``'fp32'``, ``'bf16'`` (bfloat16 autocast) or ``'auto'`` (bfloat16 where the
            hardware computes it natively).
        channels_last: run in the ``torch.channels_last_3d`` memory format.
        layer: index of an intermediate block (as ``forward_intermediates`` counts, negative from
            the end); ``None`` uses the final ``forward_features`` map.
        allow_emulated: accept ``bf16`` on hardware that emulates it (warns instead of raising).
        optimize: use the measured fast path for ``device`` (BatchNorm folding, memory format,
            factorised convolutions); features match plain float32 within
            :data:`fima_models.inference.FP32_TOLERANCE` (relative).
        example_shape: ``(N, C, T, H, W)`` of the clips to come, for the fast path's output check;
            ``None`` uses the model's pretrained input size.

    Raises:
        ValueError: an unknown precision, ``bf16`` where it would be emulated (unless
            ``allow_emulated``), or a ``layer`` the model does not have.
    """
    device = resolve_device(device)
    resolved, _ = resolve_precision(precision, device, allow_emulated=allow_emulated)
    if layer is not None and not hasattr(model, 'forward_intermediates'):
        raise ValueError(f'{type(model).__name__} has no forward_intermediates, so layer={layer} cannot be used')
    check_layer(model, layer)
    if optimize:
        # native bf16: the bf16 plan (weights stored in bf16, no per-layer casts); emulated bf16 keeps the
        # fp32 plan under autocast, as asked
        plan_precision = 'bf16' if resolved == 'bf16' and has_native_bf16(device) else 'fp32'
        model = optimize_for_inference(model, device=device, example_shape=example_shape, precision=plan_precision)
        channels_last = channels_last or model.inference_plan.channels_last
    else:
        model.eval()
        model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last_3d)
    return FeatureRunner(model, device, precision=resolved, channels_last=channels_last, layer=layer)
