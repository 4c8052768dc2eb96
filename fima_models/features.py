"""Feature extraction from videos with any fima_models backbone.

:func:`extract_features` cuts a video into clips, runs the backbone on batches of clips and
returns a :class:`VideoFeatures`: the features plus the frame indices and times of every clip::

    import fima_models
    model = fima_models.create_model('r2plus1d_18', pretrained=True, num_classes=0)
    feats = fima_models.extract_features(model, 'video.mp4', clip_len=16, stride=16)
    feats.features.shape       # (num_clips, 512)
    feats.start_times[0], feats.end_times[0]

Clip sampling
    Clip ``k`` covers frames ``start_k + i * step`` for ``i < clip_len`` with
    ``start_k = k * stride``; clips are taken while a whole clip fits, so a tail shorter than a
    clip is not covered. A video shorter than one clip (``(clip_len - 1) * step + 1`` frames)
    gives exactly one clip starting at frame 0, padded by repeating its last frame;
    :attr:`VideoFeatures.clip_ends` then stops at the real end of the video.

Levels and pooling
    ``clip``: one feature per clip, pooled over time and space (``avg`` by default; ``max`` or
    ``keep`` each, as mmaction2's extractor offers). ``video``: the mean of the clip features,
    accumulated batch by batch so memory stays constant however long the video is. ``dense``:
    the unpooled ``(C, T', H', W')`` map of every clip. ``layer`` picks an intermediate block
    through ``forward_intermediates`` instead of the final ``forward_features`` map, for any level.

Frames are read with :class:`fima_models.video.VideoReader` and prepared with
:class:`fima_models.transforms.EvalTransform` using the size, crop fraction and normalisation of
the model's pretrained config unless given explicitly.

:func:`prepare_inference` is the single place where a model is made ready for inference
(eval mode, device, memory format, autocast, no-grad); :class:`FeatureRunner` is what it returns.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from fima_models._utils import atomic_write_bytes
from fima_models.inference import optimize_for_inference
from fima_models.transforms import EvalTransform
from fima_models.video import VideoReader

__all__ = [
    'LEVELS', 'POOLINGS', 'AMP_DTYPES', 'VideoFeatures', 'FeatureRunner', 'FeatureAccumulator',
    'extract_features', 'prepare_inference', 'resolve_device', 'resolve_amp', 'cpu_has_native_bf16',
    'resolve_pooling', 'pool_maps', 'clip_starts', 'clip_frame_indices', 'read_clip', 'read_clips',
    'iter_clip_chunks', 'build_transform',
    'load_model', 'model_name_of', 'save_features', 'load_features', 'read_sidecar', 'sidecar_path',
    'atomic_write_bytes', 'extraction_config', 'FORMATS', 'prepare_clips', 'raw_clip_limit',
    'check_layer', 'weights_digest', 'NonFiniteFeaturesError',
]

_LOGGER = logging.getLogger(__name__)

#: Feature levels: pooled per clip, mean over the clips of a video, unpooled maps per clip.
LEVELS = ('clip', 'video', 'dense')
#: Pooling of the time or the space axes: average, maximum, or keep the axis.
POOLINGS = ('avg', 'max', 'keep')
#: Mixed-precision modes of :func:`prepare_inference`.
AMP_DTYPES: Dict[str, torch.dtype] = {'bf16': torch.bfloat16}
#: Output formats of :func:`save_features`.
FORMATS = ('npy', 'safetensors')
#: Version of the sidecar JSON written by :func:`save_features`.
SIDECAR_VERSION = 1

PathLike = Union[str, 'os.PathLike[str]']


# ---------------------------------------------------------------------------------------------
# result
# ---------------------------------------------------------------------------------------------
@dataclass
class VideoFeatures:
    """Features of one video and where every clip lies in it.

    Attributes:
        features: float32 tensor. ``clip``: ``(K, C)`` or, with kept axes, ``(K, C, T')``,
            ``(K, C, H', W')`` or ``(K, C, T', H', W')``; ``video``: the same without ``K``;
            ``dense``: ``(K, C, T', H', W')``.
        clip_starts: int64 ``(K,)`` index of the first frame of each clip.
        clip_ends: int64 ``(K,)`` one past the last real frame of each clip (exclusive).
        start_times: float64 ``(K,)`` seconds, ``clip_starts / fps``.
        end_times: float64 ``(K,)`` seconds, ``clip_ends / fps``.
        level: ``clip``, ``video`` or ``dense``.
        model_name: name of the model that produced the features.
        fps: frame rate of the frame indices.
        num_frames: frames in the video.
        padded: whether the (single) clip was padded because the video is shorter than a clip.
        config: the extraction settings (clip length, stride, step, size, pooling, layer ...).
    """
    features: torch.Tensor
    clip_starts: torch.Tensor
    clip_ends: torch.Tensor
    start_times: torch.Tensor
    end_times: torch.Tensor
    level: str
    model_name: str
    fps: float
    num_frames: int
    padded: bool = False
    config: Dict[str, Any] = field(default_factory=dict)

    @property
    def num_clips(self) -> int:
        """Number of clips the features were computed from."""
        return int(self.clip_starts.numel())

    @property
    def duration(self) -> float:
        """Duration of the video in seconds."""
        return self.num_frames / self.fps if self.fps > 0 else 0.0

    def metadata(self) -> Dict[str, Any]:
        """JSON-serialisable description: everything except the feature values."""
        return {
            'model': self.model_name,
            'level': self.level,
            'shape': list(self.features.shape),
            'dtype': 'float32',
            'fps': self.fps,
            'num_frames': self.num_frames,
            'duration': self.duration,
            'num_clips': self.num_clips,
            'padded': self.padded,
            'config': self.config,
            'clip_starts': self.clip_starts.tolist(),
            'clip_ends': self.clip_ends.tolist(),
            'start_times': self.start_times.tolist(),
            'end_times': self.end_times.tolist(),
        }

    @classmethod
    def from_metadata(cls, features: torch.Tensor, meta: Dict[str, Any]) -> VideoFeatures:
        """Rebuild a result from its feature tensor and :meth:`metadata`."""
        return cls(
            features=features,
            clip_starts=torch.tensor(meta['clip_starts'], dtype=torch.int64),
            clip_ends=torch.tensor(meta['clip_ends'], dtype=torch.int64),
            start_times=torch.tensor(meta['start_times'], dtype=torch.float64),
            end_times=torch.tensor(meta['end_times'], dtype=torch.float64),
            level=meta['level'],
            model_name=meta['model'],
            fps=float(meta['fps']),
            num_frames=int(meta['num_frames']),
            padded=bool(meta.get('padded', False)),
            config=dict(meta.get('config', {})),
        )


# ---------------------------------------------------------------------------------------------
# clip sampling and decoding
# ---------------------------------------------------------------------------------------------
def _check_sampling(clip_len: int, stride: int, step: int) -> None:
    for name, value in (('clip_len', clip_len), ('stride', stride), ('step', step)):
        if int(value) != value or value < 1:
            raise ValueError(f'{name} must be a positive integer, got {value!r}')


def clip_starts(num_frames: int, clip_len: int, stride: int, step: int = 1) -> range:
    """First frame index of every clip of a video.

    Args:
        num_frames: frames in the video (>= 1).
        clip_len: frames per clip.
        stride: frames between the starts of consecutive clips.
        step: frames between consecutive frames of a clip (temporal stride within a clip).

    Returns:
        ``range`` of start indices; ``range(0, 1)`` when the video is shorter than one clip.
    """
    _check_sampling(clip_len, stride, step)
    if num_frames < 1:
        raise ValueError(f'a video needs at least one frame to extract features, got {num_frames}')
    span = (clip_len - 1) * step + 1
    if num_frames < span:
        return range(0, 1)
    return range(0, num_frames - span + 1, stride)


def clip_frame_indices(start: int, num_frames: int, clip_len: int, step: int = 1) -> Tuple[List[int], int]:
    """Frame indices of one clip, padded by repeating the last frame of the video.

    Args:
        start: first frame of the clip.
        num_frames: frames in the video.
        clip_len: frames per clip.
        step: frames between consecutive clip frames.

    Returns:
        ``(indices, end)``: ``clip_len`` indices and one past the last real frame used.
    """
    last = num_frames - 1
    wanted = [start + i * step for i in range(clip_len)]
    real = [i for i in wanted if i <= last]
    if not real:
        raise ValueError(f'clip start {start} lies outside a video of {num_frames} frames')
    return [min(i, last) for i in wanted], real[-1] + 1


#: Most bytes of decoded frames :func:`iter_clip_chunks` holds at once (besides one clip at least).
CHUNK_BYTES = 256 * 2**20


def read_clips(
        reader: VideoReader, starts: Sequence[int], clip_len: int, step: int = 1,
) -> Tuple[torch.Tensor, List[int]]:
    """Decode several clips in one pass, padding past the end of the video with its last frame.

    The frames of all clips are fetched with one ``get_frames`` call, so the decoder seeks once per
    run of nearby clips instead of once per clip (a large saving with long keyframe intervals).

    Args:
        reader: the open video.
        starts: first frame of every clip.
        clip_len: frames per clip.
        step: frames between consecutive clip frames.

    Returns:
        ``(frames, ends)``: uint8 ``[K, clip_len, H, W, 3]`` and, per clip, one past its last real frame.
    """
    indices: List[int] = []
    ends: List[int] = []
    for start in starts:
        clip_indices, end = clip_frame_indices(start, reader.num_frames, clip_len, step)
        indices += clip_indices
        ends.append(end)
    frames = reader.get_frames(indices)
    return frames.reshape(len(ends), clip_len, *frames.shape[1:]), ends


def read_clip(reader: VideoReader, start: int, clip_len: int, step: int = 1) -> Tuple[torch.Tensor, int]:
    """Decode one clip (see :func:`read_clips`): uint8 ``[clip_len, H, W, 3]`` and its end frame."""
    frames, ends = read_clips(reader, [start], clip_len, step)
    return frames[0], ends[0]


def iter_clip_chunks(
        reader: VideoReader, clip_len: int, stride: int, step: int = 1, max_clips: int = 8,
        max_bytes: int = CHUNK_BYTES,
) -> Iterator[Tuple[torch.Tensor, List[int], List[int]]]:
    """All clips of a video, decoded ``max_clips`` at a time (fewer for large frames).

    Yields:
        ``(frames, starts, ends)``: uint8 ``[K, clip_len, H, W, 3]`` and the clips' frame ranges.
    """
    clip_bytes = clip_len * reader.height * reader.width * 3
    per_chunk = max(1, min(max_clips, max_bytes // max(clip_bytes, 1)))
    starts = list(clip_starts(reader.num_frames, clip_len, stride, step))
    for lo in range(0, len(starts), per_chunk):
        chunk = starts[lo:lo + per_chunk]
        frames, ends = read_clips(reader, chunk, clip_len, step)
        yield frames, chunk, ends


def _cfg_value(model: Optional[nn.Module], key: str) -> Any:
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    if not isinstance(cfg, dict):
        cfg = cfg.to_dict() if hasattr(cfg, 'to_dict') else vars(cfg)
    return cfg.get(key)


def build_transform(
        model: Optional[nn.Module],
        size: Optional[int] = None,
        crop_pct: Optional[float] = None,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
) -> EvalTransform:
    """Evaluation transform with the model's pretrained-config values for anything not given.

    Raises:
        ValueError: a value is neither given nor found in ``model.pretrained_cfg``.
    """
    if size is None:
        input_size = _cfg_value(model, 'input_size')
        size = int(input_size[-1]) if input_size else None
    crop_pct = crop_pct if crop_pct is not None else (_cfg_value(model, 'crop_pct') or 0.875)
    mean = mean if mean is not None else _cfg_value(model, 'mean')
    std = std if std is not None else _cfg_value(model, 'std')
    missing = [name for name, value in (('size', size), ('mean', mean), ('std', std)) if value is None]
    if missing:
        raise ValueError(
            f'the model has no pretrained config giving {", ".join(missing)}; pass '
            f'{", ".join(f"{m}=..." for m in missing)} to extract_features (or --size on the command line)')
    return EvalTransform(size=int(size), crop_pct=float(crop_pct), mean=tuple(mean), std=tuple(std))


def prepare_clips(
        clips: Union[torch.Tensor, Sequence[torch.Tensor]], transform: EvalTransform, device: torch.device,
) -> torch.Tensor:
    """Normalised float clips ``(N, 3, T, S, S)`` on ``device``.

    Args:
        clips: uint8 ``[N, T, H, W, 3]`` frames, float clips ``[N, 3, T, S, S]`` that are already
            transformed (only moved), or a list of single clips of either kind and any frame size.
        transform: the evaluation transform, run on ``device`` (on a GPU this takes the resize and
            normalisation off the CPU).
        device: where the model runs.
    """
    if isinstance(clips, torch.Tensor):
        clips = clips.to(device, non_blocking=True)
        return clips if clips.is_floating_point() else transform(clips)
    return torch.stack([prepare_clips(clip, transform, device) for clip in clips])


def raw_clip_limit(device: torch.device, clip_len: int, size: int) -> int:
    """Largest uint8 clip (in bytes) that decoding workers should ship untransformed.

    On a CPU the workers transform every clip (0), in parallel with the model. On a GPU a clip
    goes raw when its uint8 frames are no larger than the float32 clip the transform makes, so the
    device does the resize and normalisation and less data crosses process boundaries; larger
    frames (HD video) are still reduced in the workers.
    """
    return 0 if device.type == 'cpu' else 4 * 3 * clip_len * size * size


# ---------------------------------------------------------------------------------------------
# inference
# ---------------------------------------------------------------------------------------------
def resolve_device(device: Union[str, torch.device, None] = None) -> torch.device:
    """``None`` means CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if device is None:
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError('device cuda was asked for but no CUDA GPU is available; use --device cpu')
    return device


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16, AMX, or Arm BF16).

    Without it PyTorch emulates bfloat16 convolutions, which is far slower than float32.
    """
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


def resolve_amp(amp: Optional[str], device: torch.device, allow_slow: bool = False) -> Optional[torch.dtype]:
    """Autocast dtype for ``amp`` on ``device``, refusing modes the hardware would emulate.

    Args:
        amp: ``None``/``'none'`` or a key of :data:`AMP_DTYPES` (``'bf16'``).
        device: where the model runs.
        allow_slow: accept emulated bfloat16 on a CPU without native support (with a warning).

    Raises:
        ValueError: unknown mode, or bfloat16 on hardware without native support.
    """
    if amp in (None, 'none', 'fp32'):
        return None
    if amp not in AMP_DTYPES:
        raise ValueError(f'unknown amp mode {amp!r}; choose one of {sorted(AMP_DTYPES)} or none')
    dtype = AMP_DTYPES[amp]
    if device.type == 'cuda':
        if not torch.cuda.is_bf16_supported():
            raise ValueError('this GPU does not support bfloat16; drop --amp bf16')
        return dtype
    if device.type == 'cpu' and not cpu_has_native_bf16():
        message = ('this CPU has no native bfloat16 (no avx512_bf16 / amx_bf16 flag), so bf16 would be '
                   'emulated and roughly 100x slower than float32; drop --amp bf16 (float32 is faster here) '
                   'or run on a GPU with --device cuda')
        if not allow_slow:
            raise ValueError(message)
        _LOGGER.warning(message)
    return dtype


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


class FeatureRunner:
    """A model made ready for inference: ``runner(clips) -> float32 (N, C, T', H', W')`` maps.

    Build it with :func:`prepare_inference`. The call moves the batch to the device (in the
    channels-last-3d format if asked), runs under ``torch.inference_mode`` and autocast, and
    returns the final feature map or the intermediate block ``layer``.
    """

    def __init__(
            self,
            model: nn.Module,
            device: torch.device,
            amp_dtype: Optional[torch.dtype] = None,
            channels_last: bool = False,
            layer: Optional[int] = None,
    ) -> None:
        self.model = model
        self.device = device
        self.amp_dtype = amp_dtype
        self.channels_last = channels_last
        self.layer = layer

    def __call__(self, clips: torch.Tensor) -> torch.Tensor:
        """Feature maps of a batch of normalised clips ``(N, 3, T, H, W)``."""
        clips = clips.to(self.device, non_blocking=True)
        if self.channels_last:
            clips = clips.contiguous(memory_format=torch.channels_last_3d)
        with torch.inference_mode(), torch.autocast(
                device_type=self.device.type, dtype=self.amp_dtype or torch.float32,
                enabled=self.amp_dtype is not None):
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


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes and values): what its weights are.

    Two models give the same digest exactly when they compute the same function with the same
    architecture, however the weights were loaded; it identifies the weights behind saved features.
    """
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to('cpu').contiguous()
        digest.update(f'{name}|{tensor.dtype}|{tuple(tensor.shape)}|'.encode('utf-8'))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def prepare_inference(
        model: nn.Module,
        device: Union[str, torch.device, None] = None,
        amp: Optional[str] = None,
        channels_last: bool = False,
        layer: Optional[int] = None,
        allow_slow_amp: bool = False,
        optimize: bool = True,
        example_shape: Optional[Sequence[int]] = None,
) -> FeatureRunner:
    """Make ``model`` ready for inference and wrap it in a :class:`FeatureRunner`.

    This is the one place that prepares a model for extraction: eval mode, device, memory format,
    mixed precision (see :func:`resolve_amp`) and, by default, the fast inference path of
    :func:`fima_models.inference.optimize_for_inference` (an optimised copy; ``model`` itself is
    left as it is).

    Args:
        model: a fima_models backbone (timm interface on 5-D input).
        device: ``cpu``, ``cuda``, ``cuda:1`` ...; ``None`` picks CUDA when available.
        amp: ``None`` or ``'bf16'``.
        channels_last: run in the ``torch.channels_last_3d`` memory format.
        layer: index of an intermediate block (as ``forward_intermediates`` counts, negative from
            the end); ``None`` uses the final ``forward_features`` map.
        allow_slow_amp: accept emulated bfloat16 on a CPU (warns instead of raising).
        optimize: use the measured fast path for ``device`` (BatchNorm folding, memory format,
            factorised convolutions); features match plain float32 within
            :data:`fima_models.inference.FP32_TOLERANCE` (relative).
        example_shape: ``(N, C, T, H, W)`` of the clips to come, for the fast path's output check;
            ``None`` uses the model's pretrained input size.
    """
    device = resolve_device(device)
    amp_dtype = resolve_amp(amp, device, allow_slow=allow_slow_amp)
    if layer is not None and not hasattr(model, 'forward_intermediates'):
        raise ValueError(f'{type(model).__name__} has no forward_intermediates, so layer={layer} cannot be used')
    check_layer(model, layer)
    if optimize:
        model = optimize_for_inference(model, device=device, example_shape=example_shape)
        channels_last = channels_last or model.inference_plan.channels_last
    else:
        model.eval()
        model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last_3d)
    return FeatureRunner(model, device, amp_dtype=amp_dtype, channels_last=channels_last, layer=layer)


# ---------------------------------------------------------------------------------------------
# accumulation
# ---------------------------------------------------------------------------------------------
class FeatureAccumulator:
    """Collects the pooled features of one video's clips, batch by batch.

    ``clip``/``dense`` keep every clip's features; ``video`` keeps only a float64 running sum
    and a count, so its memory does not grow with the video's length.
    """

    def __init__(self, level: str) -> None:
        if level not in LEVELS:
            raise ValueError(f'unknown feature level {level!r}; choose one of {", ".join(LEVELS)}')
        self.level = level
        self._chunks: List[torch.Tensor] = []
        self._sum: Optional[torch.Tensor] = None
        self._starts: List[int] = []
        self._ends: List[int] = []

    @property
    def num_clips(self) -> int:
        """Clips added so far."""
        return len(self._starts)

    def add(self, features: torch.Tensor, starts: Sequence[int], ends: Sequence[int]) -> None:
        """Add the pooled features of consecutive clips (first dimension = clips)."""
        features = features.detach().to('cpu', torch.float32)
        if self.level == 'video':
            batch_sum = features.double().sum(dim=0)
            self._sum = batch_sum if self._sum is None else self._sum + batch_sum
        else:
            self._chunks.append(features)
        self._starts.extend(int(s) for s in starts)
        self._ends.extend(int(e) for e in ends)

    def result(
            self, model_name: str, fps: float, num_frames: int, padded: bool = False,
            config: Optional[Dict[str, Any]] = None,
    ) -> VideoFeatures:
        """The :class:`VideoFeatures` of the clips added so far."""
        if not self._starts:
            raise ValueError('no clip was added, so there are no features to return')
        if self.level == 'video':
            assert self._sum is not None
            features = (self._sum / self.num_clips).float()
        else:
            features = torch.cat(self._chunks, dim=0)
        starts = torch.tensor(self._starts, dtype=torch.int64)
        ends = torch.tensor(self._ends, dtype=torch.int64)
        return VideoFeatures(
            features=features, clip_starts=starts, clip_ends=ends,
            start_times=starts.double() / fps, end_times=ends.double() / fps,
            level=self.level, model_name=model_name, fps=float(fps), num_frames=int(num_frames),
            padded=padded, config=dict(config or {}),
        )


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------
def load_model(name_or_dir: str, pretrained: bool = True, seed: int = 0) -> nn.Module:
    """Create a backbone (without classifier) from a model name or a converted model folder.

    A randomly initialised model (``pretrained=False``) is built under ``torch.manual_seed(seed)``
    (without touching the caller's random state), so every run and every rank of a distributed
    extraction computes the same features.

    Args:
        name_or_dir: a registered name or alias (``r2plus1d_18``, ``i3d_fima``), ``hf-hub:...``,
            ``local-dir:...``, or an existing folder written by ``fima-models convert``.
        pretrained: load the weights of a named model (a folder always brings its weights).
        seed: seed of the random initialisation.
    """
    from fima_models._factory import create_model

    if os.path.isdir(name_or_dir):
        return create_model(f'local-dir:{name_or_dir}', pretrained=True, num_classes=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(name_or_dir, pretrained=pretrained, num_classes=0)


def model_name_of(model: nn.Module) -> str:
    """``arch.tag`` of a timm model from its pretrained config, else its class name."""
    arch = _cfg_value(model, 'architecture')
    tag = _cfg_value(model, 'tag')
    if arch:
        return f'{arch}.{tag}' if tag else str(arch)
    return type(model).__name__


# ---------------------------------------------------------------------------------------------
# the Python API
# ---------------------------------------------------------------------------------------------
def extraction_config(
        clip_len: int, stride: int, step: int, level: str, spatial_pool: str, temporal_pool: str,
        layer: Optional[int], transform: EvalTransform, fps: Optional[float], amp: Optional[str],
) -> Dict[str, Any]:
    """The settings that determine the feature values, as recorded next to every output."""
    return {
        'clip_len': clip_len, 'stride': stride, 'step': step, 'level': level,
        'spatial_pool': spatial_pool, 'temporal_pool': temporal_pool, 'layer': layer,
        'size': int(transform.size), 'crop_pct': float(transform.crop_pct),
        'mean': [float(v) for v in transform.mean], 'std': [float(v) for v in transform.std],
        'fps': fps, 'amp': amp if amp not in (None, 'none', 'fp32') else None,
    }


def extract_features(
        model: Union[nn.Module, str],
        video: Union[PathLike, VideoReader],
        clip_len: int = 16,
        stride: int = 16,
        step: int = 1,
        level: str = 'clip',
        spatial_pool: Optional[str] = None,
        temporal_pool: Optional[str] = None,
        layer: Optional[int] = None,
        size: Optional[int] = None,
        crop_pct: Optional[float] = None,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        fps: Optional[float] = None,
        batch_size: int = 8,
        device: Union[str, torch.device, None] = None,
        amp: Optional[str] = None,
        channels_last: bool = False,
        pretrained: bool = True,
        progress: bool = False,
        optimize: bool = True,
) -> VideoFeatures:
    """Extract features of one video, clip by clip, in constant memory.

    Clips are decoded and run ``batch_size`` at a time, so only one batch of frames is held;
    ``level='video'`` also keeps only a running sum of the clip features. The model is switched to
    eval mode and moved to ``device`` (see :func:`prepare_inference`).

    Args:
        model: a backbone, or a name / folder for :func:`load_model`.
        video: a video file or an open :class:`~fima_models.video.VideoReader`.
        clip_len: frames per clip.
        stride: frames between the starts of consecutive clips.
        step: frames between consecutive frames of a clip (temporal stride within a clip).
        level: ``clip`` (pooled per clip), ``video`` (mean of the clips) or ``dense`` (maps).
        spatial_pool: ``avg`` (default), ``max`` or ``keep`` over height and width.
        temporal_pool: ``avg`` (default), ``max`` or ``keep`` over time.
        layer: intermediate block to read (``forward_intermediates`` index); ``None`` = last map.
        size: crop size; default from the model's pretrained config.
        crop_pct: centre-crop fraction; default from the config (else 0.875).
        mean: normalisation mean; default from the config.
        std: normalisation std; default from the config.
        fps: resample the video to this frame rate first (``None`` keeps its own frames); for a
            ``VideoReader``, open it with ``VideoReader(path, fps=...)`` instead.
        batch_size: clips per forward pass.
        device: ``cpu``/``cuda``; ``None`` keeps a given model where its parameters are, and puts
            a model loaded by name on CUDA when available.
        amp: ``'bf16'`` for bfloat16 autocast (refused on CPUs that would emulate it).
        channels_last: use the channels-last-3d memory format.
        pretrained: when ``model`` is a name, load its pretrained weights.
        progress: show a tqdm bar over the clips.
        optimize: run the fast inference path (see :func:`prepare_inference`); ``False`` runs the
            model exactly as given.

    Returns:
        :class:`VideoFeatures` with the features and every clip's frames and times.

    Raises:
        ValueError: invalid options.
        FileNotFoundError: the video does not exist.
        fima_models.video.VideoDecodeError: the video cannot be decoded.
    """
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    _check_sampling(clip_len, stride, step)
    spatial, temporal = resolve_pooling(level, spatial_pool, temporal_pool)
    if isinstance(model, str):
        model_name = model
        model = load_model(model, pretrained=pretrained)
    else:
        model_name = model_name_of(model)
        if device is None:
            device = next((p.device for p in model.parameters()), None)
    transform = build_transform(model, size, crop_pct, mean, std)
    runner = prepare_inference(model, device=device, amp=amp, channels_last=channels_last, layer=layer,
                               optimize=optimize, example_shape=(1, 3, clip_len, transform.size, transform.size))
    own_reader = not isinstance(video, VideoReader)
    if not own_reader and fps is not None and fps != video.target_fps:
        raise ValueError(f'fps={fps} applies when the video is opened; pass a path, or VideoReader(path, fps={fps})')
    reader = VideoReader(video, fps=fps) if own_reader else video
    config = extraction_config(clip_len, stride, step, level, spatial, temporal, layer, transform,
                               reader.target_fps, amp)

    starts = clip_starts(reader.num_frames, clip_len, stride, step)
    accumulator = FeatureAccumulator(level)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(starts), unit='clip', desc=Path(str(reader.path)).name, dynamic_ncols=True)
    try:
        for frames, batch_starts, batch_ends in iter_clip_chunks(reader, clip_len, stride, step, batch_size):
            maps = runner(prepare_clips(frames, transform, runner.device))
            accumulator.add(pool_maps(maps, spatial, temporal), batch_starts, batch_ends)
            if bar is not None:
                bar.update(len(batch_starts))
    finally:
        if bar is not None:
            bar.close()
        if own_reader:
            reader.close()
    padded = reader.num_frames < (clip_len - 1) * step + 1
    return accumulator.result(model_name, reader.fps, reader.num_frames, padded=padded, config=config)


# ---------------------------------------------------------------------------------------------
# saving and loading
# ---------------------------------------------------------------------------------------------
class NonFiniteFeaturesError(ValueError):
    """Features hold NaN or infinite values, so they are not saved as a finished result."""


def sidecar_path(path: PathLike) -> Path:
    """The JSON sidecar of a feature file: ``x.npy`` -> ``x.npy.json``."""
    path = Path(path)
    return path.with_name(path.name + '.json')


def _features_bytes(result: VideoFeatures, fmt: str) -> bytes:
    features = result.features.detach().to('cpu', torch.float32).contiguous()
    if fmt == 'npy':
        buffer = io.BytesIO()
        np.save(buffer, features.numpy(), allow_pickle=False)
        return buffer.getvalue()
    from safetensors.torch import save

    tensors = {
        'features': features,
        'clip_starts': result.clip_starts.contiguous(),
        'clip_ends': result.clip_ends.contiguous(),
        'start_times': result.start_times.contiguous(),
        'end_times': result.end_times.contiguous(),
    }
    return save(tensors, metadata={'fima_models.features': json.dumps(result.metadata())})


def save_features(result: VideoFeatures, path: PathLike, extra: Optional[Dict[str, Any]] = None) -> Path:
    """Save features as ``.npy`` or ``.safetensors`` plus a ``.json`` sidecar, atomically.

    The feature file is written first and the sidecar last, each through a temp file and a rename;
    the sidecar records the feature file's size, so a feature file without a matching sidecar is
    never taken as finished (see :func:`read_sidecar`). ``.safetensors`` files also carry the clip
    tensors and the metadata themselves.

    Args:
        result: the features to save.
        path: ``*.npy`` or ``*.safetensors``.
        extra: more JSON-serialisable fields for the sidecar.

    Returns:
        The sidecar path.

    Raises:
        NonFiniteFeaturesError: the features hold NaN or infinite values (nothing is written).
        OSError: the files cannot be written; earlier files of the same name stay as they were.
    """
    path = Path(path)
    fmt = path.suffix.lstrip('.')
    if fmt not in FORMATS:
        raise ValueError(f"feature file must end in .npy or .safetensors, got '{path.name}'")
    if not bool(torch.isfinite(result.features).all()):
        bad = int((~torch.isfinite(result.features)).sum())
        raise NonFiniteFeaturesError(
            f'the features for {path.name} hold {bad} NaN or infinite values of {result.features.numel()}; nothing '
            'was saved. The weights are probably damaged (check them with fima_models.checkpoint.require_finite) '
            'or the input is out of range')
    data = _features_bytes(result, fmt)
    atomic_write_bytes(path, data)
    sidecar = {
        'version': SIDECAR_VERSION, 'complete': True, 'file': path.name, 'format': fmt,
        'bytes': len(data), **result.metadata(), **(extra or {}),
    }
    side = sidecar_path(path)
    atomic_write_bytes(side, json.dumps(sidecar, indent=1).encode('utf-8'))
    return side


def read_sidecar(path: PathLike) -> Optional[Dict[str, Any]]:
    """The sidecar of a finished feature file, or ``None`` when it is missing or not finished.

    Finished means: the sidecar parses, says ``complete``, and the feature file exists with the
    recorded size. Temp files and half-written outputs therefore never count.
    """
    path = Path(path)
    side = sidecar_path(path)
    try:
        meta = json.loads(side.read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or not meta.get('complete') or meta.get('file') != path.name:
        return None
    try:
        if path.stat().st_size != meta.get('bytes'):
            return None
    except OSError:
        return None
    return meta


def load_features(path: PathLike) -> VideoFeatures:
    """Load a feature file written by :func:`save_features` (or ``fima-models extract``).

    Raises:
        FileNotFoundError: the file or its sidecar is missing or unfinished.
    """
    path = Path(path)
    meta = read_sidecar(path)
    if meta is None:
        raise FileNotFoundError(
            f"'{path}' is missing or unfinished (no complete sidecar {sidecar_path(path).name}); "
            'run the extraction again to finish it')
    if path.suffix == '.npy':
        features = torch.from_numpy(np.load(path, allow_pickle=False))
    else:
        from safetensors.torch import load_file

        features = load_file(str(path))['features']
    return VideoFeatures.from_metadata(features, meta)
