"""Tests of the synthetic motion data generator."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from fima_models.data import build_dataset
from fima_models.data.synthetic import MOTION_CLASSES, dataset_clip, render_motion_clip, write_motion_dataset
from fima_models.video import VideoReader


def _render(name: str, seed: int, frames: int = 16, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    clip = render_motion_clip(name, np.random.default_rng(seed), frames, size)
    return clip.frames, clip.tracks


def test_render_is_deterministic_and_appearance_random() -> None:
    a, ca = _render("MoveLeft", 0)
    b, cb = _render("MoveLeft", 0)
    c, _ = _render("MoveLeft", 1)
    assert a.shape == (16, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.array_equal(ca, cb)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 10  # same motion, different look


def test_at_least_ten_distinct_motions() -> None:
    assert len(MOTION_CLASSES) >= 10
    assert len(set(MOTION_CLASSES.values())) == len(MOTION_CLASSES)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trajectories_follow_the_class_motion(seed: int) -> None:
    def disp(name: str) -> np.ndarray:
        _, tracks = _render(name, seed, frames=24, size=64)
        return (tracks[:, -1, :2] - tracks[:, 0, :2]).mean(0)

    assert disp("MoveLeft")[0] < -10 and abs(disp("MoveLeft")[1]) < 1e-3
    assert disp("MoveRight")[0] > 10
    assert disp("MoveUp")[1] < -10 and disp("MoveDown")[1] > 10
    dr = disp("MoveDownRight")
    assert dr[0] > 5 and dr[1] > 5
    assert disp("MoveRightFast")[0] == pytest.approx(2.2 * disp("MoveRight")[0], rel=1e-5)  # same draws
    assert np.allclose(disp("Static"), 0) and np.allclose(disp("ZoomIn"), 0)
    for name, sign in [("CircleClockwise", 1), ("CircleCounterClockwise", -1)]:
        _, tracks = _render(name, seed, frames=24, size=64)
        p = tracks[0, :, :2] - tracks[0, :, :2].mean(0)
        turn = np.sum(p[:-1, 0] * p[1:, 1] - p[:-1, 1] * p[1:, 0])  # y points down: >0 is clockwise on screen
        assert np.sign(turn) == sign
    _, shake = _render("ShakeHorizontal", seed, frames=24, size=64)
    assert np.ptp(shake[0, :, 0]) > 10 and np.ptp(shake[0, :, 1]) == 0


def test_zoom_changes_object_scale() -> None:
    for seed in range(3):
        _, zin = _render("ZoomIn", seed)
        _, zout = _render("ZoomOut", seed)
        assert (np.diff(zin[..., 2], axis=1) > 0).all() and zin[0, -1, 2] / zin[0, 0, 2] > 1.9
        assert (np.diff(zout[..., 2], axis=1) < 0).all()
        _, moving = _render("MoveLeft", seed)
        assert np.ptp(moving[..., 2]) == 0  # a size of its own, held


def test_write_motion_dataset_ucf101_layout(tmp_path: Path) -> None:
    classes = ["MoveLeft", "MoveRight", "Static"]
    root = write_motion_dataset(tmp_path / "m", classes=classes, videos_per_class=4, num_frames=8, size=32,
                                seed=5, test_fraction=0.25, progress=False)
    train = build_dataset("ucf101", root, split=1, train=True, progress=False)
    test = build_dataset("ucf101", root, split=1, train=False, progress=False)
    assert train.classes == classes and len(train) == 9 and len(test) == 3
    assert not {p for p, _ in train.samples} & {p for p, _ in test.samples}
    test2 = build_dataset("ucf101", root, split=2, train=False, progress=False)
    assert {p for p, _ in test2.samples} != {p for p, _ in test.samples}
    path, label = train.samples[0]
    reader = VideoReader(path)
    assert reader.num_frames == 8 and (reader.height, reader.width) == (32, 32)
    # the encoded video is the rendered clip up to compression error (luma; 4:2:0 chroma is coarser)
    rendered = render_motion_clip(classes[label], _rng_for(5, classes[label], path), 8, 32).frames
    luma = np.array([0.299, 0.587, 0.114])
    decoded = reader.get_clip(0, 8).numpy().astype(np.float64)
    assert np.abs(decoded @ luma - rendered @ luma).mean() < 6
    # dataset_clip renders the same clip again from the data set's parameters, with its object mask
    again_clip = dataset_clip(root, path)
    assert np.array_equal(again_clip.frames, rendered) and again_clip.mask.shape == (8, 32, 32)
    assert np.array_equal(dataset_clip(root, path.relative_to(root / "UCF-101")).frames, rendered)
    with pytest.raises(ValueError, match="not a video"):
        dataset_clip(root, "Teleport/v_Teleport_g01_c01.mp4")

    mtime = path.stat().st_mtime_ns
    assert write_motion_dataset(tmp_path / "m", classes=classes, videos_per_class=4, num_frames=8, size=32,
                                seed=5, test_fraction=0.25, progress=False) == root
    assert path.stat().st_mtime_ns == mtime  # same parameters: reused, not rewritten

    again = write_motion_dataset(tmp_path / "m2", classes=classes, videos_per_class=4, num_frames=8, size=32,
                                 seed=5, test_fraction=0.25, workers=2, progress=False)
    other = again / path.relative_to(root)
    assert torch.equal(VideoReader(other).get_clip(0, 8), reader.get_clip(0, 8))  # workers don't change data


def _rng_for(seed: int, name: str, path: Path) -> np.random.Generator:
    from fima_models.data.synthetic import _clip_rng

    index = int(path.stem.split("_g")[1][:2]) - 1
    return _clip_rng(seed, name, index)


def test_write_motion_dataset_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown motion classes"):
        write_motion_dataset(tmp_path, classes=["Teleport"], progress=False)
    with pytest.raises(ValueError, match="even"):
        write_motion_dataset(tmp_path, size=33, progress=False)


def test_dataset_clip_needs_a_generated_data_set(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="write_motion_dataset"):
        dataset_clip(tmp_path, "MoveLeft/v_MoveLeft_g01_c01.mp4")


@pytest.mark.parametrize("name", ["MoveUp", "ZoomOut", "ShakeHorizontal"])
def test_mask_follows_the_track_and_the_object_stands_out(name: str) -> None:
    for seed in range(3):
        clip = render_motion_clip(name, np.random.default_rng(seed), 16, 64)
        mask = clip.mask
        assert mask.shape == (16, 64, 64) and mask.dtype == bool and mask.any(axis=(1, 2)).all()
        ys, xs = np.mgrid[0:64, 0:64]
        for t in range(16):
            x, y, _ = clip.tracks[0, t]
            inside = mask[t]
            # every shape is point-symmetric about its centre: the mask's centroid is the track
            assert abs(xs[inside].mean() - x) < 1.0 and abs(ys[inside].mean() - y) < 1.0
        luma = clip.frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        assert abs(luma[mask].mean() - luma[~mask].mean()) > 50  # object and background on opposite sides of grey


def _object_stats(name: str, clips: int) -> np.ndarray:
    """Per clip: the object's mean position, size and colour over all frames (what single frames show)."""
    rows = []
    for seed in range(clips):
        clip = render_motion_clip(name, np.random.default_rng([seed, 99]), 16, 32)
        colour = clip.frames[clip.mask].mean(0) / 255.0
        rows.append([*clip.tracks[0, :, :2].mean(0) / 32.0, clip.mask.mean(), *colour])
    return np.array(rows)


