"""Clip samplers: which frames of a video make a training or test sample.

A sampler is called as ``sampler(reader, generator)`` with a
:class:`~fima_models.video.VideoReader` and an optional :class:`torch.Generator`
and returns uint8 frames:

* :class:`RandomClipSampler` -> ``[T, H, W, 3]`` (one clip at a random time; training)
* :class:`UniformClipSampler` -> ``[K, T, H, W, 3]`` (K clips evenly over the video; testing)
* :class:`FimaClipPairSampler` -> ``[2, L, H, W, 3]`` (two clips of L consecutive frames
  at independent random times; FIMA pretraining)

Short videos (fewer frames than a clip spans) never fail. ``short="repeat"``
(default) repeats the last frame to fill the clip; ``short="loop"`` wraps around to
the first frame. Each sampler also exposes ``indices(num_frames, generator)`` that
returns the frame indices without decoding, for inspection and tests.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from fima_models.video import VideoReader

__all__ = ["ClipSampler", "RandomClipSampler", "UniformClipSampler", "FimaClipPairSampler", "clip_indices"]

_SHORT_MODES = ("repeat", "loop")


def clip_indices(start: int, num_frames: int, step: int, total: int, short: str = "repeat") -> np.ndarray:
    """Frame indices ``start, start + step, ...`` made valid for a video of ``total`` frames.

    Args:
        start: first index (>= 0).
        num_frames: clip length T.
        step: stride between frames.
        total: frames in the video (>= 1).
        short: what to do past the end: ``"repeat"`` the last frame or ``"loop"`` to the start.

    Returns:
        int64 array of T indices in ``[0, total)``.
    """
    if short not in _SHORT_MODES:
        raise ValueError(f"short must be one of {_SHORT_MODES}, got '{short}'")
    if total < 1:
        raise ValueError("a video needs at least one frame")
    idx = start + step * np.arange(num_frames, dtype=np.int64)
    if short == "loop":
        return idx % total
    return np.minimum(idx, total - 1)


def _randint(high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in ``[0, high]``."""
    return int(torch.randint(0, high + 1, (1,), generator=generator))


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


class RandomClipSampler(ClipSampler):
    """One clip of ``num_frames`` frames with stride ``step`` at a uniformly random start.

    Args:
        num_frames: clip length T.
        step: stride between sampled frames.
        short: ``"repeat"`` (last frame) or ``"loop"`` for videos shorter than the clip span.
    """

    def __init__(self, num_frames: int = 16, step: int = 1, short: str = "repeat") -> None:
        if num_frames < 1 or step < 1:
            raise ValueError(f"num_frames and step must be >= 1, got {num_frames}, {step}")
        clip_indices(0, 1, 1, 1, short)  # validates ``short``
        self.num_frames = num_frames
        self.step = step
        self.short = short

    @property
    def span(self) -> int:
        """Frames a clip covers in the source video."""
        return (self.num_frames - 1) * self.step + 1

    def indices(self, num_frames: int, generator: torch.Generator | None = None) -> np.ndarray:
        start = _randint(max(num_frames - self.span, 0), generator)
        return clip_indices(start, self.num_frames, self.step, num_frames, self.short)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_frames={self.num_frames}, step={self.step}, short='{self.short}')"


class UniformClipSampler(ClipSampler):
    """``num_clips`` clips with starts evenly spaced from the first to the last valid start.

    Deterministic: the generator is ignored. Spatial crops (e.g. three-crop) are the
    transform's job.

    Args:
        num_clips: clips per video K.
        num_frames: clip length T.
        step: stride between frames.
        short: handling of videos shorter than a clip (see module docs).
    """

    def __init__(self, num_clips: int = 10, num_frames: int = 16, step: int = 1, short: str = "repeat") -> None:
        if num_clips < 1 or num_frames < 1 or step < 1:
            raise ValueError(f"num_clips, num_frames and step must be >= 1, got {num_clips}, {num_frames}, {step}")
        clip_indices(0, 1, 1, 1, short)
        self.num_clips = num_clips
        self.num_frames = num_frames
        self.step = step
        self.short = short

    def indices(self, num_frames: int, generator: torch.Generator | None = None) -> np.ndarray:
        span = (self.num_frames - 1) * self.step + 1
        last_start = max(num_frames - span, 0)
        starts = np.rint(np.linspace(0, last_start, self.num_clips)).astype(np.int64)
        return np.stack([clip_indices(int(s), self.num_frames, self.step, num_frames, self.short) for s in starts])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_clips={self.num_clips}, num_frames={self.num_frames}, step={self.step})"


class FimaClipPairSampler(ClipSampler):
    """Two clips of ``clip_len`` consecutive frames at independent random times (FIMA's m and n).

    Args:
        clip_len: frames per clip L (32 in the paper, e.g. 16 for smoke runs).
        step: stride between frames (1: consecutive).
        short: ``"loop"`` (default: a short video is played again from its start,
            keeping motion continuous but for one cut) or ``"repeat"`` (freeze on the last frame).
    """

    def __init__(self, clip_len: int = 32, step: int = 1, short: str = "loop") -> None:
        if clip_len < 1 or step < 1:
            raise ValueError(f"clip_len and step must be >= 1, got {clip_len}, {step}")
        clip_indices(0, 1, 1, 1, short)
        self.clip_len = clip_len
        self.step = step
        self.short = short

    def indices(self, num_frames: int, generator: torch.Generator | None = None) -> np.ndarray:
        span = (self.clip_len - 1) * self.step + 1
        high = max(num_frames - span, 0)
        return np.stack(
            [clip_indices(_randint(high, generator), self.clip_len, self.step, num_frames, self.short) for _ in range(2)]
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(clip_len={self.clip_len}, step={self.step}, short='{self.short}')"
