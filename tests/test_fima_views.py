"""Tests of train.fima.views: the FIMA clip pair sampler and the pretraining views."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fima_models.transforms import frame_difference
from fima_models.video import VideoReader
from tests.media import coordinate_clip, write_tiny_videos
from train.fima.views import FimaClipPairSampler, FimaViewTransform


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny encoded videos: 12 frames and 5 frames (shorter than a clip)."""
    return write_tiny_videos(tmp_path_factory.mktemp("pair"))


def test_pair_sampler_draws_two_clips_of_consecutive_frames(videos: dict[str, Path]) -> None:
    pair = FimaClipPairSampler(clip_len=8)
    idx = pair.indices(12, _gen(0))
    assert idx.shape == (2, 8) and all((np.diff(row) == 1).all() for row in idx)
    starts = {tuple(pair.indices(12, _gen(seed))[:, 0]) for seed in range(40)}
    assert {s for s, _ in starts} == set(range(5))  # every valid start (0..12-8) is reachable
    assert any(a != b for a, b in starts)  # the two clips start independently
    reader = VideoReader(videos["long"])
    clips = pair(reader, _gen(0))
    assert clips.shape == (2, 8, 32, 32, 3)
    assert torch.equal(clips[1], reader.get_clip(int(idx[1, 0]), 8))
    assert repr(pair) == "FimaClipPairSampler(clip_len=8, step=1, short='loop')"
    with pytest.raises(ValueError, match="clip_len"):
        FimaClipPairSampler(clip_len=0)


def test_pair_sampler_loops_short_videos(videos: dict[str, Path]) -> None:
    reader = VideoReader(videos["short"])  # 5 frames
    frames = reader.get_clip(0, 5)
    loop = FimaClipPairSampler(clip_len=8)(reader, _gen(0))
    assert torch.equal(loop[0], frames[[0, 1, 2, 3, 4, 0, 1, 2]])
    repeat = FimaClipPairSampler(clip_len=8, short="repeat")(reader, _gen(0))
    assert torch.equal(repeat[1], frames[[0, 1, 2, 3, 4, 4, 4, 4]])


def _check_box_matches_pixels(view: torch.Tensor, box: torch.Tensor, h: int, w: int) -> None:
    """Columns/rows of a resized crop of the coordinate clip lie where the normalised box says.

    For output column j of S, the source x is ``(x1 + (x2 - x1) * (j + 0.5) / S) * W - 0.5``;
    this holds for flipped crops too because the flip swaps x1 and x2.
    """
    s = view.shape[-1]
    j = torch.arange(2, s - 2, dtype=torch.float32)
    x1, y1, x2, y2 = box.tolist()
    exp_x = (x1 + (x2 - x1) * (j + 0.5) / s) * w - 0.5
    exp_y = (y1 + (y2 - y1) * (j + 0.5) / s) * h - 0.5
    got_x = view[0, 0, s // 2, 2 : s - 2] * 255 / 2
    got_y = view[1, 0, 2 : s - 2, s // 2] * 255 / 2
    assert torch.allclose(got_x, exp_x, atol=0.75), (got_x, exp_x)
    assert torch.allclose(got_y, exp_y, atol=0.75), (got_y, exp_y)


def test_fima_view_boxes_match_cropped_pixels_and_flip_swaps_x() -> None:
    clip = coordinate_clip(8, 60, 90)
    pair = torch.stack([clip, clip])
    tf = FimaViewTransform(size=24, clip_len=8, jitter_p=0, grayscale_p=0, blur_p=0, mean=(0, 0, 0), std=(1, 1, 1))
    flipped_seen = unflipped_seen = 0
    for seed in range(12):
        out = tf(pair, generator=_gen(seed))
        for c in range(2):
            box = out["boxes"][c]
            _check_box_matches_pixels(out["rgb_global"][c], box, 60, 90)
            if box[0] > box[2]:
                flipped_seen += 1
                assert out["rgb_global"][c][0, 0, 12, 3] > out["rgb_global"][c][0, 0, 12, 20]  # x decreases
            else:
                unflipped_seen += 1
            # global view = every 2nd frame (B channel encodes the frame index)
            torch.testing.assert_close(out["rgb_global"][c][2, :, 5, 5] * 255, torch.arange(0, 8, 2) * 10.0,
                                       atol=1e-3, rtol=0)
            # difference view of the same crop, computed before colour augmentation
            torch.testing.assert_close(out["diff_global"][c], frame_difference(out["rgb_global"][c]))
            # local views: first / second half of the clip
            local = out["diff_local"][c]
            assert torch.allclose(local[0][2, 1:], torch.full_like(local[0][2, 1:], 0.5 + 10 / 255 / 2))
            assert torch.allclose(local[0][2, 0], torch.full_like(local[0][2, 0], 0.5 - 30 / 255 / 2))
    assert flipped_seen and unflipped_seen


def test_fima_view_shapes_general_clip_len() -> None:
    for length, size in [(16, 32), (32, 16)]:
        pair = torch.randint(0, 256, (2, length, 40, 48, 3), dtype=torch.uint8)
        out = FimaViewTransform(size=size, clip_len=length)(pair, generator=_gen(0))
        assert out["rgb_global"].shape == (2, 3, length // 2, size, size)
        assert out["diff_global"].shape == (2, 3, length // 2, size, size)
        assert out["diff_local"].shape == (2, 2, 3, length // 2, size, size)
        assert out["boxes"].shape == (2, 4)
    with pytest.raises(ValueError, match="16"):
        FimaViewTransform(size=16, clip_len=16)(torch.zeros(2, 8, 20, 20, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="even"):
        FimaViewTransform(clip_len=7)
