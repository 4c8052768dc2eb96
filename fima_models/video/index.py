"""Where each frame of a video file is: the frame index behind :class:`~fima_models.video.VideoReader`.

Frame ``k`` of a video is the ``k``-th picture a plain sequential decode of the file
yields. Container timestamps do not always say which picture that is:

* DivX-style *packed B-frames* (MPEG-4 Part 2 in AVI, user data such as ``DivX503b1393p``):
  the decoder emits pictures in display order but with permuted timestamps (3, 5, 4, ...).
* Files whose packets carry decode-order timestamps (pts equal to dts) although the
  decoder reorders pictures (H.264 with B-frames muxed by some tools).
* Missing or duplicate timestamps, leading non-key frames, packets that yield no picture,
  containers that over-report their length.

Two kinds of index exist:

``timestamps``
    Frame ``k`` is the packet with the ``k``-th smallest presentation timestamp. Built from a
    demux pass (no decoding), used when nothing in the packets speaks against it; every
    decode verifies that the pictures come out with exactly the expected timestamps, and a
    mismatch switches the reader to a ``decoded`` index.
``decoded``
    Built by one decode pass (no pixel conversion): the timestamp of every output picture in
    output order, and the positions of keyframes that a seek can start from (a keyframe is
    usable when its timestamp occurs once among the pictures). Seeking lands on such a
    keyframe, counts pictures from it and checks each picture's timestamp against the index.

:func:`scan_packets` makes the first, :func:`decode_index` the second; :func:`probe_index`
runs both and tells whether the fast path is exact for a file. :func:`load_index` gives a
reader the index of its file: a stored one, else the cheapest one that is exact.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Iterator

import av
import av.error

from fima_models._utils import describe_error
from fima_models.video.container import VideoFile
from fima_models.video.errors import VideoDecodeError, decode_errors, decoding_failed

__all__ = ["FrameIndex", "PacketScan", "scan_packets", "decode_index", "decoded_frames", "probe_index",
           "load_index", "decode_pass", "display_rotation", "measured_fps", "TIMESTAMPS", "DECODED"]

_logger = logging.getLogger(__name__)

TIMESTAMPS = "timestamps"
DECODED = "decoded"

#: DivX user data announcing packed B-frames (the trailing ``p``), as FFmpeg's MPEG-4 decoder reads it.
_PACKED_DIVX = re.compile(rb"DivX\d+(?:b|Build)\d+p")
#: How many leading packets are searched for that user data (it sits in the first VOL/VOP headers).
_PACKED_SEARCH_PACKETS = 4


@dataclass(frozen=True)
class FrameIndex:
    """Output-order frame table of one video.

    Attributes:
        mode: ``"timestamps"`` or ``"decoded"`` (see the module docs).
        pts: presentation timestamp of frame ``k`` (None where the decoder gave none).
        seek_points: frame positions of the keyframes a seek may start from, ascending.
        rotation: counter-clockwise display rotation of the pictures in degrees (0, 90, 180, 270).
        reason: why the timestamps are not trusted (empty for ``"timestamps"``).
    """

    mode: str
    pts: tuple[int | None, ...]
    seek_points: tuple[int, ...]
    rotation: int = 0
    reason: str = ""

    @property
    def num_frames(self) -> int:
        """Number of frames."""
        return len(self.pts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form for the data set index.

        A ``timestamps`` index is stored as its frame count only: a demux pass rebuilds it
        (and is checked against the count); a ``decoded`` one keeps its whole table.
        """
        data: dict[str, Any] = {"mode": self.mode, "num_frames": self.num_frames, "rotation": self.rotation}
        if self.mode == DECODED:
            data.update(pts=list(self.pts), seek_points=list(self.seek_points), reason=self.reason)
        return data


@dataclass
class PacketScan:
    """What a demux pass (no decoding) learns about the video stream.

    Attributes:
        sorted_pts: presentation timestamps of the picture packets, ascending.
        key_pts: presentation timestamps of the keyframe packets, ascending.
        packets: number of picture packets (edit-list discards and empty packets excluded).
        distrust: why frame order cannot be taken from the timestamps (empty: it can).
        truncated: a corrupt packet ended the usable stream.
    """

    sorted_pts: list[int] = field(default_factory=list)
    key_pts: list[int] = field(default_factory=list)
    packets: int = 0
    distrust: str = ""
    truncated: bool = False

    def frame_index(self, rotation: int) -> FrameIndex:
        """The ``timestamps`` index of this scan (call only when :attr:`distrust` is empty)."""
        position = {p: k for k, p in enumerate(self.sorted_pts)}
        return FrameIndex(TIMESTAMPS, tuple(self.sorted_pts), tuple(position[p] for p in self.key_pts), rotation)


