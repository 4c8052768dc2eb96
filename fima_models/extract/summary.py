"""``summary.json`` of a many-video extraction: one record per input, merged across ranks, written atomically."""
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

from fima_models._utils import atomic_write_bytes, describe_os_error

__all__ = [
    'SUMMARY_NAME', 'SUMMARY_VERSION', 'SUMMARY_INTERVAL', 'record', 'failure_reason', 'RunState', 'merge_summaries',
    'SummaryWriter',
]

_logger = logging.getLogger(__name__)

SUMMARY_NAME = 'summary.json'
SUMMARY_VERSION = 1
#: Least seconds between two rewrites of the interim summary while videos finish.
SUMMARY_INTERVAL = 5.0


def record(job_or_input: Any, status: str, **fields: Any) -> Dict[str, Any]:
    """The summary entry of one input: ``ok``, ``failed``, ``skipped`` or ``pending``, with its details."""
    entry = {'input': str(job_or_input), 'output': None, 'status': status, 'num_clips': 0,
             'seconds': None, 'reason': None}
    entry.update(fields)
    return entry


def failure_reason(exc: BaseException) -> str:
    """The reason recorded for a failed video: the exception's type and message."""
    return f'{type(exc).__name__}: {exc}'


@dataclass
class RunState:
    """Bookkeeping of one rank's extraction: the record of every input it settled, and clips run."""
    records: Dict[int, Dict[str, Any]] = field(default_factory=dict)
    clips: int = 0

    def partial(self, elapsed: float) -> Dict[str, Any]:
        """This rank's part of the summary (JSON-serialisable), for :func:`merge_summaries`."""
        return {'records': {str(k): v for k, v in self.records.items()}, 'clips': self.clips, 'elapsed': elapsed}


def merge_summaries(parts: List[Dict[str, Any]], header: Dict[str, Any], complete: bool = True) -> Dict[str, Any]:
    """One summary from the per-rank partial ones, videos in input order.

    Args:
        parts: :meth:`RunState.partial` of every rank.
        header: ``model``, ``pretrained``, ``format``, ``config`` and ``world_size`` of the run.
        complete: whether the run has finished (an interim summary also counts ``pending`` inputs).
    """
    records: Dict[int, Dict[str, Any]] = {}
    for part in parts:
        records.update({int(k): v for k, v in part['records'].items()})
    videos = [records[k] for k in sorted(records)]
    clips = sum(int(p['clips']) for p in parts)
    elapsed = max((float(p['elapsed']) for p in parts), default=0.0)
    done = sum(1 for v in videos if v['status'] == 'ok')
    statuses = ('ok', 'failed', 'skipped') if complete else ('ok', 'failed', 'skipped', 'pending')
    return {
        'version': SUMMARY_VERSION,
        'complete': complete,
        **header,
        'counts': {s: sum(1 for v in videos if v['status'] == s) for s in statuses},
        'clips': clips,
        'elapsed_seconds': elapsed,
        'clips_per_second': clips / elapsed if elapsed > 0 else 0.0,
        'videos_per_second': done / elapsed if elapsed > 0 else 0.0,
        'videos': videos,
    }


class SummaryWriter:
    """Writes ``summary.json`` atomically: at the start, at most every :data:`SUMMARY_INTERVAL` s while videos finish, at the end.

    While the run is going the summary says ``complete: false`` and lists unfinished videos as
    ``pending``, so an interrupted run never leaves a summary that describes another run. Only
    rank 0 writes it; with several ranks, the videos of the others show as pending until the end.

    Args:
        out: the output folder.
        header: see :func:`merge_summaries`.
        rank: this process's rank.
        everything: the record of every input, ``pending`` until settled.
    """

    def __init__(self, out: Path, header: Dict[str, Any], rank: int, everything: Dict[int, Dict[str, Any]]) -> None:
        self.path = out / SUMMARY_NAME
        self.header, self.rank, self.everything = header, rank, everything
        self.last = -math.inf
        self.warned = False

    def maybe_write(self, state: RunState, elapsed: float) -> None:
        """Rewrite the interim summary if :data:`SUMMARY_INTERVAL` seconds passed since the last write."""
        if self.rank != 0 or time.monotonic() - self.last < SUMMARY_INTERVAL:
            return
        interim = RunState(records={**self.everything, **state.records}, clips=state.clips)
        self.write(merge_summaries([interim.partial(elapsed)], self.header, complete=False))

    def write(self, summary: Dict[str, Any]) -> bool:
        """Write ``summary``; on an OS error log one line (once) and return False."""
        self.last = time.monotonic()
        try:
            atomic_write_bytes(self.path, json.dumps(summary, indent=1).encode('utf-8'))
        except OSError as err:
            if not self.warned:
                _logger.error('%s', describe_os_error(err, self.path))
                self.warned = True
            return False
        return True
