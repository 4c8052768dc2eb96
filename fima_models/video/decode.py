"""Decoding the wanted frames of a file: seek to a keyframe, decode forward, verify every picture.

A fetch seeks to the last usable keyframe at or before the first wanted frame and decodes
forward. What a seek lands on is identified by its keyframe picture (through the index's
seek points), and every following picture's timestamp must be the one the index has at that
position. How a picture that breaks this is handled depends on the kind of index:

``timestamps`` (the fast path, built from the packets alone)
    the timestamps misled; :class:`IndexMismatch` tells the reader to index the file by
    decoding it once and to fetch again.
``decoded`` (built by a decode pass)
    the index is exact, so the seek landed where the demuxer cannot be trusted: seeking is
    switched off for this file (logged once) and frames are decoded from the start. A
    mismatch even then means the file is not the one indexed: :class:`VideoDecodeError`.

A seek that lands after the first wanted frame (overshoot) is retried from earlier
keyframes, then from the start of the file.
"""

from __future__ import annotations

import bisect
import logging

import av
import av.error
import numpy as np
from av.video.reformatter import VideoReformatter

from fima_models._utils import describe_error
from fima_models.video.container import VideoFile
from fima_models.video.errors import VideoDecodeError, decoding_failed
from fima_models.video.index import TIMESTAMPS, FrameIndex, decoded_frames

__all__ = ["FrameDecoder", "IndexMismatch"]

_logger = logging.getLogger(__name__)

#: How many progressively earlier keyframes to try before decoding from the start.
_MAX_SEEK_RETRIES = 3
#: A new seek is made between two wanted frames only when it skips more frames than this.
_MIN_SKIP_TO_SEEK = 8

_DONE, _OVERSHOT, _MISMATCH = "done", "overshot", "mismatch"


class IndexMismatch(Exception):
    """Decoding produced a picture the ``timestamps`` index does not predict at that position."""


class FrameDecoder:
    """Decodes source frames of one file by their position in a :class:`FrameIndex`.

    Args:
        file: the video file (its container is shared with the reader).
        index: where each frame is.
        quarter_turns: counter-clockwise quarter turns that make the pictures upright.
    """

    def __init__(self, file: VideoFile, index: FrameIndex, quarter_turns: int) -> None:
        self.file = file
        self.index = index
        self.quarter_turns = quarter_turns
        self._seek_pts = {index.pts[k]: k for k in index.seek_points}
        self._seek_disabled = False
        self._reformatter: VideoReformatter | None = None

    def decode(self, sources: list[int]) -> list[np.ndarray]:
        """Decode sorted unique source frame positions; returns RGB arrays ``[H, W, 3]`` in the same order.

        Wanted frames more than ``_MIN_SKIP_TO_SEEK`` frames apart with a seekable keyframe in
        between are fetched with separate seeks, so several clips spread over a long video
        never decode the stretches between them.

        Raises:
            IndexMismatch: a ``timestamps`` index proved wrong.
            VideoDecodeError: decoding failed, a picture is corrupt or a wanted frame never came.
        """
        result: list[np.ndarray | None] = [None] * len(sources)
        seek_points = self.index.seek_points
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
            self.file.rewind()
            raise VideoDecodeError(
                self.file.path,
                f"the decoder produced no picture for frame(s) {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''} of {self.index.num_frames}",
            )
        return result  # type: ignore[return-value]

    def _decode_range(self, first: int, last: int, wanted: dict[int, int], result: list[np.ndarray | None]) -> None:
        """Fill ``result`` with the wanted frames between positions ``first`` and ``last``."""
        seek_points = self.index.seek_points
        k = bisect.bisect_right(seek_points, first) - 1
        if not self._seek_disabled and k >= 0 and seek_points[k] > 0:
            for _ in range(_MAX_SEEK_RETRIES):
                if k < 0 or seek_points[k] == 0:
                    break
                outcome = self._decode_after_seek(seek_points[k], first, last, wanted, result)
                if outcome == _DONE:
                    return
                if outcome == _MISMATCH:
                    if self.index.mode == TIMESTAMPS:
                        raise IndexMismatch(f"after a seek to frame {seek_points[k]} the pictures do not follow "
                                            "their timestamps")
                    _logger.warning("%s: seeking lands on pictures the index does not predict; "
                                    "decoding from the start of the file from now on", self.file.path)
                    self._seek_disabled = True
                    break
                _logger.debug("%s: seek to frame %d overshot frame %d; seeking earlier", self.file.path,
                              seek_points[k], first)
                k -= 1
        self.file.rewind()
        if self._decode_after_seek(None, first, last, wanted, result) == _MISMATCH:
            if self.index.mode == TIMESTAMPS:
                raise IndexMismatch("the pictures do not come out in the order of their timestamps")
            raise VideoDecodeError(self.file.path, "the file decodes differently from its index",
                                   hint="Rebuild the data set index (the file changed), or re-encode the file.")

    def _decode_after_seek(
        self, seek_point: int | None, first: int, last: int, wanted: dict[int, int], result: list[np.ndarray | None]
    ) -> str:
        """Seek to frame ``seek_point`` (None: start of file), decode forward, fill ``result``.

        Returns:
            ``"done"``; ``"overshot"`` when the seek landed after ``first`` (or on no known
            keyframe); ``"mismatch"`` when a picture's timestamp is not the indexed one.
        """
        pts_table = self.index.pts
        container = self.file.open()
        stream = container.streams.video[0]
        next_position: int | None = 0 if seek_point is None else None
        if seek_point is not None:
            try:
                container.seek(int(pts_table[seek_point]), stream=stream, backward=True,  # type: ignore[arg-type]
                               any_frame=False)
            except av.error.FFmpegError as exc:
                _logger.debug("%s: seek failed (%s)", self.file.path, describe_error(exc))
                self.file.rewind()
                return _OVERSHOT
        frames = decoded_frames(container)
        while True:
            try:
                frame = next(frames, None)
            except av.error.FFmpegError as exc:
                self.file.rewind()
                if next_position is None:
                    # Pictures before the landing keyframe may reference data before the seek point.
                    _logger.debug("%s: decoding after a seek failed (%s)", self.file.path, describe_error(exc))
                    return _OVERSHOT
                raise decoding_failed(self.file.path, exc) from exc
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
                self.file.rewind()
                raise VideoDecodeError(self.file.path, f"the decoder flagged frame {position} as corrupt")
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
        if self.quarter_turns:
            rgb = np.ascontiguousarray(np.rot90(rgb, self.quarter_turns))
        return rgb

    def __getstate__(self) -> dict[str, object]:
        # The swscale context cannot be pickled; the copy makes its own on first use.
        return {**self.__dict__, "_reformatter": None}