def scan_packets(container: av.container.InputContainer, path: str | os.PathLike[str]) -> PacketScan:
    """Demux the first video stream once and judge whether its timestamps give the frame order.

    Args:
        container: a freshly opened container (it is read to the end).
        path: the file, for log messages.

    Returns:
        The :class:`PacketScan`; ``packets == 0`` when the stream holds no picture packet.

    Raises:
        av.error.FFmpegError: demuxing failed before the first packet.
    """
    stream = container.streams.video[0]
    scan = PacketScan()
    pts: list[int | None] = []
    keys: list[int] = []
    in_decode_order_only = True  # every packet's pts is above the previous one's (pts look like dts)
    first_is_key: bool | None = None
    packed = _has_packed_bframes(stream.codec_context.extradata)
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            if packet.is_corrupt:
                # A truncated file's last packet: it and every frame shown after it are lost
                # (B-frames that follow it in decode order may reference it).
                _logger.warning("%s: corrupt packet at pts %s; the video ends there", path, packet.pts)
                scan.truncated = True
                if packet.pts is not None:
                    cut = packet.pts
                    pts = [p for p in pts if p is None or p < cut]
                    keys = [k for k in keys if k < cut]
                break
            if not packed and len(pts) < _PACKED_SEARCH_PACKETS and stream.codec_context.name == "mpeg4":
                packed = _has_packed_bframes(bytes(packet))
            if packet.is_discard:
                continue  # decoded as a reference but not shown (MP4 edit lists)
            if first_is_key is None:
                first_is_key = bool(packet.is_keyframe)
            if pts and (packet.pts is None or pts[-1] is None or packet.pts < pts[-1]):
                in_decode_order_only = False
            pts.append(packet.pts)
            if packet.is_keyframe and packet.pts is not None:
                keys.append(packet.pts)
    except av.error.FFmpegError as exc:
        if not pts:
            raise
        _logger.warning("%s: demuxing stopped early (%s); using %d packets", path, describe_error(exc), len(pts))
        scan.truncated = True
    scan.packets = len(pts)
    if any(p is None for p in pts):
        scan.distrust = "some packets have no timestamp"
    elif len(set(pts)) != len(pts):
        scan.distrust = "several packets share a timestamp"
    elif packed:
        scan.distrust = "MPEG-4 with DivX packed B-frames (the decoder permutes their timestamps)"
    elif first_is_key is False:
        scan.distrust = "the stream starts with non-key frames"
    elif stream.codec_context.has_b_frames and in_decode_order_only and len(pts) > 2:
        scan.distrust = "pictures are reordered but the timestamps follow decode order"
    if not scan.distrust:
        scan.sorted_pts = sorted(p for p in pts if p is not None)
        scan.key_pts = sorted(keys)
    return scan


def _has_packed_bframes(data: bytes | None) -> bool:
    return bool(data) and _PACKED_DIVX.search(data) is not None


def decoded_frames(container: av.container.InputContainer) -> Iterator[av.VideoFrame]:
    """Decode the first video stream from the container's current position to its end.

    Every packet goes to the decoder (edit-list discards too: later pictures reference them;
    the decoder itself drops their pictures). A corrupt packet (a truncated file's last one)
    ends the stream there, as :func:`scan_packets` counts it: no picture shown at or after it
    is yielded.

    Raises:
        av.error.FFmpegError: the decoder failed.
    """
    stream = container.streams.video[0]
    ctx = stream.codec_context
    cut: int | None = None
    for packet in container.demux(stream):
        if packet.is_corrupt:
            cut = packet.pts
            break
        if packet.size == 0:
            continue
        yield from ctx.decode(packet)
    for frame in ctx.decode(None):
        if cut is None or frame.pts is None or frame.pts < cut:
            yield frame


def decode_index(container: av.container.InputContainer, path: str | os.PathLike[str], reason: str) -> FrameIndex:
    """Decode the whole stream once (no pixel conversion) and index the pictures in output order.

    Args:
        container: a container positioned at the start of the file.
        path: the file, for messages.
        reason: why the timestamps are not trusted (kept in the index).

    Returns:
        A ``decoded`` :class:`FrameIndex`.

    Raises:
        ValueError: a picture is flagged corrupt (the message says which).
        av.error.FFmpegError: decoding failed.
    """
    pts: list[int | None] = []
    keys: list[int] = []
    rotation = 0
    for frame in decoded_frames(container):
        if not pts:
            rotation = display_rotation(frame, path)
        if frame.is_corrupt:
            raise ValueError(f"the decoder flagged picture {len(pts)} (pts {frame.pts}) as corrupt")
        if frame.key_frame:
            keys.append(len(pts))
        pts.append(frame.pts)
    counts: dict[int | None, int] = {}
    for p in pts:
        counts[p] = counts.get(p, 0) + 1
    seek_points = tuple(k for k in keys if pts[k] is not None and counts[pts[k]] == 1)
    return FrameIndex(DECODED, tuple(pts), seek_points, rotation, reason)


