"""Encoding RGB frames into a video file with PyAV: :func:`write_video` (tests, demos, benchmarks)."""

from __future__ import annotations

import itertools
import os
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Sequence

import av
import numpy as np

from fima_models._utils import default_file_mode

__all__ = ["write_video"]


def write_video(
    path: str | Path,
    frames: np.ndarray | Iterable[np.ndarray],
    fps: int | float | Fraction = 25,
    codec: str = "libx264",
    gop: int | None = None,
    bframes: int | None = 2,
    pts: Sequence[int] | None = None,
    time_base: Fraction | None = None,
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
    rotation: int | None = None,
) -> Path:
    """Encode RGB frames into a video file with PyAV (written atomically).

    Args:
        path: output file; the suffix picks the container (.mp4, .avi, .webm, .mkv).
        frames: uint8 ``[T, H, W, 3]`` RGB frames (H and W even for yuv420p), or an
            iterable of ``[H, W, 3]`` frames (streams long videos without holding them).
        fps: nominal frame rate.
        codec: encoder name, e.g. ``libx264``, ``mpeg4``, ``libvpx-vp9``.
        gop: keyframe interval in frames (None: encoder default).
        bframes: maximum consecutive B-frames (None: encoder default; ignored by VP9).
        pts: explicit presentation timestamps in ``time_base`` units, one per frame,
            for variable-frame-rate files.
        time_base: stream time base used with ``pts`` (default ``1/1000``).
        pix_fmt: encoder pixel format.
        options: extra encoder options.
        container_options: muxer options, e.g. ``{"movflags": "faststart"}`` to put
            the MP4 index first (a truncated copy then still opens).
        rotation: store a display matrix that rotates the pictures this many degrees
            counter-clockwise for display (as phones do); None stores none.

    Returns:
        The written path.

    Raises:
        ValueError: the frames are not RGB ``[H, W, 3]`` images or there are none.
    """
    path = Path(path)
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None or np.ndim(first) != 3 or np.shape(first)[-1] != 3:
        shape = None if first is None else np.shape(first)
        raise ValueError(f"write_video expects RGB frames [T, H, W, 3] (frame shape {shape})")
    stream_frames = itertools.chain([first], iterator)
    rate = Fraction(fps).limit_denominator(1001)
    opts: dict[str, str] = {}
    if codec == "libx264":
        opts.update({"preset": "ultrafast" if bframes == 0 else "veryfast", "sc_threshold": "0"})
        if bframes is not None:
            opts["bf"] = str(bframes)
        if gop is not None:
            opts["keyint_min"] = str(gop)
    if codec == "libvpx-vp9":
        opts.update({"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"})
    opts.update(options or {})
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    # mkstemp creates 0600; the video gets the permissions an ordinary open() would give.
    os.fchmod(fd, default_file_mode())
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _encode(tmp, stream_frames, np.shape(first), rate, codec, gop, bframes, pts, time_base, pix_fmt, opts,
                container_options, rotation)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _encode(
    path: Path,
    frames: Iterable[np.ndarray],
    shape: tuple[int, ...],
    rate: Fraction,
    codec: str,
    gop: int | None,
    bframes: int | None,
    pts: Sequence[int] | None,
    time_base: Fraction | None,
    pix_fmt: str,
    opts: dict[str, str],
    container_options: dict[str, str] | None,
    rotation: int | None,
) -> None:
    """Mux ``frames`` into ``path`` (helper of :func:`write_video`)."""
    fmt = {".mp4": "mp4", ".avi": "avi", ".webm": "webm", ".mkv": "matroska", ".mov": "mov"}.get(path.suffix.lower())
    with av.open(str(path), mode="w", format=fmt, options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=rate, options=opts)
        stream.height, stream.width = int(shape[0]), int(shape[1])
        stream.pix_fmt = pix_fmt
        if rotation is not None:
            stream.set_display_rotation(rotation)
        if gop is not None:
            stream.codec_context.gop_size = gop
        if bframes is not None and codec != "libx264" and codec.startswith(("mpeg", "h26")):
            stream.codec_context.max_b_frames = bframes
        tb = time_base or Fraction(1, 1000)
        if pts is not None:
            stream.time_base = tb
            stream.codec_context.time_base = tb
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img, dtype=np.uint8), format="rgb24")
            if pts is not None:
                frame.pts = int(pts[i])
                frame.time_base = tb
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
