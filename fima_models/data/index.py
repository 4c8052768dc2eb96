"""Persisted per-video index (frame count, fps, size) of a data set.

:func:`build_index` probes every video once with :func:`fima_models.video.probe_video`
(a demux pass and one decode pass, so frame counts are the decodable frames and files
whose timestamps mislead get a frame table the readers use) in a thread or process pool
with a tqdm progress bar and stores the result as JSON, written atomically
(:func:`fima_models._utils.atomic_write`):

* beside the data: ``<root>/.fima_index.json`` when ``root`` is writable, else
* in a cache dir: ``<cache_dir or ~/.cache/fima_models/index>/<hash of root>.json``.

An entry is reused while the file's size and modification time are unchanged.
Broken videos are recorded with their error, logged, counted and skipped (or
raise with ``strict=True``); missing files are counted and skipped likewise.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from fima_models._utils import atomic_write
from fima_models.video import VideoDecodeError, probe_video

__all__ = ["VideoIndex", "build_index", "index_path_for", "probe_entry", "probe_many", "INDEX_FILENAME"]

_logger = logging.getLogger(__name__)

INDEX_FILENAME = ".fima_index.json"
#: 2: exact probes (decode pass) with frame tables; version 1 entries counted packets.
_VERSION = 2


@dataclass
class VideoIndex:
    """Index of the videos of one data set root.

    Attributes:
        root: data set root (keys are paths relative to it).
        entries: key -> ``{size, mtime_ns, **probe_video(path)}`` (``num_frames``, ``fps``,
            ``duration``, ``height``, ``width``, ``frame_index``, ...) or ``{size, mtime_ns, error}``
            for broken videos.
        location: JSON file the index is stored in.
        broken: ``(path, reason)`` of the broken videos among those asked for.
        missing: listed paths that do not exist.
        reused: entries taken from the stored index without probing.
        probed: entries probed in this call.
    """

    root: Path
    entries: dict[str, dict[str, Any]]
    location: Path
    broken: list[tuple[Path, str]] = field(default_factory=list)
    missing: list[Path] = field(default_factory=list)
    reused: int = 0
    probed: int = 0

    def __post_init__(self) -> None:
        self._resolved_root = Path(self.root).resolve()

    def key(self, path: Path) -> str:
        """Index key of ``path`` (relative to the root when inside it)."""
        resolved = Path(path).resolve()
        try:
            return resolved.relative_to(self._resolved_root).as_posix()
        except ValueError:
            return str(resolved)

    def info(self, path: Path) -> dict[str, Any] | None:
        """Metadata of a readable video, or None when broken or unknown."""
        entry = self.entries.get(self.key(path))
        if entry is None or "error" in entry:
            return None
        return entry

    def is_ok(self, path: Path) -> bool:
        """Whether ``path`` is indexed as a readable video."""
        return self.info(path) is not None


def index_path_for(root: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the index of ``root`` is stored (see module docs)."""
    root = Path(root).resolve()
    if cache_dir is None and os.access(root, os.W_OK):
        return root / INDEX_FILENAME
    base = Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "fima_models" / "index"
    digest = hashlib.sha1(str(root).encode()).hexdigest()[:16]
    return base / f"{root.name}-{digest}.json"


