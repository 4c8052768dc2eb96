"""Composed clip transforms: :class:`TrainTransform` (augmentation) and :class:`EvalTransform` (evaluation).

Both take the uint8 frames a sampler returns and give normalised float model input; see
``docs/data.md`` for the shapes. :class:`RandomViewTransform` is the base of the transforms
that cut random views (the training one here, FIMA's pretraining views in ``train/``).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from fima_models._utils import KINETICS_MEAN, KINETICS_STD
from fima_models.transforms.augment import ColorAugment, RandomResizedCropFlip
from fima_models.transforms.functional import (
    center_crop,
    check_uint8_clip,
    normalize,
    resize_short_side,
    three_crop,
    to_float,
)


class RandomViewTransform:
    """Base of the transforms that cut random views: crop + flip, colour augmentation, normalisation.

    Args:
        crop: the RandomResizedCrop + flip of a view.
        color: the colour augmentation of a view.
        mean, std: normalisation.
        generator: default random generator (None: torch's global RNG).
    """

    def __init__(
        self,
        crop: RandomResizedCropFlip,
        color: ColorAugment,
        mean: Sequence[float],
        std: Sequence[float],
        generator: torch.Generator | None,
    ) -> None:
        self.crop = crop
        self.color = color
        self.mean, self.std = tuple(mean), tuple(std)
        self.generator = generator

    @property
    def size(self) -> int:
        """Output side S."""
        return self.crop.size

    def _generator(self, generator: torch.Generator | None) -> torch.Generator | None:
        """The generator of one call: the one passed, else the transform's default."""
        return generator if generator is not None else self.generator

    def _finish(self, view: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Colour-augment and normalise a float [0, 1] view."""
        return normalize(self.color(view, generator), self.mean, self.std)


class TrainTransform(RandomViewTransform):
    """Training augmentation: RandomResizedCrop, flip, colour augmentation, normalise.

    Input uint8 ``[T, H, W, 3]`` -> float ``[3, T, S, S]``; ``[K, T, H, W, 3]`` ->
    ``[K, 3, T, S, S]`` (each clip drawn independently).

    Args:
        size: output side S.
        scale: RandomResizedCrop area range.
        ratio: RandomResizedCrop aspect-ratio range.
        flip_p: horizontal flip probability.
        jitter, jitter_p, grayscale_p: colour augmentation (see
            :class:`~fima_models.transforms.augment.ColorAugment`).
        blur: whether to apply Gaussian blur (p=0.5); off for fine-tuning as in FIMA.
        mean, std: normalisation.
        generator: default random generator (None: torch's global RNG).
    """

    def __init__(
        self,
        size: int = 112,
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        flip_p: float = 0.5,
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur: bool = False,
        mean: Sequence[float] = KINETICS_MEAN,
        std: Sequence[float] = KINETICS_STD,
        generator: torch.Generator | None = None,
    ) -> None:
        color = ColorAugment(jitter=jitter, jitter_p=jitter_p, grayscale_p=grayscale_p, blur_p=0.5 if blur else 0.0)
        super().__init__(RandomResizedCropFlip(size, scale, ratio, flip_p), color, mean, std, generator)

    def __call__(self, clip: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment one clip ``[T, H, W, 3]`` or several ``[K, T, H, W, 3]``."""
        check_uint8_clip(clip, type(self).__name__)
        g = self._generator(generator)
        if clip.dim() == 5:
            return torch.stack([self(c, g) for c in clip])
        view, _ = self.crop(clip, g)
        return self._finish(view, g)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, scale={self.crop.scale}, blur={self.color.blur_p > 0})"


class EvalTransform:
    """Evaluation transform: short-side resize to ``size / crop_pct``, centre or three crop, normalise.

    Input uint8 ``[T, H, W, 3]`` -> ``[3, T, S, S]`` (three-crop: ``[3, 3, T, S, S]``);
    ``[K, T, H, W, 3]`` -> ``[K, 3, T, S, S]`` (three-crop: ``[K * 3, 3, T, S, S]``,
    clip-major).

    Args:
        size: output side S.
        crop_pct: fraction of the resized short side kept by the crop.
        num_crops: 1 (centre crop) or 3 (three crops along the longer side).
        mean, std: normalisation.
    """

    def __init__(
        self,
        size: int = 112,
        crop_pct: float = 0.875,
        num_crops: int = 1,
        mean: Sequence[float] = KINETICS_MEAN,
        std: Sequence[float] = KINETICS_STD,
    ) -> None:
        if num_crops not in (1, 3):
            raise ValueError(f"num_crops must be 1 (centre) or 3 (three-crop), got {num_crops}")
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must lie in (0, 1], got {crop_pct}")
        self.size = size
        self.crop_pct = crop_pct
        self.num_crops = num_crops
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, clip: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Transform one clip ``[T, H, W, 3]`` or several ``[K, T, H, W, 3]`` (``generator`` is unused)."""
        check_uint8_clip(clip, type(self).__name__)
        x = resize_short_side(to_float(clip), int(math.floor(self.size / self.crop_pct)))
        if self.num_crops == 1:
            x = center_crop(x, self.size)
        else:
            x = three_crop(x, self.size)
            if clip.dim() == 5:
                x = x.flatten(0, 1)
        return normalize(x.contiguous(), self.mean, self.std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, crop_pct={self.crop_pct}, num_crops={self.num_crops})"
