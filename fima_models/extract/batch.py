"""Feature extraction of many videos into a folder: resumable, decoded in workers, split across torchrun ranks.

Every video gets ``OUT/<path relative to its input root>`` with the video suffix replaced by
``.npy`` or ``.safetensors`` and a sidecar (see :mod:`fima_models.extract.storage`). A run started
again skips a video only when its sidecar records the same weights, settings and input file, so
replaced weights or a replaced video are extracted again. ``OUT/summary.json``
(:mod:`fima_models.extract.summary`) lists every input. One run at a time writes into an ``OUT``
(an advisory lock on ``OUT/.extract.lock``). Under ``torchrun`` every rank takes every
``world_size``-th video, uses GPU ``LOCAL_RANK``, and rank 0 merges the per-rank partial
summaries into one ``summary.json``.
"""
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from fima_models._utils import atomic_write_bytes
from fima_models.extract.distributed import DistEnv, barrier, dist_env, process_group
from fima_models.extract.inputs import VideoJob, collect_inputs
from fima_models.extract.pipeline import VideoPipeline
from fima_models.extract.setup import ExtractionSettings, ExtractionSetup, prepare_setup
from fima_models.extract.storage import open_output_folder, output_path, read_sidecar, source_id
from fima_models.extract.summary import RunState, SummaryWriter, merge_summaries, record

__all__ = ['ExtractionOutcome', 'run_extraction']

_logger = logging.getLogger(__name__)


@dataclass
class ExtractionOutcome:
    """How a run ended, for the command line to report.

    Attributes:
        summary: the merged summary, on the rank that wrote it (rank 0); ``None`` on the others.
        summary_written: whether ``summary.json`` could be written.
        failed: whether any input failed (every input on rank 0; this rank's on the others).
    """
    summary: Optional[Dict[str, Any]]
    summary_written: bool
    failed: bool


def run_extraction(settings: ExtractionSettings) -> ExtractionOutcome:
    """Extract the features of every input video into ``settings.out`` (see the module docstring).

    Raises:
        ValueError: invalid settings (before any work).
        RuntimeError: ``out`` cannot be created or written, or another run is writing into it.
    """
    env = dist_env()
    with process_group(env.world_size):
        setup = prepare_setup(settings, env.world_size, env.local_rank)
        jobs, problems = collect_inputs(settings.inputs)
        with open_output_folder(settings.out, lock=env.rank == 0):
            return _BatchRun(setup, env).run(jobs, problems)


class _BatchRun:
    """One rank's run once every option and input is checked and the output folder is created and locked."""

    def __init__(self, setup: ExtractionSetup, env: DistEnv) -> None:
        self.setup, self.env = setup, env
        settings = setup.settings
        self.header = {'model': settings.model, 'pretrained': bool(settings.pretrained), 'format': settings.format,
                       'config': setup.config, 'world_size': env.world_size}

    def run(self, jobs: List[VideoJob], problems: List[Dict[str, Any]]) -> ExtractionOutcome:
        """Skip finished videos, extract the others, and write (or merge) the summary."""
        state = RunState()
        if self.env.rank == 0:
            state.records.update({len(jobs) + i: problem for i, problem in enumerate(problems)})
        pending, sources = self._pending(jobs, state)
        everything = {job.index: record(job.path, 'pending') for job in jobs}
        everything.update(state.records)
        summaries = SummaryWriter(self.setup.settings.out, self.header, self.env.rank, everything)
        started = time.perf_counter()
        summaries.maybe_write(state, 0.0)
        if pending:
            VideoPipeline(self.setup, pending, sources, state,
                          show_progress=self.setup.settings.progress and self.env.rank == 0,
                          on_finished=lambda: summaries.maybe_write(state, time.perf_counter() - started)).run()
        summary = self._merged(state.partial(time.perf_counter() - started))
        if summary is None:
            return ExtractionOutcome(None, False, any(r['status'] == 'failed' for r in state.records.values()))
        written = summaries.write(summary)
        return ExtractionOutcome(summary, written, bool(summary['counts']['failed']))

    def _pending(self, jobs: List[VideoJob], state: RunState) -> Tuple[List[VideoJob], Dict[int, Dict[str, Any]]]:
        """This rank's videos not finished with the same weights, settings and input; skipped ones go to ``state``."""
        settings, fingerprint = self.setup.settings, self.setup.fingerprint
        pending: List[VideoJob] = []
        sources: Dict[int, Dict[str, Any]] = {}
        for job in jobs[self.env.rank::self.env.world_size]:
            out_path = output_path(settings.out, job.rel, settings.format)
            sources[job.index] = source_id(job.path)
            meta = None if settings.overwrite else read_sidecar(out_path)
            if meta is not None and meta.get('extraction') == fingerprint and meta.get('source') == sources[job.index]:
                state.records[job.index] = record(
                    job.path, 'skipped', output=str(out_path.relative_to(settings.out)),
                    num_clips=meta.get('num_clips', 0), seconds=meta.get('duration'),
                    reason='already extracted from the same file with the same weights and settings')
                continue
            if meta is not None:
                _logger.info("'%s' was extracted from another file, weights or settings; extracting it again",
                             out_path)
            pending.append(job)
        return pending, sources

    def _merged(self, partial: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """The summary of all ranks (on rank 0; ``None`` on the others), through partial files and barriers."""
        world_size, rank, out = self.env.world_size, self.env.rank, self.setup.settings.out
        if world_size == 1:
            return merge_summaries([partial], self.header)
        atomic_write_bytes(out / f'summary.rank{rank}-of-{world_size}.json', json.dumps(partial).encode('utf-8'))
        barrier(world_size)
        summary = None
        if rank == 0:
            parts = [out / f'summary.rank{r}-of-{world_size}.json' for r in range(world_size)]
            summary = merge_summaries([json.loads(p.read_text(encoding='utf-8')) for p in parts], self.header)
            for part in parts:
                part.unlink()
        barrier(world_size)
        return summary

