"""Frame-exact video reading with PyAV.

:class:`VideoReader` opens a file, indexes its video packets once (demuxing only,
no decoding) and serves clips by frame index::

    reader = VideoReader("clip.mp4")
    clip = reader.get_clip(start=10, num_frames=16, step=2)   # uint8 [16, H, W, 3] RGB

Frame ``i`` is the ``i``-th frame a full decode of the file produces. The index is
the sorted list of presentation timestamps (pts) of the demuxed packets, so a
clip is fetched by seeking to the last keyframe at or before its first frame,
decoding forward and keeping the frames whose pts are wanted. Container metadata
(frame count, duration, nominal rate) is never trusted for counting.

Robustness rules:

* Seek overshoot (MPEG-4 in AVI with B-frames often lands on a later keyframe) is
  detected from the first keyframe the decoder returns; the reader then seeks to
  an earlier keyframe, and as a last resort decodes from the start of the file.
* A packet the demuxer flags as corrupt (a truncated file's final partial packet)
  ends the usable stream, so ``num_frames`` counts only frames that can be served.
* Decoder errors, frames the decoder flags as corrupt, and wanted frames that
  never come out raise :class:`VideoDecodeError` naming the file and the reason;
  no frame is ever substituted silently.
* Files whose packets carry no usable timestamps are read sequentially from the
  start (slow but exact).

With ``fps=...`` the reader resamples to a target frame rate: frame ``j`` is the
source frame shown at time ``j / fps`` (the latest source frame whose timestamp
is at or before that time).
"""

from __future__ import annotations

import bisect
import itertools
import logging
import os
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import av
import av.error
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

__all__ = ["VideoReader", "VideoDecodeError", "VideoInfo", "probe_video", "write_video"]

_LOGGER = logging.getLogger(__name__)

#: How many progressively earlier keyframes to try before decoding from the start.
_MAX_SEEK_RETRIES = 3
#: A new seek is made between two wanted frames only when it skips more frames than this.
_MIN_SKIP_TO_SEEK = 8


