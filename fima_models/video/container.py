"""The container of one video file, opened on demand with the decoder configured.

Closing the container is how decoding starts again from the beginning of the file: a fresh
demuxer and decoder carry no state from an earlier seek or error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import av.error

from fima_models._utils import describe_error
from fima_models.video.errors import VideoDecodeError

__all__ = ["VideoFile", "check_path"]


def check_path(path: Path) -> None:
    """Fail with one clear message when ``path`` is a folder or does not exist.

    Raises:
        VideoDecodeError: ``path`` is a directory.
        FileNotFoundError: ``path`` does not exist.
    """
    if path.is_dir():
        raise VideoDecodeError(path, "it is a directory, not a video file",
                               hint="Pass the video files inside it, or correct the path.")
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: '{path}'. Check the path or the data set root.")


class VideoFile:
    """One video file and its (at most one) open container.

    Args:
        path: the video file.
        threads: decoder threads (0: FFmpeg chooses).
        thread_type: FFmpeg threading mode (``"AUTO"``, ``"FRAME"`` or ``"SLICE"``).
        strict: make the decoder fail on bitstream errors instead of concealing them.
    """

    def __init__(self, path: Path, threads: int, thread_type: str, strict: bool) -> None:
        self.path = path
        self.threads = threads
        self.thread_type = thread_type
        self.strict = strict
        self._container: av.container.InputContainer | None = None

    def open(self) -> av.container.InputContainer:
        """The open container (opened now if it is not).

        Raises:
            VideoDecodeError: the file is not a readable media file or has no video stream.
        """
        if self._container is not None:
            return self._container
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
        self._container = container
        return container

    def reopen(self) -> av.container.InputContainer:
        """A freshly opened container, positioned at the start of the file."""
        self.rewind()
        return self.open()

    def rewind(self) -> None:
        """Close the container so the next :meth:`open` starts from a fresh demuxer."""
        if self._container is not None:
            self._container.close()
            self._container = None

    def __getstate__(self) -> dict[str, Any]:
        # An open container cannot cross a process boundary; the copy reopens the file on first use.
        return {**self.__dict__, "_container": None}