def _load(location: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(location.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        _logger.warning("ignoring unreadable video index %s (%s); rebuilding it", location, exc)
        return {}
    if not isinstance(data, dict) or data.get("version") != _VERSION or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]


def _save(location: Path, entries: dict[str, dict[str, Any]]) -> None:
    data = {"version": _VERSION, "entries": entries}
    atomic_write(location, lambda fh: json.dump(data, fh, sort_keys=True), mode="w")


def probe_entry(path: str, strict: bool = True) -> dict[str, Any]:
    """Probe one file; never raises (module-level so process pools can pickle it).

    Args:
        path: video file.
        strict: decode strictly (see :class:`~fima_models.video.VideoReader`).

    Returns:
        :func:`~fima_models.video.probe_video`'s fields, or ``{"error": reason}``.
    """
    try:
        return dict(probe_video(path, strict=strict))
    except VideoDecodeError as exc:
        return {"error": exc.reason}
    except FileNotFoundError:
        return {"error": "file not found"}
    except Exception as exc:  # noqa: BLE001 - any failure marks the video broken, the index goes on
        return {"error": f"{type(exc).__name__}: {exc}"}


def _check_executor(executor: str) -> None:
    if executor not in ("thread", "process"):
        raise ValueError(f"executor must be 'thread' or 'process', got '{executor}'")


def probe_many(
    paths: Sequence[str | os.PathLike[str]],
    workers: int | None = None,
    executor: str = "thread",
    progress: bool = True,
    desc: str = "indexing videos",
    strict: bool = True,
) -> list[dict[str, Any]]:
    """:func:`probe_entry` for every path, in a pool, with a tqdm progress bar.

    Args:
        paths: video files.
        workers: pool size (default: ``min(8, cpu_count)``; 0 or 1 probe in this thread).
        executor: ``"thread"`` or ``"process"`` pool.
        progress: show the progress bar.
        desc: its label.
        strict: decode strictly (see :class:`~fima_models.video.VideoReader`).

    Returns:
        One probe result per path, in order.
    """
    _check_executor(executor)
    names = [str(p) for p in paths]
    n_workers = min(8, os.cpu_count() or 1) if workers is None else workers
    probe = functools.partial(probe_entry, strict=strict)
    results: list[dict[str, Any]] = []
    with tqdm(total=len(names), desc=desc, unit="video", disable=not progress) as bar:
        if n_workers <= 1 or len(names) <= 1:
            for name in names:
                results.append(probe(name))
                bar.update()
            return results
        pool: Executor = (ThreadPoolExecutor if executor == "thread" else ProcessPoolExecutor)(n_workers)
        with pool:
            for result in pool.map(probe, names):
                results.append(result)
                bar.update()
    return results


def build_index(
    paths: Sequence[str | os.PathLike[str]],
    root: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    executor: str = "thread",
    strict: bool = False,
    progress: bool = True,
) -> VideoIndex:
    """Probe ``paths`` (reusing the stored index) and persist the result.

    Args:
        paths: video files of the data set.
        root: data set root; the index is stored beside it (or in ``cache_dir``).
        cache_dir: store the index here instead of beside the data.
        workers: pool size (default: ``min(8, cpu_count)``; 0 or 1 probe in this thread).
        executor: ``"thread"`` or ``"process"`` pool.
        strict: raise on the first broken or missing video instead of skipping it.
        progress: show a tqdm progress bar.

    Returns:
        The :class:`VideoIndex` (``broken`` and ``missing`` list what was skipped).

    Raises:
        FileNotFoundError: ``strict`` and a listed file is missing.
        VideoDecodeError: ``strict`` and a video is broken.
    """
    _check_executor(executor)
    root_path = Path(root)
    location = index_path_for(root_path, cache_dir)
    entries = _load(location)
    index = VideoIndex(root=root_path, entries=entries, location=location)
    todo: list[tuple[str, Path, int, int]] = []
    keys = {Path(p): index.key(Path(p)) for p in paths}
    for p in keys:
        try:
            st = p.stat()
        except FileNotFoundError:
            if strict:
                raise FileNotFoundError(
                    f"video listed in the annotations is missing: '{p}'. Restore it or pass strict=False to skip it."
                ) from None
            index.missing.append(p)
            continue
        key = keys[p]
        entry = entries.get(key)
        if entry is not None and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
            index.reused += 1
            continue
        todo.append((key, p, st.st_size, st.st_mtime_ns))
    if todo:
        results = probe_many([t[1] for t in todo], workers=workers, executor=executor, progress=progress)
        for (key, _, size, mtime), info in zip(todo, results):
            entries[key] = {**info, "size": size, "mtime_ns": mtime}
        index.probed = len(todo)
        _save(location, entries)
    missing = set(index.missing)
    for p, key in keys.items():
        entry = entries.get(key)
        if entry is not None and "error" in entry and p not in missing:
            index.broken.append((p, entry["error"]))
    if index.broken:
        if strict:
            path, reason = index.broken[0]
            raise VideoDecodeError(path, f"{reason} ({len(index.broken)} broken video(s) in total)")
        for path, reason in index.broken[:10]:
            _logger.warning("skipping broken video %s: %s", path, reason)
        _logger.warning("%d of %d videos are broken and skipped", len(index.broken), len(paths))
    if index.missing:
        _logger.warning("%d of %d listed videos are missing and skipped (first: %s)",
                        len(index.missing), len(paths), index.missing[0])
    return index
