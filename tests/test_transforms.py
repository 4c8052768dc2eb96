"""Tests of fima_models.transforms: functional ops, crop geometry, the train / eval presets."""

from __future__ import annotations

import pytest
import torch

from fima_models import transforms as T
from fima_models._utils import KINETICS_MEAN, KINETICS_STD
from tests.media import coordinate_clip

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_to_float_layout() -> None:
    clip = torch.randint(0, 256, (5, 8, 10, 3), dtype=torch.uint8)
    x = T.to_float(clip)
    assert x.shape == (3, 5, 8, 10) and x.dtype == torch.float32
    assert torch.allclose(x[1, 2], clip[2, ..., 1].float() / 255)
    assert T.to_float(clip[None].expand(2, -1, -1, -1, -1)).shape == (2, 3, 5, 8, 10)
    with pytest.raises(ValueError, match="T, H, W, 3"):
        T.to_float(torch.zeros(3, 5, 8, 10))


def test_resize_short_side_and_crops() -> None:
    x = torch.rand(3, 2, 40, 60)
    assert T.resize_short_side(x, 20).shape == (3, 2, 20, 30)
    assert T.resize_short_side(x.transpose(-1, -2), 20).shape == (3, 2, 30, 20)
    c = T.center_crop(x, 20)
    assert torch.equal(c, x[..., 10:30, 20:40])
    three = T.three_crop(x, 40)
    assert three.shape == (3, 3, 2, 40, 40)
    assert torch.equal(three[0], x[..., :, :40]) and torch.equal(three[2], x[..., :, 20:])
    assert torch.equal(three[1], x[..., :, 10:50])
    batched = T.three_crop(x[None].repeat(2, 1, 1, 1, 1), 40)
    assert batched.shape == (2, 3, 3, 2, 40, 40)
    with pytest.raises(ValueError, match="resize"):
        T.center_crop(x, 50)


def test_colour_ops_against_torchvision() -> None:
    F = pytest.importorskip("torchvision.transforms.v2.functional")
    img = torch.rand(3, 1, 16, 20)  # T=1: per-clip contrast mean equals torchvision's per-image mean
    frame = img[:, 0]
    pairs = [
        (T.adjust_brightness(img, 1.3), F.adjust_brightness(frame, 1.3)),
        (T.adjust_contrast(img, 0.6), F.adjust_contrast(frame, 0.6)),
        (T.adjust_saturation(img, 1.7), F.adjust_saturation(frame, 1.7)),
        (T.adjust_hue(img, 0.23), F.adjust_hue(frame, 0.23)),
        (T.adjust_hue(img, -0.4), F.adjust_hue(frame, -0.4)),
        (T.rgb_to_grayscale(img), F.rgb_to_grayscale(frame, num_output_channels=3)),
        (T.gaussian_blur(img, 1.2, kernel_size=5), F.gaussian_blur(frame, [5, 5], [1.2, 1.2])),
    ]
    for ours, ref in pairs:
        torch.testing.assert_close(ours[:, 0], ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_batched_per_clip_parameters_match_loop(device: str) -> None:
    x = torch.rand(3, 3, 4, 12, 12, device=device)
    factors = torch.tensor([0.5, 1.0, 1.6])
    hues = torch.tensor([-0.2, 0.0, 0.3])
    sigmas = torch.tensor([0.5, 1.0, 2.0])
    for op, params in [(T.adjust_brightness, factors), (T.adjust_contrast, factors),
                       (T.adjust_saturation, factors), (T.adjust_hue, hues)]:
        batched = op(x, params)
        looped = torch.stack([op(x[i], float(params[i])) for i in range(3)])
        torch.testing.assert_close(batched, looped)
    blurred = T.gaussian_blur(x, sigmas, kernel_size=7)
    looped = torch.stack([T.gaussian_blur(x[i], float(sigmas[i]), kernel_size=7) for i in range(3)])
    torch.testing.assert_close(blurred, looped)
    assert blurred.device.type == device
    const = torch.full((3, 2, 9, 9), 0.4, device=device)
    torch.testing.assert_close(T.gaussian_blur(const, 1.5), const)
    normed = T.normalize(x)
    mean = torch.tensor(KINETICS_MEAN, device=device).view(1, 3, 1, 1, 1)
    std = torch.tensor(KINETICS_STD, device=device).view(1, 3, 1, 1, 1)
    torch.testing.assert_close(normed * std + mean, x)


def test_frame_difference() -> None:
    x = torch.rand(3, 5, 4, 4)
    d = T.frame_difference(x)
    torch.testing.assert_close(d[:, 1], (x[:, 1] - x[:, 0] + 1) / 2)
    torch.testing.assert_close(d[:, 0], (x[:, 0] - x[:, 4] + 1) / 2)  # roll wraps around
    assert d.min() >= 0 and d.max() <= 1


def test_random_resized_crop_params_bounds_and_determinism() -> None:
    g = _gen(0)
    for _ in range(200):
        top, left, h, w = T.random_resized_crop_params(60, 90, (0.2, 1.0), generator=g)
        assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 90
        assert 0.2 * 60 * 90 * 0.9 <= h * w <= 60 * 90
    a = [T.random_resized_crop_params(60, 90, generator=_gen(5)) for _ in range(2)]
    assert a[0] == a[1]


def test_train_transform_determinism_and_views() -> None:
    clip = torch.randint(0, 256, (6, 40, 50, 3), dtype=torch.uint8)
    tf = T.TrainTransform(size=24, blur=True)
    a, b, c = tf(clip, _gen(1)), tf(clip, _gen(1)), tf(clip, _gen(2))
    assert a.shape == (3, 6, 24, 24)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert tf(clip[None].repeat(2, 1, 1, 1, 1), _gen(0)).shape == (2, 3, 6, 24, 24)
    # identical parameters on every frame: a static clip stays static
    static = clip[:1].expand(6, -1, -1, -1).contiguous()
    out = tf(static, _gen(3))
    assert torch.allclose(out, out[:, :1].expand_as(out))
    with pytest.raises(ValueError, match="uint8"):
        tf(clip.float())


def test_train_transform_geometry_without_colour() -> None:
    clip = coordinate_clip(2, 60, 90)
    tf = T.TrainTransform(size=20, jitter_p=0, grayscale_p=0, mean=(0, 0, 0), std=(1, 1, 1))
    out = tf(clip, _gen(4))
    xs = out[0, 0, 10] * 255 / 2
    assert xs.min() >= -0.5 and xs.max() <= 89.5 and (xs[1:] - xs[:-1]).abs().min() > 0  # monotone ramp


def test_eval_transform_shapes_and_values() -> None:
    clip = torch.randint(0, 256, (4, 48, 64, 3), dtype=torch.uint8)
    tf = T.EvalTransform(size=28, crop_pct=0.875)
    out = tf(clip)
    assert out.shape == (3, 4, 28, 28)
    resized = T.resize_short_side(T.to_float(clip), 32)
    torch.testing.assert_close(out, T.normalize(T.center_crop(resized, 28)))
    assert tf(torch.stack([clip, clip])).shape == (2, 3, 4, 28, 28)
    three = T.EvalTransform(size=28, num_crops=3)
    assert three(clip).shape == (3, 3, 4, 28, 28)
    assert three(torch.stack([clip, clip, clip])).shape == (9, 3, 4, 28, 28)
    with pytest.raises(ValueError, match="num_crops"):
        T.EvalTransform(num_crops=2)
