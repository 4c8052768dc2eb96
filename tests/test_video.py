"""Tests of fima_models.video: frame-exact clips, metadata, resampling and broken files."""

from __future__ import annotations

import os
import pickle
import stat
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

import fima_models.video.decode as decode_module
from fima_models.video import FrameIndex, VideoDecodeError, VideoReader, probe_video
from fima_models.video.decode import FrameDecoder
from tests.media import CONTAINER_CODECS, HARD_CASES, codec_available, make_frames, write_video

NUM_FRAMES = 60
GOP = 10


def full_decode(path: Path) -> np.ndarray:
    """Reference: every frame of a plain sequential PyAV decode."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module", params=CONTAINER_CODECS, ids=[c for _, c in CONTAINER_CODECS])
def encoded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    suffix, codec = request.param
    if not codec_available(codec):
        pytest.skip(f"encoder {codec} not available in this FFmpeg build")
    path = tmp_path_factory.mktemp("enc") / f"clip{suffix}"
    write_video(path, make_frames(NUM_FRAMES, 48, 64, seed=3), fps=25, codec=codec, gop=GOP, bframes=2)
    return path, full_decode(path)


def test_metadata(encoded: tuple[Path, np.ndarray]) -> None:
    path, ref = encoded
    with VideoReader(path) as reader:
        assert reader.num_frames == len(ref) == NUM_FRAMES
        assert (reader.height, reader.width) == (48, 64)
        assert reader.fps == pytest.approx(25.0, rel=1e-3)
        assert reader.duration == pytest.approx(NUM_FRAMES / 25.0, rel=1e-3)
    assert probe_video(path)["num_frames"] == NUM_FRAMES


def test_random_clips_equal_full_decode(encoded: tuple[Path, np.ndarray]) -> None:
    path, ref = encoded
    rng = np.random.default_rng(0)
    reader = VideoReader(path)
    for _ in range(40):
        step = int(rng.integers(1, 5))
        n = int(rng.integers(1, 14))
        start = int(rng.integers(0, NUM_FRAMES - (n - 1) * step))
        clip = reader.get_clip(start, n, step)
        assert clip.dtype == torch.uint8 and clip.shape == (n, 48, 64, 3)
        np.testing.assert_array_equal(clip.numpy(), ref[start : start + (n - 1) * step + 1 : step])
    # the very last frames (decoder flush) and the very first one
    np.testing.assert_array_equal(reader.get_clip(NUM_FRAMES - 3, 3).numpy(), ref[-3:])
    np.testing.assert_array_equal(reader.get_clip(0, 1).numpy(), ref[:1])


def test_arbitrary_indices_and_threads(encoded: tuple[Path, np.ndarray]) -> None:
    path, ref = encoded
    idx = [57, 3, 3, 30, 0, 44, 12, 59]
    for threads in (1, 2):
        frames = VideoReader(path, threads=threads).get_frames(idx)
        np.testing.assert_array_equal(frames.numpy(), ref[idx])


def count_decoded_pictures(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the pictures the reader decodes from now on; the count is element 0 of the returned list."""
    decoded = [0]
    frames_gen = decode_module.decoded_frames

    def counting_frames(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        for frame in frames_gen(*args, **kwargs):
            decoded[0] += 1
            yield frame

    monkeypatch.setattr(decode_module, "decoded_frames", counting_frames)
    return decoded


def test_clip_never_decodes_whole_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_video(tmp_path / "long.mp4", make_frames(200, 32, 32, seed=1), codec="libx264", gop=GOP)
    reader = VideoReader(path)
    assert reader.fast_seek
    decoded = count_decoded_pictures(monkeypatch)
    clip = reader.get_clip(170, 8)
    assert clip.shape[0] == 8
    assert decoded[0] <= 8 + 2 * GOP, f"decoded {decoded[0]} frames to fetch 8"
    # two clips far apart: one seek each, not the stretch in between
    decoded[0] = 0
    reader.get_frames([5, 6, 190, 191])
    assert decoded[0] <= 4 + 4 * GOP, f"decoded {decoded[0]} frames to fetch 4 in two places"


def make_seeks_overshoot(monkeypatch: pytest.MonkeyPatch, overshoots: int) -> list[int | None]:
    """Simulate a demuxer that lands after the clip for the first ``overshoots`` seeks.

    Returns the list the seek points tried from now on are appended to (None: start of file).
    """
    seeks: list[int | None] = []
    left = [overshoots]
    decode_after_seek = FrameDecoder._decode_after_seek

    def overshooting(self, seek_point, first, last, wanted, result):  # type: ignore[no-untyped-def]
        seeks.append(seek_point)
        if seek_point is not None and left[0] > 0:
            left[0] -= 1
            return "overshot"
        return decode_after_seek(self, seek_point, first, last, wanted, result)

    monkeypatch.setattr(FrameDecoder, "_decode_after_seek", overshooting)
    return seeks


@pytest.mark.parametrize("overshoots", [1, 10])
def test_seek_overshoot_recovers_exactly(encoded: tuple[Path, np.ndarray], overshoots: int,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path, ref = encoded
    reader = VideoReader(path)
    seeks = make_seeks_overshoot(monkeypatch, overshoots)
    clip = reader.get_clip(42, 6)
    np.testing.assert_array_equal(clip.numpy(), ref[42:48])
    keys = [k for k in seeks if k is not None]
    assert keys == sorted(keys, reverse=True) and len(set(keys)) == len(keys)  # each retry seeks earlier
    if overshoots > 3:
        assert seeks[-1] is None  # fell back to decoding from the start


def test_variable_frame_rate_and_resampling(tmp_path: Path) -> None:
    frames = make_frames(30, 32, 32, seed=5)
    gaps = np.random.default_rng(0).integers(15, 90, size=29)
    pts = np.concatenate([[0], np.cumsum(gaps)])  # milliseconds
    path = write_video(tmp_path / "vfr.mp4", frames, fps=25, codec="libx264", gop=6, pts=pts,
                       time_base=Fraction(1, 1000))
    ref = full_decode(path)
    reader = VideoReader(path)
    assert reader.num_frames == len(ref) == 30
    np.testing.assert_array_equal(reader.get_clip(0, 30).numpy(), ref)
    np.testing.assert_array_equal(reader.get_clip(4, 6, 4).numpy(), ref[4:25:4])
    assert reader.fps == pytest.approx(29 / (pts[-1] / 1000.0), rel=1e-3)
    # resampled to 10 fps: frame j shows the source frame on screen at j / 10 s
    rs = VideoReader(path, fps=10)
    times = pts / 1000.0
    assert rs.num_frames == int(np.floor(30 / reader.fps * 10 + 1e-6))
    for j in range(rs.num_frames):
        src = int(np.searchsorted(times, j / 10 + 1e-9, side="right") - 1)
        np.testing.assert_array_equal(rs.get_clip(j, 1).numpy()[0], ref[src])


def test_resample_constant_rate(encoded: tuple[Path, np.ndarray]) -> None:
    path, ref = encoded
    half = VideoReader(path, fps=12.5)
    assert half.num_frames == NUM_FRAMES // 2 and half.fps == 12.5
    np.testing.assert_array_equal(half.get_clip(0, half.num_frames).numpy(), ref[::2])
    double = VideoReader(path, fps=50)
    np.testing.assert_array_equal(double.get_clip(10, 6).numpy(), ref[[5, 5, 6, 6, 7, 7]])


def test_pickle_and_reuse(encoded: tuple[Path, np.ndarray]) -> None:
    path, ref = encoded
    reader = VideoReader(path)
    reader.get_clip(0, 2)
    clone = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(clone.get_clip(20, 4, 2).numpy(), ref[20:27:2])
    reader.close()
    np.testing.assert_array_equal(reader.get_clip(50, 3).numpy(), ref[50:53])


def test_bad_arguments(encoded: tuple[Path, np.ndarray]) -> None:
    reader = VideoReader(encoded[0])
    with pytest.raises(IndexError, match="outside"):
        reader.get_clip(NUM_FRAMES - 2, 4)
    with pytest.raises(ValueError):
        reader.get_clip(0, 0)
    with pytest.raises(ValueError):
        VideoReader(encoded[0], fps=0)


# --------------------------------------------------------------------------- broken files
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        VideoReader(tmp_path / "nope.mp4")


@pytest.mark.parametrize("content", [b"", b"this is not a video\n" * 50, bytes(range(256)) * 40],
                         ids=["empty", "text", "random-bytes"])
def test_unreadable_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoDecodeError, match="bad.mp4") as info:
        VideoReader(path)
    assert info.value.path == str(path) and info.value.reason
    err = pickle.loads(pickle.dumps(info.value))  # crosses DataLoader worker boundaries intact
    assert err.path == str(path) and err.reason == info.value.reason


def test_truncated_mp4_index_at_end(tmp_path: Path) -> None:
    src = write_video(tmp_path / "full.mp4", make_frames(60, 32, 32), codec="libx264", gop=GOP)
    data = src.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 6 // 10])  # moov atom lost
    with pytest.raises(VideoDecodeError, match="cut.mp4"):
        VideoReader(cut)


def test_truncated_faststart_mp4_serves_only_complete_frames(tmp_path: Path) -> None:
    src = write_video(tmp_path / "full.mp4", make_frames(80, 32, 32), codec="libx264", gop=GOP,
                      container_options={"movflags": "faststart"})
    ref = full_decode(src)
    data = src.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 6 // 10])
    with av.open(str(cut)) as c:
        assert c.streams.video[0].frames == 80  # the container still claims every frame
    reader = VideoReader(cut)
    assert 0 < reader.num_frames < 80
    clip = reader.get_clip(0, reader.num_frames)  # every counted frame can be served
    np.testing.assert_array_equal(clip.numpy(), ref[: reader.num_frames])
    probed = probe_video(cut)  # the decode pass ends where the reader's count does
    assert probed["num_frames"] == reader.num_frames and probed["fast_seek"]


def test_corrupt_bytes_raise_instead_of_wrong_frames(tmp_path: Path) -> None:
    src = write_video(tmp_path / "ok.mp4", make_frames(60, 48, 64), codec="libx264", gop=GOP)
    data = bytearray(src.read_bytes())
    rng = np.random.default_rng(0)
    for i in rng.integers(len(data) // 5, len(data) * 3 // 5, size=30):
        data[i] = int(rng.integers(0, 256))
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(bytes(data))
    with pytest.raises(VideoDecodeError, match="corrupt.mp4"):
        reader = VideoReader(bad)
        reader.get_clip(0, reader.num_frames)


def test_text_with_video_suffix_in_probe(tmp_path: Path) -> None:
    path = tmp_path / "notes.avi"
    path.write_text("hello")
    with pytest.raises(VideoDecodeError, match="notes.avi"):
        probe_video(path)


def test_write_video_streams_iterables_and_validates(tmp_path: Path) -> None:
    frames = make_frames(6, 16, 16, seed=9)
    path = write_video(tmp_path / "gen.mkv", (f for f in frames), fps=10, codec="libx264", gop=3)
    assert VideoReader(path).num_frames == 6 and not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(ValueError, match="T, H, W, 3"):
        write_video(tmp_path / "none.mp4", np.zeros((0, 16, 16, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="T, H, W, 3"):
        write_video(tmp_path / "gray.mp4", np.zeros((2, 16, 16), dtype=np.uint8))
    assert not (tmp_path / "none.mp4").exists()


def test_written_video_follows_the_umask(tmp_path: Path) -> None:
    old_mask = os.umask(0o027)
    try:
        path = write_video(tmp_path / "perm.mp4", make_frames(3, 16, 16, seed=1), fps=10, codec="libx264")
    finally:
        os.umask(old_mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_directory_named_like_a_video(tmp_path: Path) -> None:
    folder = tmp_path / "clip.mp4"
    folder.mkdir()
    for call in (VideoReader, probe_video):
        with pytest.raises(VideoDecodeError, match="a directory, not a video file") as info:
            call(folder)
        assert "not found" not in str(info.value)


# --------------------------------------------------------------------------- rotation
def _rotated_by_hand(stored: np.ndarray, degrees: int) -> np.ndarray:
    """``stored`` [T, H, W, 3] turned counter-clockwise, pixel by pixel (independent of np.rot90)."""
    t, h, w, _ = stored.shape
    out_h, out_w = (w, h) if degrees in (90, 270) else (h, w)
    out = np.empty((t, out_h, out_w, 3), dtype=stored.dtype)
    for i in range(out_h):
        for j in range(out_w):
            source = {0: (i, j), 90: (j, w - 1 - i), 180: (h - 1 - i, w - 1 - j), 270: (h - 1 - j, i)}[degrees]
            out[:, i, j] = stored[:, source[0], source[1]]
    return out


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_display_rotation_is_applied(tmp_path: Path, degrees: int) -> None:
    path = write_video(tmp_path / "phone.mp4", make_frames(12, 16, 24, seed=2), codec="libx264", gop=4,
                       rotation=degrees)
    stored = full_decode(path)  # PyAV returns the pictures as stored
    reader = VideoReader(path)
    assert reader.rotation == degrees and probe_video(path)["rotation"] == degrees
    upright = _rotated_by_hand(stored, degrees)
    assert (reader.height, reader.width) == upright.shape[1:3]
    np.testing.assert_array_equal(reader.get_clip(3, 6).numpy(), upright[3:9])
    as_stored = VideoReader(path, rotate=False)
    assert (as_stored.height, as_stored.width) == (16, 24)
    np.testing.assert_array_equal(as_stored.get_clip(3, 6).numpy(), stored[3:9])


# --------------------------------------------------------------------------- misleading timestamps
@pytest.fixture(scope="module")
def decode_order_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """H.264 with B-frames whose every packet carries its decode time as pts (as some muxers write)."""
    folder = tmp_path_factory.mktemp("decode-order")
    path = HARD_CASES["decode-order-pts.mkv"](folder)
    return path, full_decode(path)


def test_timestamps_that_mislead_at_decode_time_switch_the_index(
    decode_order_file: tuple[Path, np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    path, ref = decode_order_file
    with av.open(str(path)) as container:
        packet_pts = sorted(p.pts for p in container.demux(video=0) if p.size)
    trusted = FrameIndex("timestamps", tuple(packet_pts), (0,))  # what the packets alone suggest
    reader = VideoReader(path, frame_index=trusted)
    with caplog.at_level("WARNING", logger="fima_models.video"):
        np.testing.assert_array_equal(reader.get_clip(30, 8).numpy(), ref[30:38])
    assert not reader.fast_seek and "indexing the frames by decoding" in caplog.text
    assert reader.num_frames == len(ref)
    np.testing.assert_array_equal(reader.get_clip(70, 5, 3).numpy(), ref[70:83:3])


def test_decode_pass_index_still_seeks(decode_order_file: tuple[Path, np.ndarray],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path, ref = decode_order_file
    reader = VideoReader(path)
    assert not reader.fast_seek and len(reader.frame_index.seek_points) > 3
    decoded = count_decoded_pictures(monkeypatch)
    np.testing.assert_array_equal(reader.get_clip(len(ref) - 8, 8).numpy(), ref[-8:])
    assert decoded[0] <= 8 + 3 * 12, f"decoded {decoded[0]} pictures to fetch 8"


def test_stale_decode_pass_index_raises(decode_order_file: tuple[Path, np.ndarray]) -> None:
    path, ref = decode_order_file
    good = VideoReader(path).frame_index
    shifted = FrameIndex("decoded", tuple(p + 1 for p in good.pts), good.seek_points)  # another file's table
    reader = VideoReader(path, frame_index=shifted)
    with pytest.raises(VideoDecodeError, match="decodes differently from its index"):
        reader.get_clip(40, 4)


def test_frames_the_packets_promise_but_never_come(tmp_path: Path) -> None:
    path = write_video(tmp_path / "short.mp4", make_frames(20, 32, 32, seed=6), codec="libx264", gop=5)
    ref = full_decode(path)
    good = VideoReader(path).frame_index
    promised = FrameIndex("timestamps", (*good.pts, int(good.pts[-1]) + 512), good.seek_points)  # one too many
    reader = VideoReader(path, frame_index=promised)
    assert reader.num_frames == 21
    with pytest.raises(VideoDecodeError, match="20 decodable frames"):
        reader.get_clip(20, 1)
    assert reader.num_frames == 20
    np.testing.assert_array_equal(reader.get_clip(15, 5).numpy(), ref[15:20])
