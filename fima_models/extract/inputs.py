"""Inputs of a many-video run: video files, folders searched for videos, and list files.

List files (:data:`LIST_EXTENSIONS`) name one video path per line; relative paths are relative
to the list file, blank lines and ``#`` comments are ignored. Every video gets an output name
mirroring its path below its input root (the folder given, or the list file's folder).
"""
import logging
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from fima_models._utils import VIDEO_EXTENSIONS
from fima_models.extract.summary import record

__all__ = ['LIST_EXTENSIONS', 'read_list', 'find_videos', 'is_list_file', 'VideoJob', 'collect_inputs']

_logger = logging.getLogger(__name__)

#: File suffixes read as lists of video paths.
LIST_EXTENSIONS = ('.txt', '.lst', '.list')

_NOT_A_VIDEO_DIR = "'{path}' is a directory, not a video file, and holds no video files"
_LISTED_DIR = "'{path}' is a directory, not a video file; pass the folder itself as an INPUT to search it for videos"


def read_list(list_file: Path) -> Iterator[Path]:
    """Yield the video paths a list file names, one per line (relative paths against the list's folder).

    Raises:
        ValueError: The file is binary or not UTF-8 text.
    """
    try:
        text = list_file.read_bytes().decode('utf-8')
    except UnicodeDecodeError as err:
        raise ValueError(
            f"list file '{list_file}' is not UTF-8 text (byte {err.start}); a list holds one video path per line. "
            'Pass videos directly, or re-save the list as UTF-8') from None
    except OSError as err:
        raise ValueError(f"cannot read list file '{list_file}': {err.strerror}") from None
    if '\x00' in text:
        raise ValueError(f"list file '{list_file}' is a binary file, not a text list of video paths; pass videos "
                         'directly, or a .txt file with one path per line')
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        entry = Path(line).expanduser()
        yield entry if entry.is_absolute() else list_file.parent / entry


def find_videos(folder: Path) -> List[Path]:
    """Every file below ``folder`` (recursively) with a video suffix (:data:`fima_models._utils.VIDEO_EXTENSIONS`), sorted."""
    return sorted(p for p in folder.rglob('*') if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


def is_list_file(path: Path) -> bool:
    """Whether ``path`` is an existing file read as a list of videos (by its suffix)."""
    return path.is_file() and path.suffix.lower() in LIST_EXTENSIONS


@dataclass
class VideoJob:
    """One video to process: its position among the inputs, its file and its output name."""
    index: int
    path: Path
    rel: PurePath  # output path relative to OUT, without the format suffix


def _mirror(path: Path, root: Optional[Path]) -> PurePath:
    """``path`` relative to ``root`` when it lies below it, else just its file name."""
    if root is not None:
        try:
            return path.resolve().relative_to(root.resolve())
        except ValueError:
            pass
    return PurePath(path.name)


def _candidates(inputs: Sequence[str], problems: List[Dict[str, Any]]) -> List[Tuple[Path, PurePath]]:
    """Every video path the inputs name, with its output name; empty folders go to ``problems``."""
    candidates: List[Tuple[Path, PurePath]] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = find_videos(path)
            if not found and path.suffix.lower() in VIDEO_EXTENSIONS:
                problems.append(record(path, 'failed', reason=_NOT_A_VIDEO_DIR.format(path=path)))
            elif not found:
                _logger.warning("no video files (%s) found under '%s'", ' '.join(VIDEO_EXTENSIONS), path)
            candidates += [(p, _mirror(p, path)) for p in found]
        elif is_list_file(path):
            candidates += [(p, _mirror(p, path.parent)) for p in read_list(path)]
        else:
            candidates.append((path, PurePath(path.name)))
    return candidates


def collect_inputs(inputs: Sequence[str]) -> Tuple[List[VideoJob], List[Dict[str, Any]]]:
    """Expand files, folders and list files into jobs with mirrored output names.

    Returns:
        ``(jobs, problems)``: the videos to process, and summary records (status ``failed``) for
        inputs that do not exist or whose output name collides with an earlier video's.
    """
    problems: List[Dict[str, Any]] = []
    jobs: List[VideoJob] = []
    seen_files: Dict[Path, Path] = {}
    seen_outputs: Dict[PurePath, Path] = {}
    for path, rel in _candidates(inputs, problems):
        if path.is_dir():
            problems.append(record(path, 'failed', reason=_LISTED_DIR.format(path=path)))
            continue
        if not path.is_file():
            problems.append(record(path, 'failed', reason=f"no such file: '{path}'; check the path or list entry"))
            continue
        resolved = path.resolve()
        if resolved in seen_files:
            _logger.info("'%s' is listed more than once; extracting it once", path)
            continue
        seen_files[resolved] = path
        out_rel = rel.with_suffix('')
        if out_rel in seen_outputs:
            problems.append(record(path, 'failed', reason=(
                f"its output name '{out_rel}' is already used by '{seen_outputs[out_rel]}'; rename one of "
                'the videos or extract them into different --out folders')))
            continue
        seen_outputs[out_rel] = path
        jobs.append(VideoJob(index=len(jobs), path=path, rel=out_rel))
    return jobs, problems
