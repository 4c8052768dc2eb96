"""Crash-safe, concurrency-safe file writing and a one-writer lock for output folders.

Every file the library (and ``train/`` / ``hub/``) writes goes through :func:`atomic_write`: the
content goes to a temporary file with a per-process unique name beside the destination, is
flushed to disk and renamed over the destination. A reader therefore sees the old file or the new
one, never a mix, even when several processes write the same path at once; a crash leaves at most
a hidden ``.NAME.XXXX.tmp`` file, never a half-written destination. The result gets the
permissions an ordinary ``open()`` would give (``0666`` minus the user's umask), not the
``0600`` of :func:`tempfile.mkstemp`.

:class:`FolderLock` is an advisory ``fcntl`` lock that makes a second process writing into the
same output folder fail at once, with a message naming the process that holds it.
"""
import errno
import json
import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Optional, Union

__all__ = [
    'atomic_write', 'atomic_write_bytes', 'atomic_write_text', 'default_file_mode', 'default_dir_mode',
    'FolderLock', 'FolderLockedError',
]

_logger = logging.getLogger(__name__)

PathLike = Union[str, 'os.PathLike[str]']


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (``/proc``), else set and reset."""
    try:
        with open('/proc/self/status', encoding='ascii') as status:
            for line in status:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """Permissions ``open(path, 'w')`` gives a new file: ``0666`` minus the umask."""
    return 0o666 & ~_umask()


def default_dir_mode() -> int:
    """Permissions ``mkdir`` gives a new folder: ``0777`` minus the umask."""
    return 0o777 & ~_umask()


def atomic_write(path: PathLike, writer: Callable[[IO[Any]], Any], mode: str = 'wb') -> Path:
    """Write a file atomically through a callback.

    Args:
        path: Destination file; its folder is created when missing.
        writer: Called with the open temporary file (opened with ``mode``) and writes the content.
        mode: ``'wb'`` or ``'w'`` (UTF-8 text, newlines untranslated).

    Returns:
        The destination path.

    Raises:
        OSError: The folder cannot be created or written (disk full, read-only ...); the
            destination is left as it was and the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=str(path.parent))
    try:
        os.fchmod(fd, default_file_mode())
        text = {} if 'b' in mode else {'encoding': 'utf-8', 'newline': ''}
        with os.fdopen(fd, mode, **text) as handle:
            writer(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Atomically write a binary file (see :func:`atomic_write`)."""
    return atomic_write(path, lambda handle: handle.write(data), mode='wb')


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Atomically write a UTF-8 text file (see :func:`atomic_write`)."""
    return atomic_write(path, lambda handle: handle.write(text), mode='w')


def _fsync_dir(folder: Path) -> None:
    """Flush a directory entry so a rename survives power loss (no-op where unsupported)."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class FolderLockedError(RuntimeError):
    """Another process holds the lock of an output folder."""


class FolderLock:
    """Advisory exclusive lock of an output folder (``DIR/.NAME.lock``), released on exit or crash.

    The lock file records the holder's pid and host, so a second writer is told who holds it. The
    kernel drops the lock when the holder dies (``kill -9`` included), so a stale lock file never
    blocks a later run.

    Args:
        folder: The output folder (created when missing).
        name: Lock name, e.g. the command (``extract``).

    Raises:
        FolderLockedError: On entry, when another process holds the lock.
    """

    def __init__(self, folder: PathLike, name: str) -> None:
        self.path = Path(folder) / f'.{name}.lock'
        self._fd: Optional[int] = None

    def __enter__(self) -> 'FolderLock':
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT, default_file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise FolderLockedError(
                f"'{self.path.parent}' is in use by another run ({self._holder()}); wait for it to finish "
                'or choose another output folder') from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({'pid': os.getpid(), 'host': socket.gethostname()}).encode('utf-8'))
        self._fd = fd
        return self

    def _holder(self) -> str:
        try:
            holder = json.loads(self.path.read_text(encoding='utf-8'))
            return f"pid {holder['pid']} on host {holder['host']}"
        except (OSError, ValueError, KeyError, TypeError):
            return 'holder unknown'

    def __exit__(self, *exc: Any) -> None:
        import fcntl

        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