class VideoDecodeError(RuntimeError):
    """A video file cannot be opened or decoded correctly.

    Attributes:
        path: the offending file.
        reason: what went wrong.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(
            f"cannot decode video '{self.path}': {reason}. "
            "Re-encode or re-download the file, or exclude it from the data set."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.reason))


class VideoInfo(dict):
    """Light metadata of one video: ``num_frames``, ``fps``, ``duration``, ``height``, ``width``."""


def probe_video(path: str | os.PathLike[str]) -> VideoInfo:
    """Index a video once and return its metadata (used by dataset indexing).

    Args:
        path: video file.

    Returns:
        A :class:`VideoInfo` with ``num_frames``, ``fps``, ``duration``, ``height``, ``width``.

    Raises:
        FileNotFoundError: the file does not exist.
        VideoDecodeError: the file is unreadable or holds no decodable frame.
    """
    with VideoReader(path, threads=1) as reader:
        return VideoInfo(
            num_frames=reader.num_frames,
            fps=reader.fps,
            duration=reader.duration,
            height=reader.height,
            width=reader.width,
        )


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

    Raises:
        FileNotFoundError: ``path`` does not exist.
        VideoDecodeError: the file is not a readable video or has no frames.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float | None = None,
        threads: int = 0,
        thread_type: str = "AUTO",
        strict: bool = True,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"video file not found: '{self.path}'. Check the path or the data set root.")
        if fps is not None and fps <= 0:
            raise ValueError(f"target fps must be positive, got {fps}")
        self.threads = int(threads)
        self.thread_type = thread_type
        self.strict = strict
        self.target_fps = float(fps) if fps is not None else None
        self._container: av.container.InputContainer | None = None
        self._reformatter: VideoReformatter | None = None
        self._frame_pts: list[int] = []
        self._key_pts: list[int] = []
        self._sequential = False
        try:
            self._scan()
        except BaseException:
            self._rewind()
            raise

    # ------------------------------------------------------------------ opening
    def _open(self) -> av.container.InputContainer:
        """Open (or return the already open) container and configure its decoder."""
        if self._container is not None:
            return self._container
        try:
            container = av.open(str(self.path), mode="r", metadata_errors="ignore")
        except av.error.FFmpegError as exc:
            raise VideoDecodeError(self.path, f"not a readable media file ({_reason(exc)})") from exc
        if not container.streams.video:
            container.close()
            raise VideoDecodeError(self.path, "the file has no video stream")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        ctx.thread_type = self.thread_type
        ctx.thread_count = self.threads
        if self.strict:
            ctx.options = {**dict(ctx.options), "err_detect": "crccheck+bitstream+buffer+explode"}
        self._container = container
        return container

    def _scan(self) -> None:
        """Index packets once: presentation timestamps of frames and of keyframes."""
        container = self._open()
        stream = container.streams.video[0]
        pts: list[int | None] = []
        keys: list[int] = []
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.is_discard:
                    continue
                if packet.is_corrupt:
                    # A truncated file's last packet: it and every frame shown after it are lost
                    # (B-frames that follow it in decode order may reference it).
                    _LOGGER.warning("%s: corrupt packet at pts %s; the video ends there", self.path, packet.pts)
                    if packet.pts is not None:
                        cut = packet.pts
                        pts = [p for p in pts if p is None or p < cut]
                        keys = [k for k in keys if k < cut]
                    break
                pts.append(packet.pts)
                if packet.is_keyframe and packet.pts is not None:
                    keys.append(packet.pts)
        except av.error.FFmpegError as exc:
            if not pts:
                raise VideoDecodeError(self.path, f"demuxing failed ({_reason(exc)})") from exc
            _LOGGER.warning("%s: demuxing stopped early (%s); using %d frames", self.path, _reason(exc), len(pts))
        if not pts:
            raise VideoDecodeError(self.path, "the video stream contains no frames")
        if any(p is None for p in pts) or len(set(pts)) != len(pts):
            _LOGGER.info("%s: packets lack unique timestamps; reading sequentially", self.path)
            self._sequential = True
            self._frame_pts = list(range(len(pts)))
            self._key_pts = []
        else:
            self._frame_pts = sorted(p for p in pts if p is not None)
            self._key_pts = sorted(keys)
        self._time_base = stream.time_base or Fraction(1, 1)
        self.height = int(stream.codec_context.height)
        self.width = int(stream.codec_context.width)
        if self.height <= 0 or self.width <= 0:
            raise VideoDecodeError(self.path, "the video stream has no frame size")
        self._source_fps, self._source_duration = self._timing(stream)
        self._resample_map = self._build_resample_map() if self.target_fps is not None else None

    def _timing(self, stream: av.video.stream.VideoStream) -> tuple[float, float]:
        """Source frame rate and duration measured from timestamps (metadata as fallback)."""
        n = len(self._frame_pts)
        nominal = stream.average_rate or stream.guessed_rate or stream.base_rate
        nominal_fps = float(nominal) if nominal else 0.0
        if not self._sequential and n > 1:
            span = float((self._frame_pts[-1] - self._frame_pts[0]) * self._time_base)
            if span > 0:
                fps = (n - 1) / span
                return fps, n / fps
        fps = nominal_fps if nominal_fps > 0 else 25.0
        return fps, n / fps

    def _build_resample_map(self) -> np.ndarray:
        """Source frame index for every frame of the target-fps timeline."""
        assert self.target_fps is not None
        n = len(self._frame_pts)
        if self._sequential:
            times = np.arange(n) / self._source_fps
        else:
            p0 = self._frame_pts[0]
            times = np.array([float((p - p0) * self._time_base) for p in self._frame_pts])
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
    def num_frames(self) -> int:
        """Number of frames :meth:`get_clip` can serve (after resampling, if any)."""
        if self._resample_map is not None:
            return int(len(self._resample_map))
        return len(self._frame_pts)

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
        return len(self._frame_pts)

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
            uint8 tensor ``[num_frames, H, W, 3]``, RGB, native resolution.

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
        indices = list(range(start, last + 1, step))
        return self.get_frames(indices)

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
        src = self._resample_map[idx] if self._resample_map is not None else idx
        unique = np.unique(src)
        decoded = self._decode_sources(unique.tolist())
        out = np.empty((idx.size, self.height, self.width, 3), dtype=np.uint8)
        pos = np.searchsorted(unique, src)
        for k, p in enumerate(pos):
            out[k] = decoded[int(p)]
        return torch.from_numpy(out)

    def _decode_sources(self, sources: list[int]) -> list[np.ndarray]:
        """Decode sorted unique source frame indices; returns arrays in the same order.

        Wanted frames more than ``_MIN_SKIP_TO_SEEK`` frames apart with a keyframe in
        between are fetched with separate seeks, so several clips spread over a long
        video never decode the stretches between them.
        """
        result: list[np.ndarray | None] = [None] * len(sources)
        if self._sequential:
            wanted = {self._frame_pts[i]: n for n, i in enumerate(sources)}
            self._decode_from_start_sequential(wanted, result)
            return self._check_complete(result, sources)
        groups: list[list[int]] = [[0]]
        for n in range(1, len(sources)):
            prev_pts, next_pts = self._frame_pts[sources[n - 1]], self._frame_pts[sources[n]]
            k = bisect.bisect_right(self._key_pts, next_pts) - 1
            if sources[n] - sources[n - 1] > _MIN_SKIP_TO_SEEK and k >= 0 and self._key_pts[k] > prev_pts:
                groups.append([n])
            else:
                groups[-1].append(n)
        for group in groups:
            wanted = {self._frame_pts[sources[n]]: n for n in group}
            self._decode_range(self._frame_pts[sources[group[0]]], self._frame_pts[sources[group[-1]]], wanted, result)
        return self._check_complete(result, sources)

    def _decode_range(
        self, first_pts: int, last_pts: int, wanted: dict[int, int], result: list[np.ndarray | None]
    ) -> None:
        """Fill ``result`` with the wanted frames between ``first_pts`` and ``last_pts``."""
        k = bisect.bisect_right(self._key_pts, first_pts) - 1
        for _ in range(_MAX_SEEK_RETRIES):
            if k < 0:
                break
            if self._decode_after_seek(self._key_pts[k], first_pts, last_pts, wanted, result):
                return
            _LOGGER.debug("%s: seek to pts %d overshot pts %d; seeking earlier", self.path, self._key_pts[k], first_pts)
            k -= 1
        self._rewind()
        self._decode_after_seek(None, first_pts, last_pts, wanted, result)

    def _decode_after_seek(
        self,
        key_pts: int | None,
        first_pts: int,
        last_pts: int,
        wanted: dict[int, int],
        result: list[np.ndarray | None],
    ) -> bool:
        """Seek to ``key_pts`` (None: start of file), decode forward, fill ``result``.

        Returns:
            False when decoding started after ``first_pts`` (overshoot), else True.
        """
        container = self._open()
        stream = container.streams.video[0]
        if key_pts is not None:
            try:
                container.seek(key_pts, stream=stream, backward=True, any_frame=False)
            except av.error.FFmpegError as exc:
                _LOGGER.debug("%s: seek failed (%s); decoding from the start", self.path, _reason(exc))
                self._rewind()
                container = self._open()
                stream = container.streams.video[0]
                key_pts = None
        landing: list[tuple[int | None, bool]] = []
        anchor: int | None = None
        for frame in self._frames(container, stream, landing):
            pts = frame.pts
            if pts is None:
                raise VideoDecodeError(self.path, "the decoder returned a frame without a timestamp")
            if anchor is None:
                land_pts, land_key = landing[0]
                if key_pts is None:
                    anchor = -(2**62)  # decoding from the start: every frame is what a full decode gives
                elif not land_key or land_pts is None or land_pts > first_pts:
                    return False  # landed after the clip (or off a keyframe): seek earlier
                else:
                    anchor = land_pts
            if pts < anchor:
                continue  # leading pictures of an open GOP reference data before the seek point
            n = wanted.get(pts)
            if n is not None and result[n] is None:
                result[n] = self._to_rgb(frame)
            if pts >= last_pts:
                break
        return True

    def _decode_from_start_sequential(self, wanted: dict[int, int], result: list[np.ndarray | None]) -> None:
        """Decode from the start counting output frames (files without usable timestamps)."""
        self._rewind()
        container = self._open()
        stream = container.streams.video[0]
        last = max(wanted)
        for count, frame in enumerate(self._frames(container, stream)):
            n = wanted.get(count)
            if n is not None:
                result[n] = self._to_rgb(frame)
            if count >= last:
                break

    def _frames(
        self,
        container: av.container.InputContainer,
        stream: Any,
        landing: list[tuple[int | None, bool]] | None = None,
    ) -> Iterator[av.VideoFrame]:
        """Yield decoded frames, stopping at the first corrupt packet and flushing the decoder.

        Args:
            container: the open container, positioned where decoding starts.
            stream: its video stream.
            landing: if given, receives ``(pts, is_keyframe)`` of the first packet read.
        """
        ctx = stream.codec_context
        try:
            for packet in container.demux(stream):
                if packet.is_corrupt:
                    break
                if packet.size == 0 or packet.is_discard:
                    continue
                if landing is not None and not landing:
                    landing.append((packet.pts, bool(packet.is_keyframe)))
                for frame in ctx.decode(packet):
                    self._check_frame(frame)
                    yield frame
            for frame in ctx.decode(None):
                self._check_frame(frame)
                yield frame
        except av.error.FFmpegError as exc:
            self._rewind()
            raise VideoDecodeError(self.path, f"decoding failed ({_reason(exc)})") from exc

    def _check_frame(self, frame: av.VideoFrame) -> None:
        if frame.is_corrupt:
            self._rewind()
            raise VideoDecodeError(self.path, f"the decoder flagged the frame at pts {frame.pts} as corrupt")

    def _to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        """Convert to packed RGB with one reused swscale context (much faster than per-frame setup)."""
        if self._reformatter is None:
            self._reformatter = VideoReformatter()
        rgb = self._reformatter.reformat(frame, format="rgb24")
        return rgb.to_ndarray()

    def _check_complete(self, result: list[np.ndarray | None], sources: list[int]) -> list[np.ndarray]:
        missing = [sources[n] for n, arr in enumerate(result) if arr is None]
        if missing:
            self._rewind()
            raise VideoDecodeError(
                self.path,
                f"the decoder produced no picture for frame(s) {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''} of {self.source_num_frames}",
            )
        return result  # type: ignore[return-value]

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


def _reason(exc: BaseException) -> str:
    """Short human-readable text of a PyAV/FFmpeg error."""
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).strip() or type(exc).__name__


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
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _encode(tmp, stream_frames, np.shape(first), rate, codec, gop, bframes, pts, time_base, pix_fmt, opts,
                container_options)
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
) -> None:
    """Mux ``frames`` into ``path`` (helper of :func:`write_video`)."""
    fmt = {".mp4": "mp4", ".avi": "avi", ".webm": "webm", ".mkv": "matroska", ".mov": "mov"}.get(path.suffix.lower())
    with av.open(str(path), mode="w", format=fmt, options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=rate, options=opts)
        stream.height, stream.width = int(shape[0]), int(shape[1])
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
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img, dtype=np.uint8), format="rgb24")
            if pts is not None:
                frame.pts = int(pts[i])
                frame.time_base = tb
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