@pytest.mark.parametrize("pair", [("MoveUp", "MoveDown"), ("ZoomIn", "ZoomOut"), ("ShakeVertical", "Static")])
def test_single_frames_do_not_tell_reversed_motions_apart(pair: tuple[str, str]) -> None:
    # where the object is, how big it is and its colour are distributed alike for both classes
    a, b = _object_stats(pair[0], 40), _object_stats(pair[1], 40)
    spread = np.sqrt((a.var(0) + b.var(0)) / 40) + 1e-3
    assert (np.abs(a.mean(0) - b.mean(0)) < 4 * spread).all(), (a.mean(0), b.mean(0), spread)


DEMO_CLASSES = ["MoveUp", "MoveDown", "ZoomIn", "ZoomOut", "ShakeHorizontal", "ShakeVertical", "Static"]


def _track_points(seed: int, clips: int, frames_seen: int) -> tuple[np.ndarray, np.ndarray]:
    """Object centre and radius ``(x, y, r)`` at ``frames_seen`` random frames of each clip, with its class."""
    rng = np.random.default_rng(seed)
    points, labels = [], []
    for label, name in enumerate(DEMO_CLASSES):
        for _ in range(clips):
            clip = render_motion_clip(name, rng, 16, 16)
            frames = np.sort(rng.choice(16, frames_seen, replace=False))
            area = clip.mask[frames].sum(axis=(1, 2))
            points.append(np.concatenate([clip.tracks[0, frames, :2], np.sqrt(area)[:, None]], axis=1).ravel())
            labels.append(label)
    return np.array(points), np.array(labels)


def _knn_accuracy(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], k: int = 15) -> float:
    (x_train, y_train), (x_test, y_test) = train, test
    mean, std = x_train.mean(0), x_train.std(0)
    dist = ((((x_test - mean) / std)[:, None, :] - ((x_train - mean) / std)[None]) ** 2).sum(-1)
    votes = y_train[np.argsort(dist, axis=1)[:, :k]]
    predicted = np.array([np.bincount(v, minlength=len(DEMO_CLASSES)).argmax() for v in votes])
    return float((predicted == y_test).mean())


def test_a_single_frame_places_and_sizes_the_object_alike_for_every_demo_class() -> None:
    # where the object is and how large it looks in one frame: a nearest-neighbour classifier on it
    # stays at chance, while four frames of the same clips (the motion) are read easily
    chance, test_clips = 1 / len(DEMO_CLASSES), 60
    one = _knn_accuracy(_track_points(0, 240, 1), _track_points(1, test_clips, 1))
    four = _knn_accuracy(_track_points(0, 240, 4), _track_points(1, test_clips, 4))
    se = np.sqrt(chance * (1 - chance) / (test_clips * len(DEMO_CLASSES)))
    assert one < chance + 3 * se, one
    assert four > 0.6, four


def test_generated_files_and_index_follow_the_umask(tmp_path: Path) -> None:
    old_mask = os.umask(0o027)
    try:
        root = write_motion_dataset(tmp_path / "m", classes=["MoveLeft", "Static"], videos_per_class=4, num_frames=8,
                                    size=32, seed=1, test_fraction=0.25, progress=False)
        build_dataset("ucf101", root, split=1, train=True, progress=False)
    finally:
        os.umask(old_mask)
    written = [root / "ucfTrainTestlist" / "classInd.txt", root / "ucfTrainTestlist" / "trainlist01.txt",
               root / ".fima_index.json", next((root / "UCF-101").rglob("*.mp4"))]
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in written} == {p.name: 0o640 for p in written}
