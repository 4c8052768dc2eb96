"""The settings of a many-video run and what they resolve to before any video is touched."""
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch
from torch import nn

from fima_models._utils import has_native_bf16, resolve_device, resolve_precision
from fima_models.extract.api import extraction_config
from fima_models.extract.clips import build_transform
from fima_models.extract.crops import MultiCropTransform, check_crops, crop_transform
from fima_models.extract.loading import load_model
from fima_models.extract.runner import check_layer, resolve_pooling
from fima_models.extract.storage import weights_digest
from fima_models.inference import BF16_TOLERANCE
from fima_models.transforms import EvalTransform

__all__ = ['ExtractionSettings', 'ExtractionSetup', 'prepare_setup']

_logger = logging.getLogger(__name__)


@dataclass
class ExtractionSettings:
    """What to extract from which videos, and how: the options of ``fima-models extract``.

    Attributes:
        inputs: video files, folders and list files (see :mod:`fima_models.extract.inputs`).
        out: the output folder.
        model: model name, alias, ``hf-hub:``/``local-dir:`` source or converted model folder.
        pretrained: load the pretrained weights of a named model.
        clip_len, stride, step, fps, size, level, spatial_pool, temporal_pool, layer, crops,
            crop_pool: as for :func:`fima_models.extract_features`.
        format: ``npy`` or ``safetensors``.
        batch_size: clips per forward pass (views, with ``crops`` > 1).
        workers: decoding worker processes (0: decode in this process).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``None`` (CUDA when available).
        precision: ``fp32``, ``bf16`` or ``auto``.
        channels_last: run in the channels-last-3d memory format.
        optimize: the measured fast inference path (and the allocator setting it recommends).
        overwrite: extract again even when an output is finished.
        progress: show a progress bar (rank 0 only).
    """
    inputs: Sequence[str]
    out: Path
    model: str
    pretrained: bool = True
    clip_len: int = 16
    stride: int = 16
    step: int = 1
    fps: Optional[float] = None
    size: Optional[int] = None
    level: str = 'clip'
    spatial_pool: Optional[str] = None
    temporal_pool: Optional[str] = None
    layer: Optional[int] = None
    crops: int = 1
    crop_pool: str = 'keep'
    format: str = 'npy'
    batch_size: int = 8
    workers: int = 2
    device: Optional[str] = None
    precision: str = 'fp32'
    channels_last: bool = False
    optimize: bool = True
    overwrite: bool = False
    progress: bool = True


@dataclass
class ExtractionSetup:
    """A run's settings resolved: device, precision, pooling, the model and transform, what is recorded.

    Attributes:
        config: :func:`~fima_models.extract.api.extraction_config`, in every sidecar and the summary.
        fingerprint: what produced a result (weights digest, model argument, every setting); a
            finished output is reused only when its sidecar records the same.
    """
    settings: ExtractionSettings
    device: torch.device
    precision: str
    spatial: str
    temporal: str
    model: nn.Module
    transform: Union[EvalTransform, MultiCropTransform]
    config: Dict[str, Any]
    fingerprint: Dict[str, Any]


def prepare_setup(settings: ExtractionSettings, world_size: int = 1, local_rank: int = 0) -> ExtractionSetup:
    """Check and resolve the settings and load the model, before any input is read.

    Under torchrun a plain ``cuda`` device becomes GPU ``local_rank``.

    Raises:
        ValueError: a setting is invalid (precision, pooling, layer, device).
    """
    device = resolve_device(settings.device)
    if device.type == 'cuda' and device.index is None and world_size > 1:
        device = torch.device('cuda', local_rank)
    precision, _ = resolve_precision(settings.precision, device)  # refuse before spending time on the model
    if precision == 'fp32' and has_native_bf16(device):
        _logger.info('extracting in fp32 on %s, which computes bfloat16 natively: --precision bf16 (or auto) would be '
                     'faster, with features within %g of fp32 (relative to their largest magnitude)',
                     device, BF16_TOLERANCE)
    spatial, temporal = resolve_pooling(settings.level, settings.spatial_pool, settings.temporal_pool)
    check_crops(settings.crops, settings.crop_pool)
    model = load_model(settings.model, pretrained=settings.pretrained)
    check_layer(model, settings.layer)
    transform = crop_transform(build_transform(model, size=settings.size), settings.crops)
    config = extraction_config(settings.clip_len, settings.stride, settings.step, settings.level, spatial, temporal,
                               settings.layer, transform, settings.fps, precision, settings.crops, settings.crop_pool)
    # what produced a result: the weights themselves (not their name), every setting, and the code path;
    # one crop leaves the crop settings out, so folders extracted before multi-crop existed still resume
    settings_part = {k: v for k, v in config.items() if settings.crops > 1 or k not in ('crops', 'crop_pool')}
    fingerprint = json.loads(json.dumps({
        'model': settings.model, 'weights_sha256': weights_digest(model), 'pretrained': bool(settings.pretrained),
        'format': settings.format, 'optimize': bool(settings.optimize), **settings_part}))
    return ExtractionSetup(settings, device, precision, spatial, temporal, model, transform, config, fingerprint)
