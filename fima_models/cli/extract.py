"""``fima-models extract``: features of many videos, resumable, with decoding in worker processes.

::

    fima-models extract videos/ more.mp4 list.txt --model r2plus1d_18 --out feats/ --level clip

Inputs are video files, folders (searched recursively for video extensions) and text files
(``.txt``/``.lst``/``.list``) listing one video path per line (relative paths are relative to
the list file; blank lines and ``#`` comments are ignored). Every video gets
``OUT/<path relative to its input root>`` with the video suffix replaced by ``.npy`` or
``.safetensors`` and a sidecar ``<that name>.json`` holding the clip frames and times. The sidecar
is written last, through a temp file and a rename, and records the feature file's size: it is the
completion marker. It also records what produced the features: a SHA-256 of the weights, every
setting, and the input's resolved path, size and modification time. A run started again skips a
video only when all of these match, so replaced weights or a replaced video are extracted again.
``OUT/summary.json`` lists every input as ``ok``, ``failed`` (with the reason), ``skipped``
(already finished) or, while the run is going (``complete: false``), ``pending``, with its clip
count and duration in seconds; it is rewritten atomically at the start, every few seconds while
videos finish, and at the end. The exit status is 1 when any input failed. One run at a time
writes into an ``--out``: a second one stops at once, naming the process that holds the folder
(an advisory lock on ``OUT/.extract.lock``, released by the kernel even when a run is killed).

Decoding runs in DataLoader worker processes: an IterableDataset shards the videos across the
workers, each sending pieces of a few clips; the main process joins pieces from all workers and
videos into model batches of exactly ``--batch-size`` clips, so short videos still fill them. Under ``torchrun`` every rank takes every ``world_size``-th video, uses GPU
``LOCAL_RANK``, and rank 0 merges the per-rank partial summaries into one ``summary.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path, PurePath
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from fima_models._utils import FolderLock, atomic_write_bytes, describe_os_error
from fima_models.features import (
    FORMATS, LEVELS, POOLINGS, FeatureAccumulator, NonFiniteFeaturesError, build_transform, check_layer,
    extraction_config, iter_clip_chunks, load_model, pool_maps, prepare_clips, prepare_inference,
    raw_clip_limit, read_sidecar, resolve_amp, resolve_device, resolve_pooling, save_features, weights_digest,
)
from fima_models.inference import configure_allocator
from fima_models.transforms import EvalTransform
from fima_models.video import VideoReader

__all__ = [
    'register', 'run', 'collect_inputs', 'VideoJob', 'ClipBatch', 'ClipBatchDataset', 'VIDEO_EXTENSIONS',
    'LIST_EXTENSIONS', 'SUMMARY_NAME', 'read_list',
]

_LOGGER = logging.getLogger(__name__)

#: File suffixes taken as videos when a folder is searched.
VIDEO_EXTENSIONS = (
    '.mp4', '.avi', '.mkv', '.webm', '.mov', '.m4v', '.mpg', '.mpeg', '.flv', '.wmv', '.3gp', '.ogv', '.ts',
)
#: File suffixes read as lists of video paths.
LIST_EXTENSIONS = ('.txt', '.lst', '.list')
SUMMARY_NAME = 'summary.json'
_DESCRIPTION = """\
Extract clip, video or dense features of videos with a fima-models backbone.

