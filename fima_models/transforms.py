"""Clip transforms: functional ops and the composed train / eval / FIMA pipelines.

Layouts:

* decoded clips are uint8 channel-last ``[T, H, W, 3]`` (several clips: ``[K, T, H, W, 3]``);
* model input is float channel-first ``[3, T, H, W]`` or batched ``[N, 3, T, H, W]``.

Functional ops (:func:`resize_short_side`, :func:`resized_crop`, :func:`center_crop`,
:func:`three_crop`, :func:`hflip`, :func:`adjust_brightness`, :func:`adjust_contrast`,
:func:`adjust_saturation`, :func:`adjust_hue`, :func:`rgb_to_grayscale`,
:func:`gaussian_blur`, :func:`normalize`) take float ``[C, T, H, W]`` or
``[N, C, T, H, W]`` on any device. Colour and blur parameters may be a Python
number (same for the batch) or a tensor of ``N`` values (one per clip), so a
training loop can augment whole batches on the GPU.

Random parameters are drawn on the CPU from an optional :class:`torch.Generator`
(default: torch's global generator, which DataLoader seeds per worker), and one
draw is shared by all frames of a clip.

Composed transforms: :class:`TrainTransform`, :class:`EvalTransform`,
:class:`FimaViewTransform` (see ``docs/data.md``).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "FIMA_MEAN",
    "FIMA_STD",
    "to_float",
    "resize",
    "resize_short_side",
    "crop",
    "resized_crop",
    "center_crop",
    "three_crop",
    "hflip",
    "rgb_to_grayscale",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
    "gaussian_blur",
    "normalize",
    "frame_difference",
    "random_resized_crop_params",
    "crop_box",
    "ColorAugment",
    "TrainTransform",
    "EvalTransform",
    "FimaViewTransform",
]

#: Normalisation of FIMA and torchvision video models.
FIMA_MEAN: tuple[float, float, float] = (0.43216, 0.394666, 0.37645)
FIMA_STD: tuple[float, float, float] = (0.22803, 0.22145, 0.216989)

Factor = float | torch.Tensor


# --------------------------------------------------------------------------- layout helpers
def _to5d(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """View ``[C,T,H,W]`` as ``[1,C,T,H,W]``; return the view and whether it was 4-D."""
    if x.dim() == 4:
        return x.unsqueeze(0), True
    if x.dim() == 5:
        return x, False
    raise ValueError(f"expected a clip [C, T, H, W] or a batch [N, C, T, H, W], got shape {tuple(x.shape)}")


def _back(x: torch.Tensor, was4d: bool) -> torch.Tensor:
    return x.squeeze(0) if was4d else x


def _per_clip(value: Factor, x5: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or ``[N]`` parameter to ``[N, 1, 1, 1, 1]`` on ``x5``'s device."""
    t = torch.as_tensor(value, dtype=x5.dtype, device=x5.device).reshape(-1)
    if t.numel() not in (1, x5.shape[0]):
        raise ValueError(f"got {t.numel()} per-clip parameters for a batch of {x5.shape[0]} clips")
    return t.reshape(-1, 1, 1, 1, 1)


def to_float(clip: torch.Tensor) -> torch.Tensor:
    """uint8 channel-last ``[..., T, H, W, 3]`` -> float32 channel-first ``[..., 3, T, H, W]`` in [0, 1]."""
    if clip.dim() < 4 or clip.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [..., T, H, W, 3], got shape {tuple(clip.shape)}")
    x = clip.movedim(-1, -4)
    if clip.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    return x.to(torch.float32)


# --------------------------------------------------------------------------- geometry
def resize(x: torch.Tensor, size: tuple[int, int], antialias: bool = True) -> torch.Tensor:
    """Bilinear resize of every frame to ``size = (height, width)``."""
    x5, was4d = _to5d(x)
    n, c, t, h, w = x5.shape
    if (h, w) == tuple(size):
        return x
    frames = x5.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)
    out = F.interpolate(frames, size=tuple(size), mode="bilinear", align_corners=False, antialias=antialias)
    out = out.reshape(n, t, c, size[0], size[1]).permute(0, 2, 1, 3, 4).contiguous()
    return _back(out, was4d)


