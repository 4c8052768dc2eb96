"""The one error type of the video reader: a file that cannot be opened or decoded correctly."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import av.error

from fima_models._utils import describe_error

__all__ = ["VideoDecodeError", "decoding_failed", "decode_errors"]


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


def decoding_failed(path: str | os.PathLike[str], exc: BaseException) -> VideoDecodeError:
    """The :class:`VideoDecodeError` for an FFmpeg failure ``exc`` while decoding ``path``."""
    return VideoDecodeError(path, f"decoding failed ({describe_error(exc)})")


@contextlib.contextmanager
def decode_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn what a decode pass raises into :class:`VideoDecodeError`: FFmpeg failures and flagged pictures.

    Raises:
        VideoDecodeError: FFmpeg failed, or a ``ValueError`` named a picture flagged corrupt.
    """
    try:
        yield
    except av.error.FFmpegError as exc:
        raise decoding_failed(path, exc) from exc
    except ValueError as exc:
        raise VideoDecodeError(path, str(exc)) from exc
