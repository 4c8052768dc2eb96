"""Exact description of one video file: :func:`probe_video`, shared by the data set index and
``fima-models check-videos``."""

from __future__ import annotations

import os
from pathlib import Path

from fima_models.video.container import VideoFile, check_path
from fima_models.video.errors import decode_errors
from fima_models.video.index import TIMESTAMPS, probe_index
from fima_models.video.reader import VideoReader

__all__ = ["VideoInfo", "probe_video"]


class VideoInfo(dict):
    """Metadata of one probed video (see :func:`probe_video` for the keys)."""


def probe_video(path: str | os.PathLike[str], strict: bool = True) -> VideoInfo:
    """Index a video exactly (demux pass and one decode pass) and describe it.

    Args:
        path: video file.
        strict: as for :class:`~fima_models.video.VideoReader` (False accepts pictures the
            decoder concealed errors in).

    Returns:
        A :class:`VideoInfo` with ``num_frames`` (decodable frames), ``claimed_frames`` (what
        the container states, 0 when it states nothing), ``packets``, ``fps``, ``duration``,
        ``height`` and ``width`` (upright), ``codec``, ``rotation`` (degrees), ``fast_seek``
        (whether frame order can be taken from the timestamps), ``reason`` (why not) and
        ``frame_index`` (the index in ``FrameIndex.to_dict`` form, which
        :class:`~fima_models.video.VideoReader` accepts to skip indexing).

    Raises:
        FileNotFoundError: the file does not exist.
        VideoDecodeError: the file is unreadable or holds no decodable frame.
    """
    check_path(Path(path))
    file = VideoFile(Path(path), threads=1, thread_type="AUTO", strict=strict)
    try:
        container = file.open()
        stream = container.streams.video[0]
        claimed_frames, codec = int(stream.frames or 0), stream.codec_context.name
        with decode_errors(path):
            index, scan = probe_index(container, file.reopen, path)
    finally:
        file.rewind()
    with VideoReader(path, threads=1, strict=strict, frame_index=index) as reader:
        return VideoInfo(
            num_frames=reader.num_frames,
            claimed_frames=claimed_frames,
            packets=scan.packets,
            fps=reader.fps,
            duration=reader.duration,
            height=reader.height,
            width=reader.width,
            codec=codec,
            rotation=index.rotation,
            fast_seek=index.mode == TIMESTAMPS,
            reason=index.reason,
            frame_index=index.to_dict(),
        )
