"""Clip samplers: which frames of a video make a training or test sample.

A sampler is called as ``sampler(reader, generator)`` with a
:class:`~fima_models.video.VideoReader` and an optional :class:`torch.Generator`
and returns uint8 frames:

* :class:`RandomClipSampler` -> ``[T, H, W, 3]`` (one clip at a random time; training)
* :class:`UniformClipSampler` -> ``[K, T, H, W, 3]`` (K clips evenly over the video; testing)

(FIMA pretraining's pair of clips is ``train.fima.views.FimaClipPairSampler``.)

``clip_len`` is the number of frames in a clip, ``num_frames`` the number of frames in a
video. Short videos (fewer frames than a clip spans) never fail. ``short="repeat"``
(default) repeats the last frame to fill the clip; ``short="loop"`` wraps around to
the first frame. Each sampler also exposes ``indices(num_frames, generator)`` that
returns the frame indices without decoding, for inspection and tests.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from fima_models._utils import clip_span
from fima_models.video import VideoReader

__all__ = ["ClipSampler", "StridedClipSampler", "RandomClipSampler", "UniformClipSampler", "clip_indices"]

_SHORT_MODES = ("repeat", "loop")


def _check_short(short: str) -> None:
    if short not in _SHORT_MODES:
        raise ValueError(f"short must be one of {_SHORT_MODES}, got '{short}'")


def clip_indices(start: int, clip_len: int, step: int, num_frames: int, short: str = "repeat") -> np.ndarray:
    """Frame indices ``start, start + step, ...`` made valid for a video of ``num_frames`` frames.

    Args:
        start: first index (>= 0).
        clip_len: clip length T.
        step: stride between frames.
        num_frames: frames in the video (>= 1).
        short: what to do past the end: ``"repeat"`` the last frame or ``"loop"`` to the start.

    Returns:
        int64 array of T indices in ``[0, num_frames)``.
    """
    _check_short(short)
    if num_frames < 1:
        raise ValueError("a video needs at least one frame")
    idx = start + step * np.arange(clip_len, dtype=np.int64)
    if short == "loop":
        return idx % num_frames
    return np.minimum(idx, num_frames - 1)


class ClipSampler(ABC):
    """Base class: turns a reader into uint8 frames via :meth:`indices`."""

    @abstractmethod
    def indices(self, num_frames: int, generator: torch.Generator | None = None) -> np.ndarray:
        """Frame indices to decode for a video of ``num_frames`` frames."""

    def __call__(self, reader: VideoReader, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode the sampled frames of ``reader`` (one decode pass, one seek per distant clip)."""
        idx = self.indices(reader.num_frames, generator)
        frames = reader.get_frames(idx.reshape(-1))
        return frames.reshape(*idx.shape, *frames.shape[1:])


class StridedClipSampler(ClipSampler):
    """Base of the samplers whose clips are ``clip_len`` frames taken every ``step`` frames.

    Args:
        clip_len: clip length T.
        step: stride between sampled frames.
        short: ``"repeat"`` (last frame) or ``"loop"`` for videos shorter than the clip span.
    """

    def __init__(self, clip_len: int = 16, step: int = 1, short: str = "repeat") -> None:
        if clip_len < 1 or step < 1:
            raise ValueError(f"clip_len and step must be >= 1, got {clip_len}, {step}")
        _check_short(short)
        self.clip_len, self.step, self.short = clip_len, step, short

    @property
    def span(self) -> int:
        """Frames a clip covers in the source video."""
        return clip_span(self.clip_len, self.step)

    def last_start(self, num_frames: int) -> int:
        """Latest start whose clip fits a video of ``num_frames`` frames (0 when none fits)."""
        return max(num_frames - self.span, 0)

    def clip_at(self, start: int, num_frames: int) -> np.ndarray:
        """Indices of the clip starting at ``start`` in a video of ``num_frames`` frames."""
        return clip_indices(start, self.clip_len, self.step, num_frames, self.short)

    def random_clip(self, num_frames: int, generator: torch.Generator | None = None) -> np.ndarray:
        """Indices of a clip at a start drawn uniformly from ``[0, last_start]``."""
        start = int(torch.randint(0, self.last_start(num_frames) + 1, (1,), generator=generator))
        return self.clip_at(start, num_frames)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(clip_len={self.clip_len}, step={self.step}, short='{self.short}')"


class RandomClipSampler(StridedClipSampler):
    """One clip of ``clip_len`` frames with stride ``step`` at a uniformly random start.

    Args:
        clip_len: clip length T.
        step: stride between sampled frames.
        short: ``"repeat"`` (last frame) or ``"loop"`` for videos shorter than the clip span.
    """

    def indices(self, num_frames: int, generator: torch.Generator | None = None) -> np.ndarray:
        return self.random_clip(num_frames, generator)


class UniformClipSampler(StridedClipSampler):
    """``num_clips`` clips with starts evenly spaced from the first to the last valid start.

    Deterministic: the generator is ignored. Spatial crops (e.g. three-crop) are the
    transform's job.

    Args:
        num_clips: clips per video K.
        clip_len: clip length T.
        step: stride between frames.
        short: handling of videos shorter than a clip (see module docs).
    """

    def __init__(self, num_clips: int = 10, clip_len: int = 16, step: int = 1, short: str = "repeat") -> None:
        if num_clips < 1:
            raise ValueError(f"num_clips must be >= 1, got {num_clips}")
        super().__init__(clip_len, step, short)
        self.num_clips = num_clips

    def indices(self, num_frames: int, generator: torch.Generator | None = None) -> np.ndarray:
        starts = np.rint(np.linspace(0, self.last_start(num_frames), self.num_clips)).astype(np.int64)
        return np.stack([self.clip_at(int(s), num_frames) for s in starts])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_clips={self.num_clips}, clip_len={self.clip_len}, step={self.step})"
