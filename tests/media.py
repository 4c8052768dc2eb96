"""Helpers that synthesise and encode small test videos with PyAV.

Other test modules import these, e.g.::

    from tests.media import make_frames, write_video
    frames = make_frames(num_frames=24, height=48, width=64, seed=0)
    write_video(tmp_path / "clip.mp4", frames, fps=25, codec="libx264", gop=8)

Every frame produced by :func:`make_frames` carries a distinct pattern, so a clip
decoded from the wrong position never matches by accident.
"""

from __future__ import annotations

import av
import numpy as np

from fima_models.video import write_video

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
