"""One line of text for an exception: what went wrong, and for OS errors the usual fix."""
import errno
import os
from typing import Optional, Union

__all__ = ['describe_error', 'describe_os_error']

PathLike = Union[str, 'os.PathLike[str]']

_OS_ERROR_HINTS = {
    errno.ENOSPC: 'the disk is full; free space or choose another output folder',
    errno.EDQUOT: 'the disk quota is exhausted; free space or choose another output folder',
    errno.EROFS: 'the file system is read-only; choose a writable output folder',
    errno.EACCES: 'permission denied; choose a folder you can write to',
    errno.EPERM: 'permission denied; choose a folder you can write to',
    errno.ENOTDIR: 'a part of the path is a file, not a folder; choose another path',
    errno.EISDIR: 'it is a folder, not a file; pass a file path',
    errno.ENAMETOOLONG: 'the name is too long; choose a shorter path',
}


def describe_error(exc: BaseException) -> str:
    """Short human-readable text of any exception (PyAV/FFmpeg errors give their ``strerror``).

    Args:
        exc: The exception.

    Returns:
        Its message, or its type name when the message is empty.
    """
    text = getattr(exc, 'strerror', None) or str(exc)
    return str(text).strip() or type(exc).__name__


def describe_os_error(err: OSError, path: Optional[PathLike] = None) -> str:
    """One line naming the path and what is wrong, with the fix for the usual causes.

    Args:
        err: The error raised while writing.
        path: The destination, used when the error names no file.

    Returns:
        ``"cannot write 'PATH': HINT"``, or the message itself for errors without an errno
        (raised by this project with a complete message).
    """
    if err.errno is None:
        return str(err)
    where = err.filename or path or '?'
    hint = _OS_ERROR_HINTS.get(err.errno, err.strerror or str(err))
    return f"cannot write '{where}': {hint}"
