"""Frame-exact video reading with PyAV.

:class:`VideoReader` opens a file, indexes it once and serves clips by frame index::

    reader = VideoReader("clip.mp4")
    clip = reader.get_clip(start=10, num_frames=16, step=2)   # uint8 [16, H, W, 3] RGB, upright

Frame ``i`` is the ``i``-th picture a plain sequential decode of the file yields, whatever
the container's timestamps say (see :mod:`fima_models.video_index` for how each frame is
found). Clips are fetched by seeking to a keyframe at or before the first wanted frame and
decoding forward; what a seek lands on is identified by its keyframe picture and every
following picture's timestamp is checked against the index.

Robustness rules:

* Files whose timestamps cannot give the frame order (DivX packed B-frames, decode-order
  timestamps, missing or duplicate timestamps, leading non-key frames) are indexed by one
  decode pass when opened, logged once with the reason. A picture that comes out where the
  index does not expect it switches the reader to that decode-pass index (timestamp index)
  or to decoding from the start of the file (decode-pass index), logged once.
* Seek overshoot (the demuxer lands after the clip) is detected from the keyframe picture;
  the reader then seeks to an earlier keyframe, and as a last resort decodes from the start.
* A packet the demuxer flags as corrupt (a truncated file's final partial packet) ends the
  usable stream, so ``num_frames`` counts only frames that can be served.
* Decoder errors, pictures the decoder flags as corrupt, and wanted frames that never come
  out raise :class:`VideoDecodeError` naming the file and the reason; no frame is ever
  substituted silently.
* A display matrix (phone videos) is applied: frames come back upright and ``height`` /
  ``width`` describe them; ``rotate=False`` keeps the stored orientation.

With ``fps=...`` the reader resamples to a target frame rate: frame ``j`` is the source frame
shown at time ``j / fps`` (the latest source frame whose timestamp is at or before that time;
files with untrusted timestamps are taken as constant-rate).

:func:`probe_video` indexes a file exactly (demux and decode passes) and reports what the data
set index and ``fima-models check-videos`` show: decodable and claimed frames, rate, size,
codec, rotation and whether the fast timestamp path is exact.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import os
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Sequence

import av
import av.error
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

from fima_models._utils import default_file_mode
from fima_models.video_index import (
    DECODED,
    TIMESTAMPS,
    FrameIndex,
    decode_index,
    decoded_frames,
    describe_error,
    display_rotation,
    measured_fps,
    probe_index,
    scan_packets,
)

__all__ = ["VideoReader", "VideoDecodeError", "VideoInfo", "FrameIndex", "probe_video", "write_video"]

_LOGGER = logging.getLogger(__name__)

#: How many progressively earlier keyframes to try before decoding from the start.
_MAX_SEEK_RETRIES = 3
#: A new seek is made between two wanted frames only when it skips more frames than this.
_MIN_SKIP_TO_SEEK = 8
#: Rate assumed when a file neither states one nor has timestamps to measure it from.
_FALLBACK_FPS = 25.0


class VideoDecodeError(RuntimeError):
    """A video file cannot be opened or decoded correctly.

    Attributes:
        path: the offending file.
        reason: what went wrong.
        hint: what the user can do about it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        reason: str,
        hint: str = "Re-encode or re-download the file, or exclude it from the data set.",
    ) -> None:
        self.path = str(path)
        self.reason = reason
        self.hint = hint
        super().__init__(f"cannot decode video '{self.path}': {reason}. {hint}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.reason, self.hint))


class VideoInfo(dict):
    """Metadata of one probed video (see :func:`probe_video` for the keys)."""


def probe_video(path: str | os.PathLike[str], strict: bool = True) -> VideoInfo:
    """Index a video exactly (demux pass and one decode pass) and describe it.

    Args:
        path: video file.
        strict: as for :class:`VideoReader` (False accepts pictures the decoder concealed errors in).

    Returns:
        A :class:`VideoInfo` with ``num_frames`` (decodable frames), ``claimed_frames`` (what
        the container states, 0 when it states nothing), ``packets``, ``fps``, ``duration``,
        ``height`` and ``width`` (upright), ``codec``, ``rotation`` (degrees), ``fast_seek``
        (whether frame order can be taken from the timestamps), ``reason`` (why not) and
        ``frame_index`` (the index in :meth:`FrameIndex.to_dict` form, which
        :class:`VideoReader` accepts to skip indexing).

    Raises:
        FileNotFoundError: the file does not exist.
        VideoDecodeError: the file is unreadable or holds no decodable frame.
    """
    _check_path(Path(path))
    opener = _Opener(Path(path), threads=1, thread_type="AUTO", strict=strict)
    container = opener.open()
    try:
        index, scan = probe_index(container, opener.open, path)
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(path, f"decoding failed ({describe_error(exc)})") from exc
    except ValueError as exc:
        raise VideoDecodeError(path, str(exc)) from exc
    finally:
        opener.close_all()
    with VideoReader(path, threads=1, strict=strict, frame_index=index) as reader:
        stream = reader._open().streams.video[0]
        info = VideoInfo(
            num_frames=reader.num_frames,
            claimed_frames=int(stream.frames or 0),
            packets=scan.packets,
            fps=reader.fps,
            duration=reader.duration,
            height=reader.height,
            width=reader.width,
            codec=stream.codec_context.name,
            rotation=index.rotation,
            fast_seek=index.mode == TIMESTAMPS,
            reason=index.reason,
            frame_index=index.to_dict(),
        )
    return info


def _check_path(path: Path) -> None:
    if path.is_dir():
        raise VideoDecodeError(path, "it is a directory, not a video file",
                               hint="Pass the video files inside it, or correct the path.")
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: '{path}'. Check the path or the data set root.")


class _Opener:
    """Opens the file's container with the decoder configured (threads, strictness)."""

    def __init__(self, path: Path, threads: int, thread_type: str, strict: bool) -> None:
        self.path = path
        self.threads = threads
        self.thread_type = thread_type
        self.strict = strict
        self._opened: list[av.container.InputContainer] = []

    def open(self) -> av.container.InputContainer:
        try:
            container = av.open(str(self.path), mode="r", metadata_errors="ignore")
        except av.error.FFmpegError as exc:
            raise VideoDecodeError(self.path, f"not a readable media file ({describe_error(exc)})") from exc
        if not container.streams.video:
            container.close()
            raise VideoDecodeError(self.path, "the file has no video stream")
        ctx = container.streams.video[0].codec_context
        ctx.thread_type = self.thread_type
        ctx.thread_count = self.threads
        if self.strict:
            ctx.options = {**dict(ctx.options), "err_detect": "crccheck+bitstream+buffer+explode"}
        self._opened.append(container)
        return container

    def close_all(self) -> None:
        for container in self._opened:
            container.close()
        self._opened.clear()


class _IndexMismatch(Exception):
    """Decoding produced a picture the index does not predict at that position."""


_DONE, _OVERSHOT, _MISMATCH = "done", "overshot", "mismatch"


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
        frame_index: a :class:`FrameIndex`, or its :meth:`FrameIndex.to_dict` form from
            :func:`probe_video` / the data set index; skips indexing at open.

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
        _check_path(self.path)
        if fps is not None and fps <= 0:
            raise ValueError(f"target fps must be positive, got {fps}")
        self.threads = int(threads)
        self.thread_type = thread_type
        self.strict = strict
        self.rotate = rotate
        self.target_fps = float(fps) if fps is not None else None
        self._container: av.container.InputContainer | None = None
        self._reformatter: VideoReformatter | None = None
        self._seek_disabled = False
        try:
            self._index = self._load_index(frame_index)
            self._configure()
        except BaseException:
            self._rewind()
            raise

    # ------------------------------------------------------------------ opening
    def _opener(self) -> _Opener:
        return _Opener(self.path, self.threads, self.thread_type, self.strict)

    def _open(self) -> av.container.InputContainer:
        """Open (or return the already open) container."""
        if self._container is None:
            self._container = self._opener().open()
        return self._container

    def _load_index(self, given: FrameIndex | dict[str, Any] | None) -> FrameIndex:
        """The frame index: the one given, else a demux pass, else (untrusted timestamps) a decode pass."""
        if isinstance(given, FrameIndex):
            return given
        if given is not None and given.get("mode") == DECODED:
            return FrameIndex(DECODED, tuple(given["pts"]), tuple(given["seek_points"]),
                              int(given.get("rotation", 0)), str(given.get("reason", "")))
        container = self._open()
        try:
            scan = scan_packets(container, self.path)
        except av.error.FFmpegError as exc:
            self._rewind()
            raise VideoDecodeError(self.path, f"demuxing failed ({describe_error(exc)})") from exc
        if scan.packets == 0:
            raise VideoDecodeError(self.path, "the video stream contains no frames")
        if given is not None and not scan.distrust and len(scan.sorted_pts) == int(given["num_frames"]):
            return scan.frame_index(int(given.get("rotation", 0)))
        if given is not None:
            _LOGGER.warning("%s: the file no longer matches its stored index; indexing it again", self.path)
        if scan.distrust:
            _LOGGER.info("%s: %s; indexing the frames by decoding the file once", self.path, scan.distrust)
            return self._decode_pass(scan.distrust)
        return scan.frame_index(self._first_rotation(scan.key_pts[0]))

    def _decode_pass(self, reason: str) -> FrameIndex:
        """Index by decoding the whole file once (no pixel conversion), from a freshly opened container."""
        self._rewind()
        try:
            return decode_index(self._open(), self.path, reason)
        except av.error.FFmpegError as exc:
            raise VideoDecodeError(self.path, f"decoding failed ({describe_error(exc)})") from exc
        except ValueError as exc:
            raise VideoDecodeError(self.path, str(exc)) from exc
        finally:
            self._rewind()

    def _first_rotation(self, key_pts: int) -> int:
        """Display rotation, read from the display matrix of the picture at keyframe ``key_pts``.

        Seeking the already open container is much cheaper than opening the file again.
        """
        container = self._open()
        try:
            container.seek(key_pts, stream=container.streams.video[0], backward=True, any_frame=False)
            frame = next(iter(decoded_frames(container)), None)
        except av.error.FFmpegError as exc:
            self._rewind()
            raise VideoDecodeError(self.path, f"decoding failed ({describe_error(exc)})") from exc
        if frame is None:
            raise VideoDecodeError(self.path, "the decoder produced no picture")
        return display_rotation(frame, self.path)

    def _configure(self) -> None:
        """Sizes, timing and the seek table of the current index."""
        index = self._index
        if index.num_frames == 0:
            raise VideoDecodeError(self.path, "the video stream contains no frames")
        stream = self._open().streams.video[0]
        self._time_base = stream.time_base or Fraction(1, 1)
        height, width = int(stream.codec_context.height), int(stream.codec_context.width)
        if height <= 0 or width <= 0:
            raise VideoDecodeError(self.path, "the video stream has no frame size")
        self.rotation = index.rotation
        self._quarter_turns = (index.rotation // 90) % 4 if self.rotate else 0
        self.height, self.width = (width, height) if self._quarter_turns % 2 else (height, width)
        self._seek_pts = {index.pts[k]: k for k in index.seek_points}
        nominal = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = measured_fps(index.pts, self._time_base) or (float(nominal) if nominal else _FALLBACK_FPS)
        self._source_fps = fps
        self._source_duration = index.num_frames / fps
        self._resample_map = self._build_resample_map() if self.target_fps is not None else None

    def _build_resample_map(self) -> np.ndarray:
        """Source frame index for every frame of the target-fps timeline."""
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

    def _rewind(self) -> None:
        """Close the container so the next access starts from a fresh demuxer."""
        if self._container is not None:
            self._container.close()
            self._container = None

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
    def get_clip(self, start: int, num_frames: int, step: int = 1) -> torch.Tensor:
        """Decode frames ``start, start + step, ...`` (``num_frames`` of them).

        Args:
            start: index of the first frame, ``0 <= start < self.num_frames``.
            num_frames: number of frames to return (>= 1).
            step: stride between frames (>= 1).

        Returns:
            uint8 tensor ``[num_frames, H, W, 3]``, RGB, native resolution, upright.

        Raises:
            IndexError: a requested index lies outside ``[0, num_frames)``.
            VideoDecodeError: decoding failed or produced corrupt/missing frames.
        """
        if num_frames < 1 or step < 1:
            raise ValueError(f"num_frames and step must be >= 1, got num_frames={num_frames}, step={step}")
        last = start + (num_frames - 1) * step
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
        except _IndexMismatch as exc:
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
        return src, self._decode_sources(np.unique(src).tolist())

    def _switch_to_decoded_index(self, why: str) -> None:
        """The timestamps misled: index by decoding, keep serving (logged once per reader)."""
        _LOGGER.warning("%s: %s; indexing the frames by decoding the file once", self.path, why)
        old_count = self._index.num_frames
        self._index = self._decode_pass(f"timestamps disagree with decoding ({why})")
        self._configure()
        if self._index.num_frames != old_count:
            _LOGGER.warning("%s: %d decodable frames, not %d as the packets claim", self.path,
                            self._index.num_frames, old_count)

    def _decode_sources(self, sources: list[int]) -> list[np.ndarray]:
        """Decode sorted unique source frame indices; returns arrays in the same order.

        Wanted frames more than ``_MIN_SKIP_TO_SEEK`` frames apart with a seekable keyframe in
        between are fetched with separate seeks, so several clips spread over a long video
        never decode the stretches between them.
        """
        result: list[np.ndarray | None] = [None] * len(sources)
        seek_points = self._index.seek_points
        groups: list[list[int]] = [[0]]
        for n in range(1, len(sources)):
            k = bisect.bisect_right(seek_points, sources[n]) - 1
            if sources[n] - sources[n - 1] > _MIN_SKIP_TO_SEEK and k >= 0 and seek_points[k] > sources[n - 1]:
                groups.append([n])
            else:
                groups[-1].append(n)
        for group in groups:
            wanted = {sources[n]: n for n in group}
            self._decode_range(sources[group[0]], sources[group[-1]], wanted, result)
        missing = [sources[n] for n, arr in enumerate(result) if arr is None]
        if missing:
            self._rewind()
            raise VideoDecodeError(
                self.path,
                f"the decoder produced no picture for frame(s) {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''} of {self.source_num_frames}",
            )
        return result  # type: ignore[return-value]

    def _decode_range(self, first: int, last: int, wanted: dict[int, int], result: list[np.ndarray | None]) -> None:
        """Fill ``result`` with the wanted frames between positions ``first`` and ``last``."""
        seek_points = self._index.seek_points
        k = bisect.bisect_right(seek_points, first) - 1
        if not self._seek_disabled and k >= 0 and seek_points[k] > 0:
            for _ in range(_MAX_SEEK_RETRIES):
                if k < 0 or seek_points[k] == 0:
                    break
                outcome = self._decode_after_seek(seek_points[k], first, last, wanted, result)
                if outcome == _DONE:
                    return
                if outcome == _MISMATCH:
                    if self._index.mode == TIMESTAMPS:
                        raise _IndexMismatch(f"after a seek to frame {seek_points[k]} the pictures do not follow "
                                             "their timestamps")
                    _LOGGER.warning("%s: seeking lands on pictures the index does not predict; "
                                    "decoding from the start of the file from now on", self.path)
                    self._seek_disabled = True
                    break
                _LOGGER.debug("%s: seek to frame %d overshot frame %d; seeking earlier", self.path,
                              seek_points[k], first)
                k -= 1
        self._rewind()
        if self._decode_after_seek(None, first, last, wanted, result) == _MISMATCH:
            if self._index.mode == TIMESTAMPS:
                raise _IndexMismatch("the pictures do not come out in the order of their timestamps")
            raise VideoDecodeError(self.path, "the file decodes differently from its index",
                                   hint="Rebuild the data set index (the file changed), or re-encode the file.")

    def _decode_after_seek(
        self, seek_point: int | None, first: int, last: int, wanted: dict[int, int], result: list[np.ndarray | None]
    ) -> str:
        """Seek to frame ``seek_point`` (None: start of file), decode forward, fill ``result``.

        Returns:
            ``"done"``; ``"overshot"`` when the seek landed after ``first`` (or on no known
            keyframe); ``"mismatch"`` when a picture's timestamp is not the indexed one.
        """
        pts_table = self._index.pts
        container = self._open()
        stream = container.streams.video[0]
        next_position: int | None = 0 if seek_point is None else None
        if seek_point is not None:
            try:
                container.seek(int(pts_table[seek_point]), stream=stream, backward=True,  # type: ignore[arg-type]
                               any_frame=False)
            except av.error.FFmpegError as exc:
                _LOGGER.debug("%s: seek failed (%s)", self.path, describe_error(exc))
                self._rewind()
                return _OVERSHOT
        frames = decoded_frames(container)
        while True:
            try:
                frame = next(frames, None)
            except av.error.FFmpegError as exc:
                self._rewind()
                if next_position is None:
                    # Pictures before the landing keyframe may reference data before the seek point.
                    _LOGGER.debug("%s: decoding after a seek failed (%s)", self.path, describe_error(exc))
                    return _OVERSHOT
                raise VideoDecodeError(self.path, f"decoding failed ({describe_error(exc)})") from exc
            if frame is None:
                break
            if next_position is None:
                anchor = self._seek_pts.get(frame.pts) if frame.key_frame else None
                if anchor is None:
                    continue  # leading pictures of an open GOP, shown before the landing keyframe
                if anchor > first:
                    return _OVERSHOT
                next_position = anchor
            position, next_position = next_position, next_position + 1
            if position >= len(pts_table) or frame.pts != pts_table[position]:
                return _MISMATCH
            if frame.is_corrupt:
                self._rewind()
                raise VideoDecodeError(self.path, f"the decoder flagged frame {position} as corrupt")
            n = wanted.get(position)
            if n is not None and result[n] is None:
                result[n] = self._to_rgb(frame)
            if position >= last:
                return _DONE
        if next_position is None:
            return _OVERSHOT
        return _DONE if next_position > last else _MISMATCH

    def _to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        """Packed RGB with one reused swscale context (much faster than per-frame setup), upright."""
        if self._reformatter is None:
            self._reformatter = VideoReformatter()
        rgb = self._reformatter.reformat(frame, format="rgb24").to_ndarray()
        if self._quarter_turns:
            rgb = np.ascontiguousarray(np.rot90(rgb, self._quarter_turns))
        return rgb

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Release the file handle (the reader reopens it on the next access)."""
        self._rewind()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_container"] = None
        state["_reformatter"] = None
        return state


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
