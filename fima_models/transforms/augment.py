"""Random augmentation pieces: crop rectangles, resized crop + flip, colour augmentation.

Random parameters are drawn on the CPU from an optional :class:`torch.Generator`
(default: torch's global generator, which DataLoader seeds per worker), and one
draw is shared by all frames of a clip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fima_models.transforms.functional import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    crop_box,
    gaussian_blur,
    hflip,
    resize,
    rgb_to_grayscale,
    to_float,
)


def random_resized_crop_params(
    height: int,
    width: int,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """Draw a RandomResizedCrop rectangle ``(top, left, h, w)`` in pixels.

    Area is uniform in ``scale`` times the frame area and the aspect ratio is
    log-uniform in ``ratio``; after 10 failed tries the largest centred crop with
    a ratio inside ``ratio`` is used.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        u = torch.rand(2, generator=generator).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[1])
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=generator))


def _coin(p: float, generator: torch.Generator | None) -> bool:
    return p > 0 and float(torch.rand(1, generator=generator)) < p


@dataclass(frozen=True)
class RandomResizedCropFlip:
    """RandomResizedCrop and horizontal flip of uint8 frames, one draw for every frame of the clip.

    Args:
        size: output side S.
        scale: crop area range, as fractions of the frame area.
        ratio: crop aspect-ratio range (log-uniform).
        flip_p: horizontal flip probability.
    """

    size: int = 112
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip_p: float = 0.5

    def __call__(
        self, frames: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Crop, resize and maybe flip uint8 ``[T, H, W, 3]``.

        Returns:
            The float ``[3, T, S, S]`` view in [0, 1] and its normalised box in the source frame
            (see :func:`~fima_models.transforms.functional.crop_box`).
        """
        height, width = frames.shape[-3], frames.shape[-2]
        top, left, h, w = random_resized_crop_params(height, width, self.scale, self.ratio, generator)
        flipped = _coin(self.flip_p, generator)
        view = resize(to_float(frames[..., top : top + h, left : left + w, :]), (self.size, self.size))
        if flipped:
            view = hflip(view)
        return view, crop_box(top, left, h, w, height, width, flipped)


@dataclass(frozen=True)
class ColorAugment:
    """Random colour augmentation of one float [0, 1] clip ``[3, T, H, W]``, identical on every frame.

    Order (FIMA's augmentation, see ``docs/data.md``): grayscale (p ``grayscale_p``), colour
    jitter (p ``jitter_p``; brightness, contrast, saturation, hue in random order), Gaussian
    blur (p ``blur_p``, sigma uniform in ``blur_sigma``).

    Args:
        jitter: (brightness, contrast, saturation, hue) strengths; factors are drawn
            uniformly from ``[1 - s, 1 + s]`` and the hue shift from ``[-h, h]``.
        jitter_p: probability of applying the jitter.
        grayscale_p: probability of converting to grayscale.
        blur_p: probability of blurring (0 disables blur).
        blur_sigma: range of the blur standard deviation, in pixels.
        blur_kernel_frac: kernel size as a fraction of the frame side (rounded to odd).
    """

    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_frac: float = 0.1

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment ``x`` (``[3, T, H, W]`` float in [0, 1])."""
        if _coin(self.grayscale_p, generator):
            x = rgb_to_grayscale(x)
        if _coin(self.jitter_p, generator):
            b, c, s, h = self.jitter
            order = torch.randperm(4, generator=generator).tolist()
            for op in order:
                if op == 0 and b > 0:
                    x = adjust_brightness(x, _uniform(max(0.0, 1 - b), 1 + b, generator))
                elif op == 1 and c > 0:
                    x = adjust_contrast(x, _uniform(max(0.0, 1 - c), 1 + c, generator))
                elif op == 2 and s > 0:
                    x = adjust_saturation(x, _uniform(max(0.0, 1 - s), 1 + s, generator))
                elif op == 3 and h > 0:
                    x = adjust_hue(x, _uniform(-h, h, generator))
        if _coin(self.blur_p, generator):
            side = min(x.shape[-2:])
            k = max(3, int(self.blur_kernel_frac * side) | 1)
            x = gaussian_blur(x, _uniform(*self.blur_sigma, generator), kernel_size=k)
        return x
