"""Helpers that synthesise and encode small test videos with PyAV.

Other test modules import these, e.g.::

    from tests.media import make_frames, write_video
    frames = make_frames(num_frames=24, height=48, width=64, seed=0)
    write_video(tmp_path / "clip.mp4", frames, fps=25, codec="libx264", gop=8)

Every frame produced by :func:`make_frames` carries a distinct pattern, so a clip
decoded from the wrong position never matches by accident.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np

__all__ = ["make_frames", "write_video", "codec_available", "CONTAINER_CODECS"]

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


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: int | float | Fraction = 25,
    codec: str = "libx264",
    gop: int | None = None,
    bframes: int | None = 2,
    pts: Sequence[int] | None = None,
    time_base: Fraction | None = None,
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
) -> Path:
    """Encode ``frames`` into a real video file with PyAV.

    Args:
        path: output file; the suffix picks the container (.mp4, .avi, .webm, .mkv).
        frames: uint8 ``[T, H, W, 3]`` RGB frames (H and W even for yuv420p).
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

    Returns:
        The written path.
    """
    path = Path(path)
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
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
    with av.open(str(path), mode="w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=rate, options=opts)
        stream.width = frames.shape[2]
        stream.height = frames.shape[1]
        stream.pix_fmt = pix_fmt
        if gop is not None:
            stream.codec_context.gop_size = gop
        if bframes is not None and codec != "libx264" and codec.startswith(("mpeg", "h26")):
            stream.codec_context.max_b_frames = bframes
        tb = time_base or Fraction(1, 1000)
        if pts is not None:
            stream.time_base = tb
            stream.codec_context.time_base = tb
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if pts is not None:
                frame.pts = int(pts[i])
                frame.time_base = tb
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
