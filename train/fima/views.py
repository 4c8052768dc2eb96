"""FIMA pretraining data: the pair of clips a video gives and the views built from them.

* :class:`FimaClipPairSampler`: two clips (FIMA's m and n) of ``clip_len`` consecutive frames
  at independent random times of one video;
* :class:`FimaViewTransform`: the global RGB view, its frame-difference view and two local
  frame-difference views of each clip, with the global crops' boxes (see ``docs/pretraining.md``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from fima_models._utils import KINETICS_MEAN, KINETICS_STD
from fima_models.data.samplers import StridedClipSampler
from fima_models.transforms import (
    ColorAugment,
    RandomResizedCropFlip,
    RandomViewTransform,
    check_uint8_clip,
    frame_difference,
)

__all__ = ["FimaClipPairSampler", "FimaViewTransform"]


class FimaClipPairSampler(StridedClipSampler):
    """Two clips of ``clip_len`` consecutive frames at independent random times (FIMA's m and n).

    Called with a reader it returns uint8 ``[2, L, H, W, 3]``.

    Args:
        clip_len: frames per clip L (32 in the paper, e.g. 16 for smoke runs).
        step: stride between frames (1: consecutive).
        short: ``"loop"`` (default: a short video is played again from its start,
            keeping motion continuous but for one cut) or ``"repeat"`` (freeze on the last frame).
    """

    def __init__(self, clip_len: int = 32, step: int = 1, short: str = "loop") -> None:
        super().__init__(clip_len, step, short)

    def indices(self, num_frames: int, generator: torch.Generator | None = None) -> np.ndarray:
        return np.stack([self.random_clip(num_frames, generator) for _ in range(2)])


class FimaViewTransform(RandomViewTransform):
    """FIMA pretraining views of a pair of clips.

    Input uint8 ``[2, L, H, W, 3]`` (two clips of L consecutive frames, L even).
    For each clip: a global view (every 2nd frame) and two local views (frames
    ``0..L/2-1`` and ``L/2..L-1``), each with its own RandomResizedCrop + flip; the
    frame difference of each view is taken on its [0, 1] frames; every RGB and
    difference view is then colour-augmented independently and normalised.

    Returns a dict:

    * ``rgb_global``  ``[2, 3, L/2, S, S]``
    * ``diff_global`` ``[2, 3, L/2, S, S]`` (same crop as ``rgb_global``)
    * ``diff_local``  ``[2, 2, 3, L/2, S, S]`` (clip x segment)
    * ``boxes``       ``[2, 4]`` normalised ``(x1, y1, x2, y2)`` of each global crop; flip swaps x.

    Args:
        size: output side S.
        clip_len: expected L (None: accept any even L).
        scale, ratio: RandomResizedCrop ranges.
        flip_p: flip probability.
        jitter, jitter_p, grayscale_p, blur_p: colour augmentation.
        mean, std: normalisation.
        generator: default random generator.
    """

    def __init__(
        self,
        size: int = 112,
        clip_len: int | None = None,
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        flip_p: float = 0.5,
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_p: float = 0.5,
        mean: Sequence[float] = KINETICS_MEAN,
        std: Sequence[float] = KINETICS_STD,
        generator: torch.Generator | None = None,
    ) -> None:
        if clip_len is not None and (clip_len < 2 or clip_len % 2):
            raise ValueError(f"clip_len must be an even number >= 2, got {clip_len}")
        color = ColorAugment(jitter=jitter, jitter_p=jitter_p, grayscale_p=grayscale_p, blur_p=blur_p)
        super().__init__(RandomResizedCropFlip(size, scale, ratio, flip_p), color, mean, std, generator)
        self.clip_len = clip_len

    def __call__(self, clips: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Build the views of ``clips`` (uint8 ``[2, L, H, W, 3]``)."""
        check_uint8_clip(clips, type(self).__name__)
        if clips.dim() != 5 or clips.shape[0] != 2:
            raise ValueError(f"FimaViewTransform expects two clips [2, L, H, W, 3], got shape {tuple(clips.shape)}")
        length = clips.shape[1]
        if length < 2 or length % 2 or (self.clip_len is not None and length != self.clip_len):
            want = self.clip_len if self.clip_len is not None else "an even number of"
            raise ValueError(f"FimaViewTransform needs clips of {want} frames, got {length}")
        g = self._generator(generator)
        half = length // 2
        rgb_global, diff_global, diff_local, boxes = [], [], [], []
        for clip in clips:
            view, box = self.crop(clip[::2], g)
            rgb_global.append(self._finish(view, g))
            diff_global.append(self._finish(frame_difference(view), g))
            boxes.append(box)
            segments = []
            for seg in (clip[:half], clip[half:]):
                local, _ = self.crop(seg, g)
                segments.append(self._finish(frame_difference(local), g))
            diff_local.append(torch.stack(segments))
        return {
            "rgb_global": torch.stack(rgb_global),
            "diff_global": torch.stack(diff_global),
            "diff_local": torch.stack(diff_local),
            "boxes": torch.stack(boxes),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, clip_len={self.clip_len})"
