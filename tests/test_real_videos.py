"""The video corpus: real third-party sample videos and hand-made hard cases, read exactly.

For every file, frame ``k`` must be the ``k``-th picture of a plain sequential PyAV decode
(upright where the file stores a display rotation): ``num_frames`` equals the number of
decoded pictures, and 64 clips (single ``get_clip`` calls and batched ``get_frames`` calls,
as feature extraction makes them) match the reference, through the reader, a reader built
from the stored probe, and a data set.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from fima_models.data import build_dataset
from fima_models.data.samplers import ClipSampler
from fima_models.video import VideoDecodeError, VideoReader, probe_video
from tests.media import HARD_CASES, REAL_VIDEOS

REAL = {video.name: video for video in REAL_VIDEOS}
CORPUS = [*REAL, *HARD_CASES]

#: Files whose timestamps cannot give the frame order, with the reason the probe must give.
#: Megamind*: DivX packed B-frames (user data ``DivX503b1393p``); box.mp4 and decode-order-pts.mkv:
#: every packet's pts equals its dts while the H.264 pictures are reordered; decode-order-pts.mp4:
#: the same, and its edit list hides the first pictures so the shown stream starts on a P-frame.
SLOW_PATH = {
    "Megamind.avi": "packed B-frames",
    "Megamind_bugy.avi": "packed B-frames",
    "box.mp4": "decode order",
    "decode-order-pts.mkv": "decode order",
    "decode-order-pts.mp4": "non-key frames",
    "leading-non-key.mkv": "non-key frames",
    "duplicate-pts.mkv": "share a timestamp",
    "missing-pts.h264": "no timestamp",
}
#: Display rotation (degrees counter-clockwise) the files store.
ROTATION = {"rotated-90.mp4": 90}
CLIPS = 64


def _digest(frame: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(frame).tobytes()).hexdigest()


def _upright(frame: np.ndarray, rotation: int) -> np.ndarray:
    """Turn a stored picture ``rotation`` degrees counter-clockwise, by explicit index arithmetic."""
    height, width = frame.shape[:2]
    if rotation == 0:
        return frame
    if rotation == 90:  # the stored top-right corner becomes the top-left one
        rows, cols = np.meshgrid(np.arange(width), np.arange(height), indexing="ij")
        return frame[cols, width - 1 - rows]
    raise AssertionError(f"no test reference for a rotation of {rotation}")


@pytest.fixture(scope="module")
def hard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hard-cases")


_REFERENCES: dict[str, list[str]] = {}


def reference_digests(name: str, path: Path) -> list[str]:
    """Digests of the upright pictures of a plain sequential decode of ``path`` (cached by name)."""
    if name not in _REFERENCES:
        with av.open(str(path)) as container:
            _REFERENCES[name] = [_digest(_upright(f.to_ndarray(format="rgb24"), ROTATION.get(name, 0)))
                                 for f in container.decode(video=0)]
    return _REFERENCES[name]


@pytest.fixture(params=CORPUS)
def corpus_file(request: pytest.FixtureRequest, hard_dir: Path) -> tuple[str, Path, bool, list[str]]:
    """``(name, path, strict, reference digests)`` of one corpus file."""
    name = request.param
    if name in REAL:
        path = request.getfixturevalue("real_videos")[name]
        strict = REAL[name].strict
    else:
        path = hard_dir / name
        if not path.exists():
            HARD_CASES[name](hard_dir)
        strict = True
    return name, path, strict, reference_digests(name, path)


def _random_clips(total: int, count: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    clips = []
    for _ in range(count):
        length, step = int(rng.integers(1, 9)), int(rng.integers(1, 3))
        length = min(length, (total - 1) // step + 1)
        start = int(rng.integers(0, total - (length - 1) * step))
        clips.append(list(range(start, start + (length - 1) * step + 1, step)))
    clips.append([total - 1])  # the last picture (decoder flush)
    return clips


def _assert_clips(reader: VideoReader, reference: list[str], clips: list[list[int]], batch: int) -> None:
    for first in range(0, len(clips), batch):
        group = clips[first : first + batch]
        frames = reader.get_frames([i for clip in group for i in clip]).numpy()
        wanted = [reference[i] for clip in group for i in clip]
        got = [_digest(f) for f in frames]
        bad = [i for clip in group for i in clip]
        assert got == wanted, f"{reader.path.name}: wrong pictures at frames " \
                              f"{[f for f, g, w in zip(bad, got, wanted) if g != w][:8]}"


def test_probe_and_stored_index(corpus_file) -> None:
    name, path, strict, reference = corpus_file
    info = probe_video(path, strict=strict)
    assert info["num_frames"] == len(reference)
    assert info["fast_seek"] == (name not in SLOW_PATH)
    assert SLOW_PATH.get(name, "") in info["reason"]
    assert info["rotation"] == ROTATION.get(name, 0)
    stored = json.loads(json.dumps(info["frame_index"]))  # as the data set index keeps it
    reader = VideoReader(path, strict=strict, frame_index=stored)
    assert reader.num_frames == len(reference)
    assert (reader.height, reader.width) == (info["height"], info["width"])
    _assert_clips(reader, reference, _random_clips(len(reference), 8, seed=1), batch=8)


def test_clips_equal_sequential_decode(corpus_file) -> None:
    name, path, strict, reference = corpus_file
    reader = VideoReader(path, strict=strict, threads=1)
    assert reader.num_frames == len(reference)
    assert reader.fast_seek == (name not in SLOW_PATH)
    clips = _random_clips(len(reference), CLIPS, seed=len(name))
    _assert_clips(reader, reference, clips[:4], batch=1)  # one clip per call: a seek each
    _assert_clips(reader, reference, clips[4:], batch=31)  # many clips per call, as extraction reads them


class _FixedFrames(ClipSampler):
    """Frames 0, the middle one and the last one of whatever video it gets."""

    def indices(self, num_frames: int, generator: torch.Generator | None = None) -> np.ndarray:
        return np.array([0, num_frames // 2, num_frames - 1])


#: Real files the data set test indexes (one of each kind: packed B-frames, over-reported length, plain H.264,
#: and box.mp4, whose bitstream errors only a lenient decoder conceals, so the strict probe reports it).
DATASET_FILES = ("Megamind.avi", "tree.avi", "carphone_distorted.mp4", "box.mp4")


def test_dataset_reads_the_real_files_exactly(real_videos: dict[str, Path], tmp_path: Path) -> None:
    for name in DATASET_FILES:
        (tmp_path / "videos" / "all").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(real_videos[name], tmp_path / "videos" / "all" / name)
    ds = build_dataset("folder", tmp_path / "videos", sampler=_FixedFrames(), progress=False, workers=1)
    assert ds.index is not None and [p.name for p, _ in ds.index.broken] == ["box.mp4"]
    assert "decoding failed" in ds.index.broken[0][1]
    assert sorted(p.name for p, _ in ds.samples) == sorted(set(DATASET_FILES) - {"box.mp4"})
    for i, (path, _) in enumerate(ds.samples):
        reference = reference_digests(path.name, real_videos[path.name])
        frames, _ = ds.load(i)
        assert [_digest(f) for f in frames.numpy()] == [reference[0], reference[len(reference) // 2], reference[-1]]


def test_damaged_copy_of_a_packed_bframes_file_is_reported(real_videos: dict[str, Path], tmp_path: Path) -> None:
    data = bytearray(real_videos["Megamind.avi"].read_bytes())
    rng = np.random.default_rng(0)
    for i in rng.integers(len(data) // 5, len(data) * 3 // 5, size=30):
        data[i] = int(rng.integers(0, 256))
    damaged = tmp_path / "damaged.avi"
    damaged.write_bytes(bytes(data))
    for read in (probe_video, VideoReader):
        with pytest.raises(VideoDecodeError, match="damaged.avi"):
            read(damaged)