def _short_side_size(h: int, w: int, size: int) -> tuple[int, int]:
    if h <= w:
        return size, max(1, int(round(w * size / h)))
    return max(1, int(round(h * size / w))), size


def resize_short_side(x: torch.Tensor, size: int, antialias: bool = True) -> torch.Tensor:
    """Resize so the shorter side equals ``size``, keeping the aspect ratio."""
    h, w = x.shape[-2:]
    return resize(x, _short_side_size(h, w, size), antialias=antialias)


def crop(x: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    """Crop the pixel rectangle ``[top:top+height, left:left+width]`` of every frame."""
    h, w = x.shape[-2:]
    if top < 0 or left < 0 or top + height > h or left + width > w or height < 1 or width < 1:
        raise ValueError(f"crop ({top}, {left}, {height}, {width}) does not fit a {h}x{w} frame")
    return x[..., top : top + height, left : left + width]


def resized_crop(
    x: torch.Tensor, top: int, left: int, height: int, width: int, size: int | tuple[int, int], antialias: bool = True
) -> torch.Tensor:
    """Crop a pixel rectangle and resize it to ``size`` (int: square)."""
    out_size = (size, size) if isinstance(size, int) else tuple(size)
    return resize(crop(x, top, left, height, width), out_size, antialias=antialias)


def center_crop(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Crop the centre ``size`` (int: square) of every frame."""
    ch, cw = (size, size) if isinstance(size, int) else size
    h, w = x.shape[-2:]
    if ch > h or cw > w:
        raise ValueError(f"centre crop {ch}x{cw} is larger than the {h}x{w} frame; resize first")
    return crop(x, (h - ch) // 2, (w - cw) // 2, ch, cw)


def three_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Three square crops along the longer side (start, centre, end), stacked in a new leading dim.

    Args:
        x: ``[C, T, H, W]`` or ``[N, C, T, H, W]``.
        size: crop side; must not exceed the shorter side.

    Returns:
        ``[3, C, T, size, size]`` or ``[N, 3, C, T, size, size]``.
    """
    h, w = x.shape[-2:]
    if size > min(h, w):
        raise ValueError(f"three-crop size {size} exceeds the {h}x{w} frame; resize the short side first")
    if w >= h:
        top = (h - size) // 2
        boxes = [(top, 0), (top, (w - size) // 2), (top, w - size)]
    else:
        left = (w - size) // 2
        boxes = [(0, left), ((h - size) // 2, left), (h - size, left)]
    crops = [crop(x, t, l, size, size) for t, l in boxes]
    return torch.stack(crops, dim=0 if x.dim() == 4 else 1)


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Mirror every frame left-right."""
    return x.flip(-1)


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


def crop_box(top: int, left: int, h: int, w: int, height: int, width: int, flipped: bool = False) -> torch.Tensor:
    """Normalised ``(x1, y1, x2, y2)`` of a pixel crop in its source frame; a flip swaps x1 and x2."""
    x1, x2 = left / width, (left + w) / width
    if flipped:
        x1, x2 = x2, x1
    return torch.tensor([x1, top / height, x2, (top + h) / height], dtype=torch.float32)


# --------------------------------------------------------------------------- colour
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601 luma as rounded by torchvision


def rgb_to_grayscale(x: torch.Tensor, num_output_channels: int = 3) -> torch.Tensor:
    """ITU-R 601 luma (torchvision's weights), repeated to ``num_output_channels`` channels."""
    x5, was4d = _to5d(x)
    if x5.shape[1] != 3:
        raise ValueError(f"grayscale needs 3 colour channels, got {x5.shape[1]}")
    r, g, b = x5.unbind(1)
    gray = (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b).unsqueeze(1)
    return _back(gray.expand(-1, num_output_channels, -1, -1, -1).contiguous(), was4d)


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * a + (1.0 - factor) * b).clamp_(0.0, 1.0)


def adjust_brightness(x: torch.Tensor, factor: Factor) -> torch.Tensor:
    """Multiply intensities by ``factor`` (per clip), clamped to [0, 1]."""
    x5, was4d = _to5d(x)
    return _back((x5 * _per_clip(factor, x5)).clamp_(0.0, 1.0), was4d)


def adjust_contrast(x: torch.Tensor, factor: Factor) -> torch.Tensor:
    """Blend with the clip's mean gray level (one mean per clip, so all frames change alike)."""
    x5, was4d = _to5d(x)
    mean = rgb_to_grayscale(x5, 1).mean(dim=(1, 2, 3, 4), keepdim=True)
    return _back(_blend(x5, mean, _per_clip(factor, x5)), was4d)


def adjust_saturation(x: torch.Tensor, factor: Factor) -> torch.Tensor:
    """Blend with the grayscale clip: 0 gives gray, 1 the input, >1 more saturated."""
    x5, was4d = _to5d(x)
    return _back(_blend(x5, rgb_to_grayscale(x5, 3), _per_clip(factor, x5)), was4d)


def adjust_hue(x: torch.Tensor, factor: Factor) -> torch.Tensor:
    """Rotate hue by ``factor`` turns (``|factor| <= 0.5``), keeping saturation and value.

    Uses the closed-form HSV -> RGB map ``c = V - C * clamp(min(k, 4 - k), 0, 1)`` with
    ``k = (n + 6 H) mod 6`` (n = 5, 3, 1 for R, G, B; ``C = V * S`` is the chroma), which
    needs only the hue angle, maximum and chroma of each pixel.
    """
    x5, was4d = _to5d(x)
    shift = _per_clip(factor, x5).reshape(-1, 1, 1, 1)
    if shift.abs().max() > 0.5:
        raise ValueError("hue factor must lie in [-0.5, 0.5]")
    r, g, b = x5.unbind(1)
    maxc = x5.amax(dim=1)
    minc = x5.amin(dim=1)
    chroma = maxc - minc
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    h6 = torch.where(maxc == r, (g - b) / safe, torch.where(maxc == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    h6 = torch.remainder(h6 + 6.0 * shift, 6.0)
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(h6 + n, 6.0)
        channels.append(maxc - chroma * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0))
    return _back(torch.stack(channels, dim=1).clamp_(0.0, 1.0), was4d)


def _gaussian_kernels(sigma: torch.Tensor, size: int) -> torch.Tensor:
    coords = torch.arange(size, dtype=sigma.dtype, device=sigma.device) - (size - 1) / 2.0
    k = torch.exp(-(coords[None, :] ** 2) / (2.0 * sigma[:, None] ** 2))
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: Factor, kernel_size: int | None = None) -> torch.Tensor:
    """Separable Gaussian blur of every frame (reflect padding).

    Args:
        x: ``[C, T, H, W]`` or ``[N, C, T, H, W]``.
        sigma: standard deviation in pixels, scalar or one per clip.
        kernel_size: odd kernel size; default ``2 * ceil(3 * max(sigma)) + 1``
            limited to the frame size.
    """
    x5, was4d = _to5d(x)
    n, c, t, h, w = x5.shape
    sig = torch.as_tensor(sigma, dtype=x5.dtype, device=x5.device).reshape(-1).clamp_min(1e-3)
    sig = sig.expand(n) if sig.numel() == 1 else sig
    if kernel_size is None:
        kernel_size = 2 * math.ceil(3.0 * float(sig.max())) + 1
    kernel_size = min(kernel_size, 2 * ((min(h, w) - 1) // 2) + 1)
    if kernel_size % 2 == 0 or kernel_size < 1:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    if kernel_size == 1:
        return x
    k = _gaussian_kernels(sig, kernel_size)  # [N, K]
    groups = n * c * t
    weights = k.repeat_interleave(c * t, dim=0)  # [N*C*T, K]
    frames = x5.reshape(1, groups, h, w)
    pad = kernel_size // 2
    frames = F.pad(frames, (pad, pad, 0, 0), mode="reflect")
    frames = F.conv2d(frames, weights[:, None, None, :], groups=groups)
    frames = F.pad(frames, (0, 0, pad, pad), mode="reflect")
    frames = F.conv2d(frames, weights[:, None, :, None], groups=groups)
    return _back(frames.reshape(n, c, t, h, w), was4d)


def normalize(x: torch.Tensor, mean: Sequence[float] = FIMA_MEAN, std: Sequence[float] = FIMA_STD) -> torch.Tensor:
    """``(x - mean) / std`` per channel."""
    x5, was4d = _to5d(x)
    m = torch.as_tensor(mean, dtype=x5.dtype, device=x5.device).reshape(1, -1, 1, 1, 1)
    s = torch.as_tensor(std, dtype=x5.dtype, device=x5.device).reshape(1, -1, 1, 1, 1)
    return _back((x5 - m) / s, was4d)


def frame_difference(x: torch.Tensor) -> torch.Tensor:
    """FIMA frame difference ``(x - roll(x, 1, time) + 1) / 2`` of [0, 1] frames (stays in [0, 1])."""
    time_dim = -3
    return (x - torch.roll(x, shifts=1, dims=time_dim) + 1.0) / 2.0


# --------------------------------------------------------------------------- random pieces
def _uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=generator))


def _coin(p: float, generator: torch.Generator | None) -> bool:
    return p > 0 and float(torch.rand(1, generator=generator)) < p


class ColorAugment:
    """Random colour augmentation of one float [0, 1] clip ``[3, T, H, W]``, identical on every frame.

    Order (as in DESIGN.md): grayscale (p ``grayscale_p``), colour jitter (p
    ``jitter_p``; brightness, contrast, saturation, hue in random order), Gaussian
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

    def __init__(
        self,
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_p: float = 0.5,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        blur_kernel_frac: float = 0.1,
    ) -> None:
        self.jitter = jitter
        self.jitter_p = jitter_p
        self.grayscale_p = grayscale_p
        self.blur_p = blur_p
        self.blur_sigma = blur_sigma
        self.blur_kernel_frac = blur_kernel_frac

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


def _random_view(
    frames: torch.Tensor,
    size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    flip_p: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RandomResizedCrop + flip of uint8 ``[T, H, W, 3]``; returns float ``[3, T, S, S]`` in [0, 1] and the box."""
    height, width = frames.shape[-3], frames.shape[-2]
    top, left, h, w = random_resized_crop_params(height, width, scale, ratio, generator)
    flipped = _coin(flip_p, generator)
    view = to_float(frames[..., top : top + h, left : left + w, :])
    view = resize(view, (size, size))
    if flipped:
        view = hflip(view)
    return view, crop_box(top, left, h, w, height, width, flipped)


def _check_uint8_clip(clip: torch.Tensor, name: str) -> None:
    if clip.dtype != torch.uint8 or clip.shape[-1] != 3:
        raise ValueError(
            f"{name} expects uint8 RGB frames [..., T, H, W, 3] as VideoReader returns, "
            f"got dtype {clip.dtype} and shape {tuple(clip.shape)}"
        )


# --------------------------------------------------------------------------- composed
class TrainTransform:
    """Training augmentation: RandomResizedCrop, flip, colour augmentation, normalise.

    Input uint8 ``[T, H, W, 3]`` -> float ``[3, T, S, S]``; ``[K, T, H, W, 3]`` ->
    ``[K, 3, T, S, S]`` (each clip drawn independently).

    Args:
        size: output side S.
        scale: RandomResizedCrop area range.
        ratio: RandomResizedCrop aspect-ratio range.
        flip_p: horizontal flip probability.
        jitter, jitter_p, grayscale_p: colour augmentation (see :class:`ColorAugment`).
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
        mean: Sequence[float] = FIMA_MEAN,
        std: Sequence[float] = FIMA_STD,
        generator: torch.Generator | None = None,
    ) -> None:
        self.size = size
        self.scale = scale
        self.ratio = ratio
        self.flip_p = flip_p
        self.color = ColorAugment(jitter=jitter, jitter_p=jitter_p, grayscale_p=grayscale_p, blur_p=0.5 if blur else 0.0)
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.generator = generator

    def __call__(self, clip: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment one clip ``[T, H, W, 3]`` or several ``[K, T, H, W, 3]``."""
        _check_uint8_clip(clip, type(self).__name__)
        g = generator if generator is not None else self.generator
        if clip.dim() == 5:
            return torch.stack([self(c, g) for c in clip])
        view, _ = _random_view(clip, self.size, self.scale, self.ratio, self.flip_p, g)
        return normalize(self.color(view, g), self.mean, self.std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, scale={self.scale}, blur={self.color.blur_p > 0})"


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
        mean: Sequence[float] = FIMA_MEAN,
        std: Sequence[float] = FIMA_STD,
    ) -> None:
        if num_crops not in (1, 3):
            raise ValueError(f"num_crops must be 1 (centre) or 3 (three-crop), got {num_crops}")
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must lie in (0, 1], got {crop_pct}")
        self.size = size
        self.crop_pct = crop_pct
        self.num_crops = num_crops
        self.mean = tuple(mean)
        self.std = tuple(std)

    def __call__(self, clip: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Transform one clip ``[T, H, W, 3]`` or several ``[K, T, H, W, 3]`` (``generator`` is unused)."""
        _check_uint8_clip(clip, type(self).__name__)
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


class FimaViewTransform:
    """FIMA pretraining views of a pair of clips (DESIGN.md, "FIMA pretraining").

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
        mean: Sequence[float] = FIMA_MEAN,
        std: Sequence[float] = FIMA_STD,
        generator: torch.Generator | None = None,
    ) -> None:
        if clip_len is not None and (clip_len < 2 or clip_len % 2):
            raise ValueError(f"clip_len must be an even number >= 2, got {clip_len}")
        self.size = size
        self.clip_len = clip_len
        self.scale = scale
        self.ratio = ratio
        self.flip_p = flip_p
        self.color = ColorAugment(jitter=jitter, jitter_p=jitter_p, grayscale_p=grayscale_p, blur_p=blur_p)
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.generator = generator

    def __call__(self, clips: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Build the views of ``clips`` (uint8 ``[2, L, H, W, 3]``)."""
        _check_uint8_clip(clips, type(self).__name__)
        if clips.dim() != 5 or clips.shape[0] != 2:
            raise ValueError(f"FimaViewTransform expects two clips [2, L, H, W, 3], got shape {tuple(clips.shape)}")
        length = clips.shape[1]
        if length < 2 or length % 2 or (self.clip_len is not None and length != self.clip_len):
            want = self.clip_len if self.clip_len is not None else "an even number of"
            raise ValueError(f"FimaViewTransform needs clips of {want} frames, got {length}")
        g = generator if generator is not None else self.generator
        half = length // 2
        rgb_global, diff_global, diff_local, boxes = [], [], [], []
        for clip in clips:
            view, box = _random_view(clip[::2], self.size, self.scale, self.ratio, self.flip_p, g)
            rgb_global.append(self._finish(view, g))
            diff_global.append(self._finish(frame_difference(view), g))
            boxes.append(box)
            segments = []
            for seg in (clip[:half], clip[half:]):
                local, _ = _random_view(seg, self.size, self.scale, self.ratio, self.flip_p, g)
                segments.append(self._finish(frame_difference(local), g))
            diff_local.append(torch.stack(segments))
        return {
            "rgb_global": torch.stack(rgb_global),
            "diff_global": torch.stack(diff_global),
            "diff_local": torch.stack(diff_local),
            "boxes": torch.stack(boxes),
        }

    def _finish(self, view: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return normalize(self.color(view, generator), self.mean, self.std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, clip_len={self.clip_len})"