INPUT: video files, folders (searched recursively for video files) or text files (.txt, .lst,
.list) listing one video path per line. Each video gets DIR/<its path below its input root> with
the suffix replaced by .npy or .safetensors, plus a .json sidecar with the clip frames and times.
DIR/summary.json lists every input as ok, failed (with the reason) or skipped (already finished);
running the same command again skips finished videos. Exit status 1 when any input failed.
Multi-GPU: torchrun --nproc-per-node N -m fima_models.cli extract ... --device cuda
"""
SUMMARY_VERSION = 1
#: Least seconds between two rewrites of the interim summary while videos finish.
SUMMARY_INTERVAL = 5.0
_BARRIER_TIMEOUT = timedelta(days=7)
#: Clips per piece a worker decodes and sends at once; the main process joins pieces into batches.
PIECE_CLIPS = 8


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
@dataclass
class VideoJob:
    """One video to process: its position among the inputs, its file and its output name."""
    index: int
    path: Path
    rel: PurePath  # output path relative to OUT, without the format suffix


def _record(job_or_input: Any, status: str, **fields: Any) -> Dict[str, Any]:
    entry = {'input': str(job_or_input), 'output': None, 'status': status, 'num_clips': 0,
             'seconds': None, 'reason': None}
    entry.update(fields)
    return entry


def _mirror(path: Path, root: Optional[Path]) -> PurePath:
    """``path`` relative to ``root`` when it lies below it, else just its file name."""
    if root is not None:
        try:
            return path.resolve().relative_to(root.resolve())
        except ValueError:
            pass
    return PurePath(path.name)


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


def collect_inputs(inputs: Sequence[str]) -> Tuple[List[VideoJob], List[Dict[str, Any]]]:
    """Expand files, folders and list files into jobs with mirrored output names.

    Returns:
        ``(jobs, problems)``: the videos to process, and summary records (status ``failed``) for
        inputs that do not exist or whose output name collides with an earlier video's.
    """
    candidates: List[Tuple[Path, PurePath]] = []
    problems: List[Dict[str, Any]] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob('*') if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
            if not found and path.suffix.lower() in VIDEO_EXTENSIONS:
                problems.append(_record(path, 'failed', reason=_NOT_A_VIDEO_DIR.format(path=path)))
            elif not found:
                _LOGGER.warning("no video files (%s) found under '%s'", ' '.join(VIDEO_EXTENSIONS), path)
            candidates += [(p, _mirror(p, path)) for p in found]
        elif path.is_file() and path.suffix.lower() in LIST_EXTENSIONS:
            candidates += [(p, _mirror(p, path.parent)) for p in read_list(path)]
        else:
            candidates.append((path, PurePath(path.name)))

    jobs: List[VideoJob] = []
    seen_files: Dict[Path, Path] = {}
    seen_outputs: Dict[PurePath, Path] = {}
    for path, rel in candidates:
        if path.is_dir():
            problems.append(_record(path, 'failed', reason=_LISTED_DIR.format(path=path)))
            continue
        if not path.is_file():
            problems.append(_record(path, 'failed', reason=f"no such file: '{path}'; check the path or list entry"))
            continue
        resolved = path.resolve()
        if resolved in seen_files:
            _LOGGER.info("'%s' is listed more than once; extracting it once", path)
            continue
        seen_files[resolved] = path
        out_rel = rel.with_suffix('')
        if out_rel in seen_outputs:
            problems.append(_record(path, 'failed', reason=(
                f"its output name '{out_rel}' is already used by '{seen_outputs[out_rel]}'; rename one of "
                'the videos or extract them into different --out folders')))
            continue
        seen_outputs[out_rel] = path
        jobs.append(VideoJob(index=len(jobs), path=path, rel=out_rel))
    return jobs, problems


# ---------------------------------------------------------------------------------------------
# decoding in workers
# ---------------------------------------------------------------------------------------------
@dataclass
class ClipBatch:
    """Clips of one or more videos plus the video events (finished / failed) that follow them.

    ``clips`` is one tensor when all clips have one shape and type: transformed float
    ``(B, 3, T, S, S)`` (the workers ran the transform, as on a CPU) or raw uint8
    ``(B, T, H, W, 3)`` for the device to transform; otherwise a list of such clips (see
    :func:`fima_models.features.prepare_clips` and :func:`~fima_models.features.raw_clip_limit`).
    ``events`` apply after the clips of the same batch: ``{'video': i, 'status': 'done',
    'num_frames', 'fps', 'num_clips', 'padded'}`` or ``{'video': i, 'status': 'failed', 'reason'}``.
    """
    clips: Union[torch.Tensor, List[torch.Tensor]]
    videos: torch.Tensor  # int64 (B,) job index of each clip
    starts: torch.Tensor  # int64 (B,)
    ends: torch.Tensor  # int64 (B,)
    events: List[Dict[str, Any]] = field(default_factory=list)

    def pin_memory(self) -> ClipBatch:
        """Pin the clip tensors (DataLoader calls this with ``pin_memory=True``)."""
        if isinstance(self.clips, torch.Tensor):
            self.clips = self.clips.pin_memory()
        else:
            self.clips = [clip.pin_memory() for clip in self.clips]
        return self


class _BatchBuilder:
    """Packs clips of consecutive videos into batches of a fixed size."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.clips: List[torch.Tensor] = []
        self.meta: List[Tuple[int, int, int]] = []
        self.events: List[Dict[str, Any]] = []

    def add(self, video: int, start: int, end: int, clip: torch.Tensor) -> None:
        self.clips.append(clip)
        self.meta.append((video, start, end))

    def drop(self, video: int) -> None:
        keep = [i for i, m in enumerate(self.meta) if m[0] != video]
        self.clips = [self.clips[i] for i in keep]
        self.meta = [self.meta[i] for i in keep]

    @property
    def full(self) -> bool:
        return len(self.clips) >= self.batch_size

    @property
    def pending(self) -> bool:
        return bool(self.clips or self.events)

    def flush(self) -> ClipBatch:
        meta = torch.tensor(self.meta, dtype=torch.int64).reshape(-1, 3)
        if len({(tuple(clip.shape), clip.dtype) for clip in self.clips}) <= 1:
            clips: Union[torch.Tensor, List[torch.Tensor]] = torch.stack(self.clips) if self.clips else torch.empty(0)
        else:  # copies, so that no clip drags its whole decoded chunk along
            clips = [clip.clone() for clip in self.clips]
        batch = ClipBatch(
            clips=clips,
            videos=meta[:, 0], starts=meta[:, 1], ends=meta[:, 2], events=self.events,
        )
        self.clips, self.meta, self.events = [], [], []
        return batch


