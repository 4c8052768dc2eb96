"""Functional clip ops: layout, geometry, colour, blur, normalisation, frame difference.

Layouts:

* decoded clips are uint8 channel-last ``[T, H, W, 3]`` (several clips: ``[K, T, H, W, 3]``);
* model input is float channel-first ``[3, T, H, W]`` or batched ``[N, 3, T, H, W]``.

The ops (:func:`resize_short_side`, :func:`resized_crop`, :func:`center_crop`,
:func:`three_crop`, :func:`crop_positions`, :func:`hflip`, :func:`adjust_brightness`, :func:`adjust_contrast`,
:func:`adjust_saturation`, :func:`adjust_hue`, :func:`rgb_to_grayscale`,
:func:`gaussian_blur`, :func:`normalize`, :func:`frame_difference`) take float ``[C, T, H, W]``
or ``[N, C, T, H, W]`` on any device and draw nothing at random. Colour and blur parameters
may be a Python number (same for the batch) or a tensor of ``N`` values (one per clip), so a
training loop can augment whole batches on the GPU.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from fima_models._utils import KINETICS_MEAN, KINETICS_STD

#: A colour or blur parameter: one number for the batch, or a tensor of one value per clip.
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


def check_uint8_clip(clip: torch.Tensor, name: str) -> None:
    """Fail with one clear message unless ``clip`` is uint8 RGB ``[..., T, H, W, 3]`` (``name``: the caller)."""
    if clip.dtype != torch.uint8 or clip.shape[-1] != 3:
        raise ValueError(
            f"{name} expects uint8 RGB frames [..., T, H, W, 3] as VideoReader returns, "
            f"got dtype {clip.dtype} and shape {tuple(clip.shape)}"
        )


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


def short_side_size(h: int, w: int, size: int) -> tuple[int, int]:
    """``(height, width)`` of an ``h x w`` frame after :func:`resize_short_side` to ``size``."""
    if h <= w:
        return size, max(1, int(round(w * size / h)))
    return max(1, int(round(h * size / w))), size


def resize_short_side(x: torch.Tensor, size: int, antialias: bool = True) -> torch.Tensor:
    """Resize so the shorter side equals ``size``, keeping the aspect ratio."""
    h, w = x.shape[-2:]
    return resize(x, short_side_size(h, w, size), antialias=antialias)


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
    crops = [crop(x, t, l, size, size) for t, l in crop_positions(h, w, size, 3)]
    return torch.stack(crops, dim=0 if x.dim() == 4 else 1)


def crop_positions(h: int, w: int, size: int, count: int) -> list[tuple[int, int]]:
    """``(top, left)`` of ``count`` square ``size`` crops of an ``h x w`` frame.

    Args:
        h, w: frame size.
        size: crop side; must not exceed the shorter side.
        count: 1 (the centre); 3 (along the longer side: start, centre, end, centred across it,
            as :func:`three_crop` takes them); 5 (the corners top-left, top-right, bottom-left,
            bottom-right, then the centre: the order of torchvision's ``FiveCrop``).

    Raises:
        ValueError: ``size`` exceeds the shorter side, or ``count`` is not 1, 3 or 5.
    """
    if size > min(h, w):
        raise ValueError(f"crop size {size} exceeds the {h}x{w} frame; resize the short side to at least {size} first")
    centre = ((h - size) // 2, (w - size) // 2)
    if count == 1:
        return [centre]
    if count == 3:
        if w >= h:
            return [(centre[0], 0), centre, (centre[0], w - size)]
        return [(0, centre[1]), centre, (h - size, centre[1])]
    if count == 5:
        return [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size), centre]
    raise ValueError(f"crop_positions takes count 1, 3 or 5, got {count}")


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Mirror every frame left-right."""
    return x.flip(-1)


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


def normalize(
    x: torch.Tensor, mean: Sequence[float] = KINETICS_MEAN, std: Sequence[float] = KINETICS_STD
) -> torch.Tensor:
    """``(x - mean) / std`` per channel."""
    x5, was4d = _to5d(x)
    m = torch.as_tensor(mean, dtype=x5.dtype, device=x5.device).reshape(1, -1, 1, 1, 1)
    s = torch.as_tensor(std, dtype=x5.dtype, device=x5.device).reshape(1, -1, 1, 1, 1)
    return _back((x5 - m) / s, was4d)


def frame_difference(x: torch.Tensor) -> torch.Tensor:
    """FIMA frame difference ``(x - roll(x, 1, time) + 1) / 2`` of [0, 1] frames (stays in [0, 1])."""
    time_dim = -3
    return (x - torch.roll(x, shifts=1, dims=time_dim) + 1.0) / 2.0