def probe_index(
    container: av.container.InputContainer, reopen: Any, path: str | os.PathLike[str]
) -> tuple[FrameIndex, PacketScan]:
    """Index a file exactly: a demux pass, then a decode pass that counts the real pictures.

    The fast ``timestamps`` index is kept only when the decode pass confirms it picture by
    picture; otherwise the ``decoded`` index is returned with the reason.

    Args:
        container: a freshly opened container.
        reopen: callable returning a fresh container positioned at the start.
        path: the file, for messages.

    Returns:
        ``(index, scan)``.
    """
    scan = scan_packets(container, path)
    decoded = decode_index(reopen(), path, scan.distrust)
    if scan.distrust:
        return decoded, scan
    if list(decoded.pts) == scan.sorted_pts:
        return scan.frame_index(decoded.rotation), scan
    if len(decoded.pts) != len(scan.sorted_pts):
        why = f"{scan.packets} picture packets but {len(decoded.pts)} decoded pictures"
    else:
        first = next(k for k, (a, b) in enumerate(zip(decoded.pts, scan.sorted_pts)) if a != b)
        why = f"picture {first} comes out with pts {decoded.pts[first]}, not {scan.sorted_pts[first]}"
    reason = f"timestamps disagree with decoding ({why})"
    return FrameIndex(DECODED, decoded.pts, decoded.seek_points, decoded.rotation, reason), scan


def display_rotation(frame: av.VideoFrame, path: str | os.PathLike[str]) -> int:
    """Counter-clockwise rotation (0, 90, 180 or 270 degrees) that shows ``frame`` upright.

    Read from the picture's display matrix (phones record sideways and store one); angles
    that are not a multiple of 90 degrees are ignored with a warning.
    """
    angle = float(frame.rotation or 0)
    quarter = round(angle / 90.0)
    if abs(angle - 90.0 * quarter) > 1.0:
        _logger.warning("%s: display rotation of %.1f degrees is not a multiple of 90; ignoring it", path, angle)
        return 0
    return int(quarter % 4) * 90


def measured_fps(pts: Any, time_base: Fraction) -> float | None:
    """Mean frame rate from a timestamp span (None when it cannot be measured)."""
    known = [p for p in pts if p is not None]
    if len(known) < 2:
        return None
    span = float((max(known) - min(known)) * time_base)
    return (len(known) - 1) / span if span > 0 else None


def load_index(file: VideoFile, given: FrameIndex | dict[str, Any] | None = None) -> FrameIndex:
    """The frame index of ``file``: the one given, else a demux pass, else (untrusted timestamps) a decode pass.

    Args:
        file: the video file.
        given: a :class:`FrameIndex`, or its :meth:`FrameIndex.to_dict` form (a ``timestamps``
            one is rebuilt by a demux pass and kept only while the file still has that many frames).

    Raises:
        VideoDecodeError: demuxing or decoding failed, or the stream holds no frame.
    """
    if isinstance(given, FrameIndex):
        return given
    if given is not None and given.get("mode") == DECODED:
        return FrameIndex(DECODED, tuple(given["pts"]), tuple(given["seek_points"]),
                          int(given.get("rotation", 0)), str(given.get("reason", "")))
    container = file.open()
    try:
        scan = scan_packets(container, file.path)
    except av.error.FFmpegError as exc:
        file.rewind()
        raise VideoDecodeError(file.path, f"demuxing failed ({describe_error(exc)})") from exc
    if scan.packets == 0:
        raise VideoDecodeError(file.path, "the video stream contains no frames")
    if given is not None and not scan.distrust and len(scan.sorted_pts) == int(given["num_frames"]):
        return scan.frame_index(int(given.get("rotation", 0)))
    if given is not None:
        _logger.warning("%s: the file no longer matches its stored index; indexing it again", file.path)
    if scan.distrust:
        _logger.info("%s: %s; indexing the frames by decoding the file once", file.path, scan.distrust)
        return decode_pass(file, scan.distrust)
    return scan.frame_index(_first_rotation(file, scan.key_pts[0]))


def decode_pass(file: VideoFile, reason: str) -> FrameIndex:
    """Index ``file`` by decoding it once (no pixel conversion), from a freshly opened container.

    Raises:
        VideoDecodeError: decoding failed or a picture is flagged corrupt.
    """
    try:
        with decode_errors(file.path):
            return decode_index(file.reopen(), file.path, reason)
    finally:
        file.rewind()


def _first_rotation(file: VideoFile, key_pts: int) -> int:
    """Display rotation, read from the display matrix of the picture at keyframe ``key_pts``.

    Seeking the already open container is much cheaper than opening the file again.
    """
    container = file.open()
    try:
        container.seek(key_pts, stream=container.streams.video[0], backward=True, any_frame=False)
        frame = next(iter(decoded_frames(container)), None)
    except av.error.FFmpegError as exc:
        file.rewind()
        raise decoding_failed(file.path, exc) from exc
    if frame is None:
        raise VideoDecodeError(file.path, "the decoder produced no picture")
    return display_rotation(frame, file.path)
