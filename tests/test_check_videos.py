"""Tests of ``fima-models check-videos``: per-file verdicts, the JSON report, exit status, inputs."""

from __future__ import annotations

import json
from pathlib import Path

import av
import pytest

from fima_models.cli import main
from tests.media import HARD_CASES, make_frames, write_video


def _decoded_count(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small collection: a plain H.264 file, a misleading-timestamp file, a rotated one and a fake video."""
    root = tmp_path_factory.mktemp("videos")
    (root / "nested").mkdir()
    write_video(root / "plain.mp4", make_frames(20, 32, 32, seed=1), fps=25, codec="libx264", gop=5)
    HARD_CASES["decode-order-pts.mkv"](root / "nested")
    HARD_CASES["rotated-90.mp4"](root)
    (root / "nested" / "bframes-source.mp4").unlink()  # the hard case's intermediate file
    (root / "fake.avi").write_text("not a video\n")
    return root


def _report(tmp_path: Path, *args: str) -> tuple[int, dict]:
    out = tmp_path / "report.json"
    status = main(["check-videos", *args, "--json", str(out), "--no-progress"])
    return status, json.loads(out.read_text(encoding="utf-8"))


def test_report_per_file(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, report = _report(tmp_path, str(folder), "--workers", "0")
    assert status == 1  # fake.avi is bad
    rows = {Path(row["file"]).name: row for row in report["files"]}
    assert sorted(rows) == ["decode-order-pts.mkv", "fake.avi", "plain.mp4", "rotated-90.mp4"]
    assert report["summary"] == {"files": 4, "ok": 3, "bad": 1, "decode_pass_index": 1, "strict": True}
    assert not rows["fake.avi"]["ok"] and "not a readable media file" in rows["fake.avi"]["reason"]
    plain = rows["plain.mp4"]
    assert plain["ok"] and plain["fast_seek"] and plain["reason"] == ""
    assert (plain["num_frames"], plain["claimed_frames"], plain["codec"]) == (20, 20, "h264")
    assert plain["fps"] == pytest.approx(25.0) and plain["duration"] == pytest.approx(0.8)
    misleading = rows["decode-order-pts.mkv"]
    assert not misleading["fast_seek"] and "decode order" in misleading["reason"]
    assert misleading["num_frames"] == _decoded_count(folder / "nested" / "decode-order-pts.mkv")
    rotated = rows["rotated-90.mp4"]
    assert rotated["rotation"] == 90 and (rotated["height"], rotated["width"]) == (48, 32)  # stored 32x48
    table = capsys.readouterr().out
    assert "BAD" in table and "fake.avi" in table and "3 of 4 files readable exactly" in table


def test_workers_and_list_file_give_the_same_report(folder: Path, tmp_path: Path) -> None:
    listing = tmp_path / "videos.txt"
    listing.write_text(f"# two of them\n{folder / 'plain.mp4'}\n\n{folder / 'nested' / 'decode-order-pts.mkv'}\n")
    status, serial = _report(tmp_path, str(listing), "--workers", "0")
    assert status == 0 and serial["summary"]["ok"] == 2
    status, parallel = _report(tmp_path, str(listing), "--workers", "2")
    assert status == 0 and parallel == serial


def test_missing_files_and_directories_named_like_videos(tmp_path: Path) -> None:
    (tmp_path / "clip.mp4").mkdir()
    status, report = _report(tmp_path, str(tmp_path / "clip.mp4"), str(tmp_path / "gone.mp4"))
    assert status == 1
    reasons = {Path(row["file"]).name: row["reason"] for row in report["files"]}
    assert "a directory, not a video file" in reasons["clip.mp4"]
    assert "not found" in reasons["gone.mp4"]


def test_packed_bframes_file(real_videos: dict[str, Path], tmp_path: Path) -> None:
    status, report = _report(tmp_path, str(real_videos["Megamind.avi"]), str(real_videos["tree.avi"]))
    assert status == 0
    rows = {Path(row["file"]).name: row for row in report["files"]}
    assert not rows["Megamind.avi"]["fast_seek"] and "packed B-frames" in rows["Megamind.avi"]["reason"]
    assert rows["Megamind.avi"]["num_frames"] == _decoded_count(real_videos["Megamind.avi"])
    tree = rows["tree.avi"]  # the AVI header claims more frames than the file holds
    assert tree["num_frames"] == _decoded_count(real_videos["tree.avi"]) < tree["claimed_frames"]


def test_bad_arguments(tmp_path: Path) -> None:
    assert main(["check-videos", str(tmp_path), "--workers", "-1"]) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    status, report = _report(tmp_path, str(empty))
    assert status == 1 and "holds no video files" in report["files"][0]["reason"]