class ClipBatchDataset(IterableDataset):
    """Decodes (and transforms) the clips of a list of videos, sharded across DataLoader workers.

    Worker ``w`` of ``n`` takes videos ``w, w + n, ...``; each video is read by exactly one worker,
    in clip order (up to ``batch_size`` clips per decoding pass), and a failure drops the video's
    pending clips and reports it as an event. Clips of at most ``raw_max_bytes`` uint8 bytes stay
    raw for the device to transform; the others are transformed in the worker.
    """

    def __init__(
            self, jobs: Sequence[Tuple[int, str]], transform: EvalTransform, clip_len: int, stride: int,
            step: int, batch_size: int, fps: Optional[float] = None, decoder_threads: int = 0,
            raw_max_bytes: int = 0,
    ) -> None:
        super().__init__()
        self.jobs = list(jobs)
        self.transform = transform
        self.clip_len, self.stride, self.step = clip_len, stride, step
        self.batch_size = batch_size
        self.fps = fps
        self.decoder_threads = decoder_threads
        self.raw_max_bytes = raw_max_bytes

    def __iter__(self) -> Iterator[ClipBatch]:
        info = get_worker_info()
        shard = self.jobs if info is None else self.jobs[info.id::info.num_workers]
        builder = _BatchBuilder(self.batch_size)
        for index, path in shard:
            reader: Optional[VideoReader] = None
            try:
                reader = VideoReader(path, fps=self.fps, threads=self.decoder_threads)
                count = 0
                chunks = iter_clip_chunks(reader, self.clip_len, self.stride, self.step, max_clips=self.batch_size)
                for frames, starts, ends in chunks:
                    for clip, start, end in zip(frames, starts, ends):
                        raw = clip.numel() <= self.raw_max_bytes
                        builder.add(index, start, end, clip if raw else self.transform(clip))
                        count += 1
                        if builder.full:
                            yield builder.flush()
                builder.events.append({
                    'video': index, 'status': 'done', 'num_frames': reader.num_frames, 'fps': reader.fps,
                    'num_clips': count,
                    'padded': reader.num_frames < (self.clip_len - 1) * self.step + 1,
                })
            except Exception as exc:  # noqa: BLE001 - any failure of one video must not stop the others
                builder.drop(index)
                builder.events.append({'video': index, 'status': 'failed', 'reason': _reason(exc)})
            finally:
                if reader is not None:
                    reader.close()
        if builder.pending:
            yield builder.flush()


