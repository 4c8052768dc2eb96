"""``fima-models check-videos``: which videos can be read exactly, and how.

Each video gets the same exact probe the data set index uses
(:func:`fima_models.video.probe_video`: a demux pass and one decode pass), so a file this
command reports as ok is read frame-exactly by :class:`~fima_models.video.VideoReader`, data
sets and feature extraction, and a file it reports as bad is skipped (or refused) by them::

    fima-models check-videos videos/ more.mp4 list.txt --workers 4 --json report.json

Per file: decodable or not (with the reason), decodable frames vs the count the container
claims, frame rate, duration, size (upright), codec, display rotation, and whether the fast
timestamp path is exact for it (``no`` means the reader indexes the file by decoding it once,
with the reason). Exit status 1 when any file is bad.
"""
import argparse
import json
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from fima_models._utils import VIDEO_EXTENSIONS, atomic_write_text, describe_os_error
from fima_models.data.index import probe_many
from fima_models.extract.inputs import find_videos, is_list_file, read_list

__all__ = ['add_parser', 'run', 'collect_videos', 'format_table']

_COLUMNS = ('file', 'status', 'frames', 'claimed', 'fps', 'seconds', 'size', 'codec', 'rotation', 'fast seek',
            'reason')


def collect_videos(inputs: Sequence[str]) -> Tuple[List[Path], List[Dict[str, Any]]]:
    """Expand files, folders (searched recursively) and list files into video paths.

    Returns:
        ``(videos, problems)``: the files to probe (each once), and report rows for inputs
        that are missing, or folders that hold no video file.
    """
    videos: List[Path] = []
    problems: List[Dict[str, Any]] = []
    seen = set()
    candidates: List[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = find_videos(path)
            if not found:
                problems.append(_bad_row(path, 'a directory, not a video file, and it holds no video files '
                                               f"({' '.join(VIDEO_EXTENSIONS)})"))
            candidates += found
        elif is_list_file(path):
            candidates += list(read_list(path))
        else:
            candidates.append(path)
    for path in candidates:
        if not path.exists():
            problems.append(_bad_row(path, 'file not found; check the path or list entry'))
            continue
        resolved = path.resolve()
        if resolved not in seen:
            seen.add(resolved)
            videos.append(path)
    return videos, problems


def _bad_row(path: Path, reason: str) -> Dict[str, Any]:
    return {'file': str(path), 'ok': False, 'reason': reason}


def _row(path: Path, probe: Dict[str, Any]) -> Dict[str, Any]:
    if 'error' in probe:
        return _bad_row(path, probe['error'])
    keys = ('num_frames', 'claimed_frames', 'packets', 'fps', 'duration', 'height', 'width', 'codec', 'rotation',
            'fast_seek', 'reason')
    return {'file': str(path), 'ok': True, **{key: probe[key] for key in keys}}


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
    """The report as an aligned text table, one line per file."""
    lines = [list(_COLUMNS)]
    for row in rows:
        if not row['ok']:
            lines.append([row['file'], 'BAD'] + [''] * (len(_COLUMNS) - 3) + [row['reason']])
            continue
        claimed = row['claimed_frames']
        lines.append([
            row['file'], 'ok', str(row['num_frames']), str(claimed) if claimed else '?', f"{row['fps']:.3f}",
            f"{row['duration']:.2f}", f"{row['width']}x{row['height']}", row['codec'], str(row['rotation']),
            'yes' if row['fast_seek'] else 'no', row['reason'],
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(_COLUMNS) - 1)]
    return '\n'.join('  '.join(cell.ljust(width) for cell, width in zip(line, widths)) + '  ' + line[-1]
                     for line in lines).rstrip()


def run(args: argparse.Namespace) -> int:
    """Probe every video, print the table (and write the JSON report); 1 if any file is bad."""
    if args.workers is not None and args.workers < 0:
        raise ValueError(f'--workers must be 0 or more, got {args.workers}')
    videos, problems = collect_videos(args.inputs)
    if not videos and not problems:
        raise ValueError('no video files found in the inputs; pass video files, folders or list files')
    probes = probe_many(videos, workers=args.workers, progress=not args.no_progress, desc='checking videos',
                        strict=not args.lenient)
    rows = [_row(path, probe) for path, probe in zip(videos, probes)] + problems
    bad = [row for row in rows if not row['ok']]
    slow = [row for row in rows if row['ok'] and not row['fast_seek']]
    summary = {'files': len(rows), 'ok': len(rows) - len(bad), 'bad': len(bad), 'decode_pass_index': len(slow),
               'strict': not args.lenient}
    print(format_table(rows))
    print(f"\n{summary['ok']} of {summary['files']} files readable exactly, {len(bad)} bad; "
          f"{len(slow)} need a decode pass to index (their timestamps mislead).")
    if not args.lenient and any(row['reason'].startswith('decoding failed') for row in bad):
        print('Files that fail to decode may hold bitstream errors the decoder can conceal: check them with '
              '--lenient, and read them with VideoReader(path, strict=False).')
    if args.json:
        try:
            atomic_write_text(args.json, json.dumps({'summary': summary, 'files': rows}, indent=1) + '\n')
        except OSError as err:
            raise RuntimeError(describe_os_error(err, args.json)) from err
        print(f'Report: {args.json}')
    return 1 if bad else 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``check-videos`` to the ``fima-models`` command line."""
    p = subparsers.add_parser(
        'check-videos', help='probe videos: decodable, frame counts, rate, size, codec, rotation, fast seek',
        description=__doc__.splitlines()[0].split(': ', 1)[1])
    p.add_argument('inputs', nargs='+', metavar='INPUT', help='video files, folders or text files listing videos')
    p.add_argument('--json', type=Path, metavar='PATH', help='also write the report as JSON to PATH')
    p.add_argument('--workers', type=int, default=None,
                   help='parallel probes (default: min(8, CPU count); 0 or 1: in this process)')
    p.add_argument('--lenient', action='store_true',
                   help='accept pictures whose bitstream errors the decoder conceals (strict by default, '
                        'as the readers are)')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    return p
