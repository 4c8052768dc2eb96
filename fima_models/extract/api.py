"""The Python API of feature extraction: :func:`extract_features` and its result, :class:`VideoFeatures`.

:func:`extract_features` cuts a video into clips, runs the backbone on batches of clips and
returns a :class:`VideoFeatures`: the features plus the frame indices and times of every clip::

    import fima_models
    model = fima_models.create_model('r2plus1d_18', pretrained=True, num_classes=0)
    feats = fima_models.extract_features(model, 'video.mp4', clip_len=16, stride=16)
    feats.features.shape       # (num_clips, 512)
    feats.start_times[0], feats.end_times[0]

Levels and pooling
    ``clip``: one feature per clip, pooled over time and space (``avg`` by default; ``max`` or
    ``keep`` each, as mmaction2's extractor offers). ``video``: the mean of the clip features,
    accumulated batch by batch so memory stays constant however long the video is. ``dense``:
    the unpooled ``(C, T', H', W')`` map of every clip. ``layer`` picks an intermediate block
    through ``forward_intermediates`` instead of the final ``forward_features`` map, for any level.

Crops
    ``crops=3`` or ``10`` takes several views of every clip (:mod:`fima_models.extract.crops`):
    the features gain a crops axis right after the clips axis (``(K, V, C)`` per clip, ``(V, C)``
    for ``video``, ``(K, V, C, T', H', W')`` for ``dense``), or ``crop_pool='mean'`` averages it
    away. ``crops=1`` (the default) is the centre crop, with no crops axis.

Clips are planned as :mod:`fima_models.extract.clips` describes, read with
:class:`fima_models.video.VideoReader` and prepared with :class:`fima_models.transforms.EvalTransform`
using the size, crop fraction and normalisation of the model's pretrained config unless given.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from fima_models.extract.clips import (
    build_transform, check_sampling, clip_starts, is_padded, iter_clip_chunks, prepare_clips,
)
from fima_models.extract.crops import (
    MultiCropTransform, check_crops, crop_metadata, crop_transform, run_pooled, views_per_batch,
)
from fima_models.extract.loading import load_model, model_name_of
from fima_models.extract.runner import LEVELS, prepare_inference, resolve_pooling
from fima_models.transforms import EvalTransform
from fima_models.video import VideoReader

__all__ = ['VideoFeatures', 'FeatureAccumulator', 'extraction_config', 'extract_features']

PathLike = Union[str, 'os.PathLike[str]']


@dataclass
class VideoFeatures:
    """Features of one video and where every clip lies in it.

    Attributes:
        features: float32 tensor. ``clip``: ``(K, C)`` or, with kept axes, ``(K, C, T')``,
            ``(K, C, H', W')`` or ``(K, C, T', H', W')``; ``video``: the same without ``K``;
            ``dense``: ``(K, C, T', H', W')``. With ``crops`` > 1 kept, a crops axis ``V`` follows
            the clips axis (``video``: leads).
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
        crops: the views of every clip: ``count``, ``pool``, ``resized_size`` ``[H, W]`` and
            ``boxes`` (each ``{'name', 'box': [x1, y1, x2, y2], 'flip'}`` in resized-frame pixels).
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
    crops: Dict[str, Any] = field(default_factory=dict)

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
            'crops': self.crops,
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
            crops=dict(meta.get('crops', {})),
        )


class FeatureAccumulator:
    """Collects the pooled features of one video's clips, batch by batch, into a :class:`VideoFeatures`.

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
            config: Optional[Dict[str, Any]] = None, crops: Optional[Dict[str, Any]] = None,
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
            padded=padded, config=dict(config or {}), crops=dict(crops or {}),
        )


def extraction_config(
        clip_len: int, stride: int, step: int, level: str, spatial_pool: str, temporal_pool: str,
        layer: Optional[int], transform: Union[EvalTransform, MultiCropTransform], fps: Optional[float],
        precision: str, crops: int = 1, crop_pool: str = 'keep',
) -> Dict[str, Any]:
    """The settings that determine the feature values, as recorded next to every output.

    ``precision`` is the resolved one (``'fp32'`` or ``'bf16'``), not ``'auto'``.
    """
    return {
        'clip_len': clip_len, 'stride': stride, 'step': step, 'level': level,
        'spatial_pool': spatial_pool, 'temporal_pool': temporal_pool, 'layer': layer,
        'size': int(transform.size), 'crop_pct': float(transform.crop_pct),
        'mean': [float(v) for v in transform.mean], 'std': [float(v) for v in transform.std],
        'fps': fps, 'precision': precision, 'crops': crops, 'crop_pool': crop_pool,
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
        precision: str = 'fp32',
        channels_last: bool = False,
        pretrained: bool = True,
        progress: bool = False,
        optimize: bool = True,
        crops: int = 1,
        crop_pool: str = 'keep',
) -> VideoFeatures:
    """Extract features of one video, clip by clip, in constant memory.

    Clips are decoded and run ``batch_size`` at a time, so only one batch of frames is held;
    ``level='video'`` also keeps only a running sum of the clip features. The model is switched to
    eval mode and moved to ``device`` (see :func:`~fima_models.extract.runner.prepare_inference`).

    Args:
        model: a backbone, or a name / folder for :func:`~fima_models.extract.loading.load_model`.
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
        precision: ``'fp32'`` (default), ``'bf16'`` (bfloat16 autocast; refused on hardware that
            would emulate it) or ``'auto'`` (bfloat16 only where the hardware computes it natively).
        channels_last: use the channels-last-3d memory format.
        pretrained: when ``model`` is a name, load its pretrained weights.
        progress: show a tqdm bar over the clips.
        optimize: run the fast inference path (see
            :func:`~fima_models.extract.runner.prepare_inference`); ``False`` runs the model
            exactly as given.
        crops: views per clip: 1 (centre), 3 (along the long side) or 10 (corners and centre,
            then their mirror images); see :mod:`fima_models.extract.crops` for boxes and order.
            ``batch_size`` then counts views: a forward pass holds ``batch_size // crops`` clips
            (at least one; a clip's views are split into passes of ``batch_size``).
        crop_pool: ``'keep'`` the crops axis or take its ``'mean'``.

    Returns:
        :class:`VideoFeatures` with the features and every clip's frames and times.

    Raises:
        ValueError: invalid options.
        FileNotFoundError: the video does not exist.
        fima_models.video.VideoDecodeError: the video cannot be decoded.
    """
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    check_sampling(clip_len, stride, step)
    check_crops(crops, crop_pool)
    spatial, temporal = resolve_pooling(level, spatial_pool, temporal_pool)
    if isinstance(model, str):
        model_name = model
        model = load_model(model, pretrained=pretrained)
    else:
        model_name = model_name_of(model)
        if device is None:
            device = next((p.device for p in model.parameters()), None)
    transform = crop_transform(build_transform(model, size, crop_pct, mean, std), crops)
    runner = prepare_inference(model, device=device, precision=precision, channels_last=channels_last, layer=layer,
                               optimize=optimize, example_shape=(1, 3, clip_len, transform.size, transform.size))
    own_reader = not isinstance(video, VideoReader)
    if not own_reader and fps is not None and fps != video.target_fps:
        raise ValueError(f'fps={fps} applies when the video is opened; pass a path, or VideoReader(path, fps={fps})')
    reader = VideoReader(video, fps=fps) if own_reader else video
    config = extraction_config(clip_len, stride, step, level, spatial, temporal, layer, transform,
                               reader.target_fps, runner.precision, crops, crop_pool)

    accumulator = FeatureAccumulator(level)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(clip_starts(reader.num_frames, clip_len, stride, step)), unit='clip',
                   desc=Path(str(reader.path)).name, dynamic_ncols=True)
    try:
        for frames, batch_starts, batch_ends in iter_clip_chunks(reader, clip_len, stride, step,
                                                                 views_per_batch(batch_size, crops)):
            clips = prepare_clips(frames, transform, runner.device)
            accumulator.add(run_pooled(runner, clips, spatial, temporal, batch_size, crop_pool),
                            batch_starts, batch_ends)
            if bar is not None:
                bar.update(len(batch_starts))
    finally:
        if bar is not None:
            bar.close()
        if own_reader:
            reader.close()
    padded = is_padded(reader.num_frames, clip_len, step)
    return accumulator.result(model_name, reader.fps, reader.num_frames, padded=padded, config=config,
                              crops=crop_metadata(transform, reader.height, reader.width, crop_pool))