def _reason(exc: BaseException) -> str:
    return f'{type(exc).__name__}: {exc}'


# ---------------------------------------------------------------------------------------------
# distributed
# ---------------------------------------------------------------------------------------------
def _dist_env() -> Tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the torchrun environment (``0, 1, 0`` without it)."""
    return (int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1)),
            int(os.environ.get('LOCAL_RANK', 0)))


def _init_dist(world_size: int) -> bool:
    """Join the torchrun process group (gloo, used only for barriers); True when this call created it."""
    import torch.distributed as dist

    if world_size <= 1 or dist.is_initialized():
        return False
    if 'MASTER_ADDR' not in os.environ:
        raise RuntimeError('WORLD_SIZE > 1 but MASTER_ADDR is not set; launch multi-process runs with torchrun')
    # a rank that finishes early waits at the final barrier for the slowest one, possibly for hours;
    # a rank that dies makes torchrun stop the others, so the long timeout cannot leave them hanging
    dist.init_process_group('gloo', timeout=_BARRIER_TIMEOUT)
    return True


def _barrier(world_size: int) -> None:
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------
def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``extract`` sub-command to the ``fima-models`` parser."""
    parser = subparsers.add_parser(
        'extract', help='extract clip, video or dense features of videos',
        description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fima-models extract``."""
    parser.add_argument('inputs', nargs='+', metavar='INPUT', help='video files, folders or text files listing videos')
    parser.add_argument('--model', required=True, metavar='NAME_OR_DIR',
                        help='model name or alias, hf-hub:/local-dir: source, or a converted model folder')
    parser.add_argument('--pretrained', action=argparse.BooleanOptionalAction, default=True,
                        help='load the pretrained weights of a named model (default: yes)')
    parser.add_argument('--out', required=True, type=Path, metavar='DIR', help='output folder')
    parser.add_argument('--clip-len', type=int, default=16, help='frames per clip (default: 16)')
    parser.add_argument('--stride', type=int, default=16, help='frames between clip starts (default: 16)')
    parser.add_argument('--step', type=int, default=1, help='frames between the frames of a clip (default: 1)')
    parser.add_argument('--fps', type=float, default=None, help='resample videos to this frame rate first')
    parser.add_argument('--size', type=int, default=None, help='crop size (default: from the model config)')
    parser.add_argument('--level', choices=LEVELS, default='clip', help='feature level (default: clip)')
    parser.add_argument('--spatial-pool', choices=POOLINGS, default=None, help='pooling over H, W (default: avg)')
    parser.add_argument('--temporal-pool', choices=POOLINGS, default=None, help='pooling over T (default: avg)')
    parser.add_argument('--layer', type=int, default=None,
                        help='intermediate block to read (forward_intermediates index; default: final map)')
    parser.add_argument('--format', choices=FORMATS, default='npy', help='feature file format (default: npy)')
    parser.add_argument('--batch-size', type=int, default=8, help='clips per forward pass (default: 8)')
    parser.add_argument('--workers', type=int, default=2, help='decoding worker processes (default: 2)')
    parser.add_argument('--device', default=None, help='cpu, cuda or cuda:N (default: cuda when available)')
    parser.add_argument('--amp', choices=('bf16', 'none'), default='none',
                        help='bfloat16 autocast; refused on CPUs without native bf16')
    parser.add_argument('--channels-last', action='store_true', help='channels-last-3d memory format')
    parser.add_argument('--optimize', action=argparse.BooleanOptionalAction, default=True,
                        help='measured fast inference path: BatchNorm folding, memory format, factorised convs '
                             'and, on Linux/glibc CPUs, an allocator that keeps freed buffers (default: on)')
    parser.add_argument('--overwrite', action='store_true', help='extract again even if an output is finished')
    parser.add_argument('--no-progress', action='store_true', help='hide the progress bar')


def _output_path(out_dir: Path, rel: PurePath, fmt: str) -> Path:
    return out_dir / rel.parent / f'{rel.name}.{fmt}'


def _check_args(args: argparse.Namespace) -> None:
    for name in ('clip_len', 'stride', 'step', 'batch_size'):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.workers < 0:
        raise ValueError(f'--workers must be >= 0, got {args.workers}')
    if args.size is not None and args.size < 1:
        raise ValueError(f'--size must be >= 1, got {args.size}')
    if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
        raise ValueError(f'--fps must be a positive frame rate such as 25 or 29.97, got {args.fps}; '
                         'omit it to keep every frame of the video')
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out '{args.out}' exists and is not a folder; choose another output folder")


def _open_out(out: Path, rank: int) -> contextlib.ExitStack:
    """Create the output folder and (on rank 0) lock it against a second run; OS errors become one line.

    The ranks of one torchrun share the folder, so only rank 0 takes the lock.
    """
    stack = contextlib.ExitStack()
    try:
        out.mkdir(parents=True, exist_ok=True)
        if rank == 0:
            stack.enter_context(FolderLock(out, 'extract'))
    except OSError as err:
        stack.close()
        raise RuntimeError(describe_os_error(err, out)) from err
    return stack


def _source_id(path: Path) -> Dict[str, Any]:
    """What identifies an input file's content cheaply: resolved path, size and modification time."""
    try:
        stat = path.stat()
    except OSError:
        return {'path': str(path)}
    return {'path': str(path.resolve()), 'size': stat.st_size, 'mtime_ns': stat.st_mtime_ns}


@dataclass
class _RunState:
    """Bookkeeping of one rank's extraction."""
    records: Dict[int, Dict[str, Any]] = field(default_factory=dict)
    clips: int = 0


def run(args: argparse.Namespace) -> int:
    """Run ``fima-models extract``; returns 0 when no input failed, else 1.

    Raises:
        ValueError: invalid options (before any work).
        RuntimeError: ``--out`` cannot be created or written, or another run is writing into it.
    """
    _check_args(args)
    rank, world_size, local_rank = _dist_env()
    created_group = _init_dist(world_size)
    try:
        return _run(args, rank, world_size, local_rank)
    finally:
        if created_group:
            import torch.distributed as dist

            dist.destroy_process_group()


class _SummaryWriter:
    """Writes ``summary.json`` atomically: at the start, at most every :data:`SUMMARY_INTERVAL` s while videos finish, at the end.

    While the run is going the summary says ``complete: false`` and lists unfinished videos as
    ``pending``, so an interrupted run never leaves a summary that describes another run. Only
    rank 0 writes it; with several ranks, the videos of the others show as pending until the end.
    """

    def __init__(self, args: argparse.Namespace, config: Dict[str, Any], world_size: int, rank: int,
                 everything: Dict[int, Dict[str, Any]]) -> None:
        self.args, self.config, self.world_size, self.rank = args, config, world_size, rank
        self.everything = everything
        self.interval = SUMMARY_INTERVAL
        self.last = -math.inf
        self.warned = False

    def maybe_write(self, state: '_RunState', elapsed: float) -> None:
        """Rewrite the interim summary if ``interval`` seconds passed since the last write."""
        if self.rank != 0 or time.monotonic() - self.last < self.interval:
            return
        records = {**self.everything, **state.records}
        part = {'records': {str(k): v for k, v in records.items()}, 'clips': state.clips, 'elapsed': elapsed}
        self.write(_merge_summaries([part], self.args, self.config, self.world_size, complete=False))

    def write(self, summary: Dict[str, Any]) -> bool:
        """Write ``summary``; on an OS error log one line (once) and return False."""
        self.last = time.monotonic()
        path = self.args.out / SUMMARY_NAME
        try:
            atomic_write_bytes(path, json.dumps(summary, indent=1).encode('utf-8'))
        except OSError as err:
            if not self.warned:
                _LOGGER.error('%s', describe_os_error(err, path))
                self.warned = True
            return False
        return True


def _run(args: argparse.Namespace, rank: int, world_size: int, local_rank: int) -> int:
    device = resolve_device(args.device)
    if device.type == 'cuda' and device.index is None and world_size > 1:
        device = torch.device('cuda', local_rank)
    amp = None if args.amp == 'none' else args.amp
    resolve_amp(amp, device)  # refuse before spending time on the model
    spatial, temporal = resolve_pooling(args.level, args.spatial_pool, args.temporal_pool)

    model = load_model(args.model, pretrained=args.pretrained)
    check_layer(model, args.layer)
    transform = build_transform(model, size=args.size)
    config = extraction_config(args.clip_len, args.stride, args.step, args.level, spatial, temporal,
                               args.layer, transform, args.fps, amp)
    # what produced a result: the weights themselves (not their name), every setting, and the code path
    fingerprint = json.loads(json.dumps({'model': args.model, 'weights_sha256': weights_digest(model),
                                         'pretrained': bool(args.pretrained), 'format': args.format,
                                         'optimize': bool(args.optimize), **config}))
    jobs, problems = collect_inputs(args.inputs)
    with _open_out(args.out, rank):
        return _run_in_out(args, rank, world_size, model, device, amp, transform, spatial, temporal, config,
                           fingerprint, jobs, problems)


def _run_in_out(
        args: argparse.Namespace, rank: int, world_size: int, model: torch.nn.Module, device: torch.device,
        amp: Optional[str], transform: EvalTransform, spatial: str, temporal: str, config: Dict[str, Any],
        fingerprint: Dict[str, Any], jobs: List[VideoJob], problems: List[Dict[str, Any]],
) -> int:
    """The extraction proper, once every option and input is checked and ``--out`` is created and locked."""
    all_records: Dict[int, Dict[str, Any]] = {}
    if rank == 0:
        for i, problem in enumerate(problems):
            all_records[len(jobs) + i] = problem
    state = _RunState(records=all_records)
    pending: List[VideoJob] = []
    sources: Dict[int, Dict[str, Any]] = {}
    for job in jobs[rank::world_size]:
        out_path = _output_path(args.out, job.rel, args.format)
        sources[job.index] = _source_id(job.path)
        meta = None if args.overwrite else read_sidecar(out_path)
        if meta is not None and meta.get('extraction') == fingerprint and meta.get('source') == sources[job.index]:
            state.records[job.index] = _record(
                job.path, 'skipped', output=str(out_path.relative_to(args.out)), num_clips=meta.get('num_clips', 0),
                seconds=meta.get('duration'), reason='already extracted from the same file with the same weights '
                                                     'and settings')
            continue
        if meta is not None:
            _LOGGER.info("'%s' was extracted from another file, weights or settings; extracting it again", out_path)
        pending.append(job)

    everything = {job.index: _record(job.path, 'pending') for job in jobs}
    everything.update(all_records)
    summaries = _SummaryWriter(args, config, world_size, rank, everything)
    started = time.perf_counter()
    summaries.maybe_write(state, 0.0)
    if pending:
        _extract(args, pending, model, device, amp, transform, spatial, temporal, config, fingerprint, sources,
                 state, rank, lambda: summaries.maybe_write(state, time.perf_counter() - started))
    elapsed = time.perf_counter() - started

    partial = _partial_summary(state, elapsed)
    if world_size == 1:
        summary = _merge_summaries([partial], args, config, world_size)
    else:
        part_path = args.out / f'summary.rank{rank}-of-{world_size}.json'
        atomic_write_bytes(part_path, json.dumps(partial).encode('utf-8'))
        _barrier(world_size)
        summary = None
        if rank == 0:
            parts = [args.out / f'summary.rank{r}-of-{world_size}.json' for r in range(world_size)]
            summary = _merge_summaries([json.loads(p.read_text(encoding='utf-8')) for p in parts], args,
                                       config, world_size)
            for p in parts:
                p.unlink()
        _barrier(world_size)
    if summary is not None:
        written = summaries.write(summary)
        counts = summary['counts']
        print(f"extracted {counts['ok']} video(s), skipped {counts['skipped']}, failed {counts['failed']}; "
              f"{summary['clips']} clips in {summary['elapsed_seconds']:.1f} s "
              f"({summary['clips_per_second']:.1f} clips/s); "
              + (f'summary: {args.out / SUMMARY_NAME}' if written else 'the summary could not be written'))
        for entry in summary['videos']:
            if entry['status'] == 'failed':
                _LOGGER.error("failed: '%s': %s", entry['input'], entry['reason'])
        return 1 if counts['failed'] or not written else 0
    return 1 if any(r['status'] == 'failed' for r in state.records.values()) else 0


class _ClipQueue:
    """Joins the workers' pieces into model batches of exactly ``batch_size`` clips.

    Pieces are prepared on the device as they arrive. A video event becomes due once every clip
    received before it has been through the model.
    """

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.clips: List[torch.Tensor] = []
        self.meta: List[torch.Tensor] = []  # int64 (n, 3): video, start, end
        self.size = 0
        self.received = 0
        self.processed = 0
        self.events: List[Tuple[int, Dict[str, Any]]] = []

    def put(self, clips: torch.Tensor, meta: torch.Tensor) -> None:
        self.clips.append(clips)
        self.meta.append(meta)
        self.size += len(meta)
        self.received += len(meta)

    def mark(self, event: Dict[str, Any]) -> None:
        self.events.append((self.received, event))

    def take(self, count: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Remove and return the next ``count`` clips and their metadata."""
        clips = self.clips[0] if len(self.clips) == 1 else torch.cat(self.clips)
        meta = self.meta[0] if len(self.meta) == 1 else torch.cat(self.meta)
        self.clips = [clips[count:]] if len(meta) > count else []
        self.meta = [meta[count:]] if len(meta) > count else []
        self.size -= min(count, len(meta))
        self.processed += min(count, len(meta))
        return clips[:count], meta[:count]

    def due(self) -> List[Dict[str, Any]]:
        """Events whose videos have no clip left in the queue."""
        ready = [event for mark, event in self.events if mark <= self.processed]
        self.events = [(mark, event) for mark, event in self.events if mark > self.processed]
        return ready


def _extract(
        args: argparse.Namespace, pending: List[VideoJob], model: torch.nn.Module, device: torch.device,
        amp: Optional[str], transform: EvalTransform, spatial: str, temporal: str, config: Dict[str, Any],
        fingerprint: Dict[str, Any], sources: Dict[int, Dict[str, Any]], state: _RunState, rank: int,
        on_finished: Callable[[], None],
) -> None:
    """Decode, run and save the pending videos, recording each outcome in ``state``.

    The decoding workers start before the model is moved to the device: they fork from a small
    process without a CUDA context (fast and safe) and decode while the device initialises.
    """
    from tqdm.auto import tqdm

    by_index = {job.index: job for job in pending}
    workers = min(args.workers, len(pending))
    dataset = ClipBatchDataset(
        [(job.index, str(job.path)) for job in pending], transform, args.clip_len, args.stride, args.step,
        min(args.batch_size, PIECE_CLIPS), fps=args.fps, decoder_threads=1 if workers else 0,
        raw_max_bytes=raw_clip_limit(device, args.clip_len, transform.size),
    )
    loader = DataLoader(
        dataset, batch_size=None, num_workers=workers, pin_memory=device.type == 'cuda',
        prefetch_factor=max(2, -(-args.batch_size // PIECE_CLIPS)) if workers else None,
    )
    pieces = iter(loader)
    runner = prepare_inference(
        model, device=device, amp=amp, channels_last=args.channels_last, layer=args.layer, optimize=args.optimize,
        example_shape=(1, 3, args.clip_len, transform.size, transform.size))
    if args.optimize and runner.model.inference_plan.allocator:
        configure_allocator()
    accumulators: Dict[int, FeatureAccumulator] = {}
    broken: Dict[int, str] = {}
    queue = _ClipQueue(args.batch_size)
    bar = tqdm(total=len(pending), unit='video', desc='extract', dynamic_ncols=True,
               disable=True if args.no_progress or rank != 0 else None)
    started = time.perf_counter()

    def finish(index: int, status: str, **fields: Any) -> None:
        job = by_index[index]
        state.records[job.index] = _record(job.path, status, **fields)
        bar.update(1)
        rate = state.clips / max(time.perf_counter() - started, 1e-9)
        bar.set_postfix_str(f'{rate:.1f} clips/s', refresh=False)
        on_finished()

    def run_queued(count: int) -> None:
        clips, meta = queue.take(count)
        _run_batch(clips, meta, runner, spatial, temporal, args.level, accumulators, broken)
        state.clips += len(meta)

    def handle(event: Dict[str, Any]) -> None:
        index = event['video']
        accumulator = accumulators.pop(index, None)
        if event['status'] == 'failed' or index in broken:
            finish(index, 'failed', reason=event.get('reason') or broken.pop(index))
            return
        job = by_index[index]
        out_path = _output_path(args.out, job.rel, args.format)
        try:
            assert accumulator is not None, 'a finished video without clips'
            result = accumulator.result(args.model, event['fps'], event['num_frames'], padded=event['padded'],
                                        config=config)
            save_features(result, out_path, extra={'input': str(job.path), 'extraction': fingerprint,
                                                   'source': sources[index]})
        except NonFiniteFeaturesError as exc:
            finish(index, 'failed', reason=str(exc))
            return
        except OSError as exc:  # disk full, read-only: the earlier file of that name stays as it was
            finish(index, 'failed', reason=describe_os_error(exc, out_path))
            return
        except Exception as exc:  # noqa: BLE001 - one unwritable output must not stop the rest
            finish(index, 'failed', reason=f'could not write the features: {_reason(exc)}')
            return
        finish(index, 'ok', output=str(out_path.relative_to(args.out)), num_clips=result.num_clips,
               seconds=result.duration)

    try:
        for piece in pieces:
            if piece.videos.numel():
                meta = torch.stack([piece.videos, piece.starts, piece.ends], dim=1)
                try:
                    queue.put(prepare_clips(piece.clips, transform, runner.device), meta)
                except Exception as exc:  # noqa: BLE001 - e.g. out of memory: fail these videos, keep going
                    for index in set(piece.videos.tolist()):
                        broken.setdefault(index, f'preparing clips on {runner.device} failed: {_reason(exc)}')
            for event in piece.events:
                queue.mark(event)
            while queue.size >= args.batch_size:
                run_queued(args.batch_size)
            for event in queue.due():
                handle(event)
        if queue.size:
            run_queued(queue.size)
        for event in queue.due():
            handle(event)
    except Exception as exc:  # noqa: BLE001 - a dead worker: report what is left instead of crashing
        _LOGGER.error('decoding stopped: %s', _reason(exc))
        for job in pending:
            if job.index not in state.records:
                state.records[job.index] = _record(job.path, 'failed', reason=f'extraction stopped: {_reason(exc)}')
    finally:
        bar.close()


def _run_batch(
        clips: torch.Tensor, meta: torch.Tensor, runner: Any, spatial: str, temporal: str, level: str,
        accumulators: Dict[int, FeatureAccumulator], broken: Dict[int, str],
) -> None:
    """Run the model on one batch and hand each video's rows (``meta``: video, start, end) to its accumulator."""
    videos = meta[:, 0].tolist()
    try:
        pooled = pool_maps(runner(clips), spatial, temporal).cpu()
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory: fail these videos, keep going
        for index in set(videos):
            broken.setdefault(index, f'the model failed on a batch: {_reason(exc)}')
        return
    lo = 0
    for hi in range(1, len(videos) + 1):
        if hi == len(videos) or videos[hi] != videos[lo]:
            index = videos[lo]
            if index not in broken:
                accumulators.setdefault(index, FeatureAccumulator(level)).add(
                    pooled[lo:hi], meta[lo:hi, 1].tolist(), meta[lo:hi, 2].tolist())
            lo = hi


def _partial_summary(state: _RunState, elapsed: float) -> Dict[str, Any]:
    return {'records': {str(k): v for k, v in state.records.items()}, 'clips': state.clips, 'elapsed': elapsed}


def _merge_summaries(
        parts: List[Dict[str, Any]], args: argparse.Namespace, config: Dict[str, Any], world_size: int,
        complete: bool = True,
) -> Dict[str, Any]:
    """One summary from the per-rank partial ones, videos in input order."""
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
        'model': args.model,
        'pretrained': bool(args.pretrained),
        'format': args.format,
        'config': config,
        'world_size': world_size,
        'counts': {s: sum(1 for v in videos if v['status'] == s) for s in statuses},
        'clips': clips,
        'elapsed_seconds': elapsed,
        'clips_per_second': clips / elapsed if elapsed > 0 else 0.0,
        'videos_per_second': done / elapsed if elapsed > 0 else 0.0,
        'videos': videos,
    }
