"""Frame-exact random access to one video file: :class:`VideoReader`.

The reader's jobs are split over the package: :mod:`~fima_models.video.index` finds where each
frame is, :mod:`~fima_models.video.decode` fetches and verifies the pictures, and this module
serves them by frame index, on the file's own timeline or resampled to a target rate.
"""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fima_models._utils import clip_span
from fima_models.video.container import VideoFile, check_path
from fima_models.video.decode import FrameDecoder, IndexMismatch
from fima_models.video.errors import VideoDecodeError
from fima_models.video.index import TIMESTAMPS, FrameIndex, decode_pass, load_index, measured_fps

__all__ = ["VideoReader"]

_logger = logging.getLogger(__name__)

#: Rate assumed when a file neither states one nor has timestamps to measure it from.
_FALLBACK_FPS = 25.0


class VideoReader:
    """Random access to the frames of one video file.

    Args:
        path: video file.
        fps: optional target frame rate; frame indices then refer to the
            resampled timeline (source frames are repeated or skipped).
        threads: decoder threads; 0 lets FFmpeg choose, 1 disables threading
            (often the better choice inside DataLoader workers on few cores).
        thread_type: FFmpeg threading mode: ``"AUTO"``, ``"FRAME"`` or ``"SLICE"``.
        strict: ask the decoder to fail on bitstream errors (``err_detect=explode``)
            instead of concealing them; frames flagged corrupt are rejected either way.
        rotate: apply the file's display rotation (default); False returns the pictures
            as stored.
        frame_index: a :class:`~fima_models.video.FrameIndex`, or its ``to_dict`` form from
            :func:`~fima_models.video.probe_video` / the data set index; skips indexing at open.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        VideoDecodeError: the file is not a readable video, has no frames, or is a directory.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float | None = None,
        threads: int = 0,
        thread_type: str = "AUTO",
        strict: bool = True,
        rotate: bool = True,
        frame_index: FrameIndex | dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        check_path(self.path)
        if fps is not None and fps <= 0:
            raise ValueError(f"target fps must be positive, got {fps}")
        self.threads = int(threads)
        self.thread_type = thread_type
        self.strict = strict
        self.rotate = rotate
        self.target_fps = float(fps) if fps is not None else None
        self._file = VideoFile(self.path, self.threads, thread_type, strict)
        try:
            self._index = load_index(self._file, frame_index)
            self._configure()
        except BaseException:
            self._file.rewind()
            raise

    def _configure(self) -> None:
        """Sizes, timing and the decoder of the current index."""
        index = self._index
        if index.num_frames == 0:
            raise VideoDecodeError(self.path, "the video stream contains no frames")
        stream = self._file.open().streams.video[0]
        self._time_base = stream.time_base or Fraction(1, 1)
        height, width = int(stream.codec_context.height), int(stream.codec_context.width)
        if height <= 0 or width <= 0:
            raise VideoDecodeError(self.path, "the video stream has no frame size")
        self.rotation = index.rotation
        quarter_turns = (index.rotation // 90) % 4 if self.rotate else 0
        self.height, self.width = (width, height) if quarter_turns % 2 else (height, width)
        self._decoder = FrameDecoder(self._file, index, quarter_turns)
        nominal = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = measured_fps(index.pts, self._time_base) or (float(nominal) if nominal else _FALLBACK_FPS)
        self._source_fps = fps
        self._source_duration = index.num_frames / fps
        self._resample_map = self._build_resample_map() if self.target_fps is not None else None

    def _build_resample_map(self) -> np.ndarray:
        """Source frame index for every frame of the target-fps timeline.

        Frame ``j`` is the source frame shown at time ``j / fps``: the latest one whose timestamp
        is at or before that time (files with untrusted timestamps are taken as constant-rate).
        """
        assert self.target_fps is not None
        n = self._index.num_frames
        if self._index.mode == TIMESTAMPS:
            p0 = self._index.pts[0]
            times = np.array([float((p - p0) * self._time_base) for p in self._index.pts])  # type: ignore[operator]
        else:
            times = np.arange(n) / self._source_fps  # untrusted timestamps: constant rate
        count = max(1, int(np.floor(self._source_duration * self.target_fps + 1e-6)))
        wanted = np.arange(count) / self.target_fps
        return np.clip(np.searchsorted(times, wanted + 1e-9, side="right") - 1, 0, n - 1)

    # ------------------------------------------------------------------ metadata
    @property
    def frame_index(self) -> FrameIndex:
        """The index frames are served from."""
        return self._index

    @property
    def fast_seek(self) -> bool:
        """Whether frame order comes from the container's timestamps (no decode pass was needed)."""
        return self._index.mode == TIMESTAMPS

    @property
    def num_frames(self) -> int:
        """Number of frames :meth:`get_clip` can serve (after resampling, if any)."""
        if self._resample_map is not None:
            return int(len(self._resample_map))
        return self._index.num_frames

    @property
    def fps(self) -> float:
        """Frame rate of the served timeline (target fps, or the measured source rate)."""
        return self.target_fps if self.target_fps is not None else self._source_fps

    @property
    def duration(self) -> float:
        """Duration in seconds (number of served frames divided by :attr:`fps`)."""
        return self.num_frames / self.fps

    @property
    def source_num_frames(self) -> int:
        """Number of decodable frames in the file itself."""
        return self._index.num_frames

    def __len__(self) -> int:
        return self.num_frames

    def __repr__(self) -> str:
        return (
            f"VideoReader('{self.path}', num_frames={self.num_frames}, fps={self.fps:.3f}, "
            f"size={self.width}x{self.height})"
        )

    # ------------------------------------------------------------------ access
    def get_clip(self, start: int, clip_len: int, step: int = 1) -> torch.Tensor:
        """Decode frames ``start, start + step, ...`` (``clip_len`` of them).

        Args:
            start: index of the first frame, ``0 <= start < self.num_frames``.
            clip_len: number of frames to return (>= 1).
            step: stride between frames (>= 1).

        Returns:
            uint8 tensor ``[clip_len, H, W, 3]``, RGB, native resolution, upright.

        Raises:
            IndexError: a requested index lies outside ``[0, num_frames)``.
            VideoDecodeError: decoding failed or produced corrupt/missing frames.
        """
        if clip_len < 1 or step < 1:
            raise ValueError(f"clip_len and step must be >= 1, got clip_len={clip_len}, step={step}")
        last = start + clip_span(clip_len, step) - 1
        if start < 0 or last >= self.num_frames:
            raise IndexError(
                f"clip frames {start}..{last} (step {step}) outside '{self.path}' which has "
                f"{self.num_frames} frames; use a clip sampler to pick valid indices"
            )
        return self.get_frames(list(range(start, last + 1, step)))

    def get_frames(self, indices: list[int] | np.ndarray) -> torch.Tensor:
        """Decode an arbitrary, possibly repeating, list of frame indices.

        Args:
            indices: frame indices in ``[0, num_frames)`` (any order, repeats allowed).

        Returns:
            uint8 tensor ``[len(indices), H, W, 3]``.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            return torch.empty((0, self.height, self.width, 3), dtype=torch.uint8)
        if idx.min() < 0 or idx.max() >= self.num_frames:
            raise IndexError(f"frame indices must lie in [0, {self.num_frames}) for '{self.path}'")
        try:
            src, decoded = self._decode_indices(idx)
        except IndexMismatch as exc:
            self._switch_to_decoded_index(str(exc))
            if idx.max() >= self.num_frames:
                raise VideoDecodeError(
                    self.path, f"frame {int(idx.max())} does not exist: the file has {self.num_frames} decodable "
                    "frames, fewer than its packets promised",
                    hint="Open the file again (or rebuild the data set index) to get the real frame count.") from None
            src, decoded = self._decode_indices(idx)
        unique = np.unique(src)
        out = np.empty((idx.size, self.height, self.width, 3), dtype=np.uint8)
        pos = np.searchsorted(unique, src)
        for k, p in enumerate(pos):
            out[k] = decoded[int(p)]
        return torch.from_numpy(out)

    def _decode_indices(self, idx: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Source frames of served indices ``idx`` and the decoded pictures of their sorted unique set."""
        src = self._resample_map[idx] if self._resample_map is not None else idx
        return src, self._decoder.decode(np.unique(src).tolist())

    def _switch_to_decoded_index(self, why: str) -> None:
        """The timestamps misled: index by decoding, keep serving (logged once per reader)."""
        _logger.warning("%s: %s; indexing the frames by decoding the file once", self.path, why)
        old_count = self._index.num_frames
        self._index = decode_pass(self._file, f"timestamps disagree with decoding ({why})")
        self._configure()
        if self._index.num_frames != old_count:
            _logger.warning("%s: %d decodable frames, not %d as the packets claim", self.path,
                            self._index.num_frames, old_count)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Release the file handle (the reader reopens it on the next access)."""
        self._file.rewind()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass
