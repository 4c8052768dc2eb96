"""Decoding in DataLoader workers, and joining their pieces into model batches.

An :class:`~torch.utils.data.IterableDataset` (:class:`ClipBatchDataset`) shards the videos across
the workers, each sending pieces of a few clips (:class:`ClipBatch`); the main process joins the
pieces of all workers and videos into model batches of exactly ``batch_size`` clips
(:class:`ClipQueue`), so short videos still fill them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import IterableDataset, get_worker_info

from fima_models.extract.clips import is_padded, iter_clip_chunks
from fima_models.extract.summary import failure_reason
from fima_models.video import VideoReader

__all__ = ['PIECE_CLIPS', 'ClipBatch', 'ClipBatchBuilder', 'ClipBatchDataset', 'ClipQueue']

#: Clips per piece a worker decodes and sends at once; the main process joins pieces into batches.
PIECE_CLIPS = 8


@dataclass
class ClipBatch:
    """Clips of one or more videos plus the video events (finished / failed) that follow them.

    ``clips`` is one tensor when all clips have one shape and type: transformed float
    ``(B, 3, T, S, S)`` (multi-crop: ``(B, V, 3, T, S, S)``; the workers ran the transform, as on a CPU) or raw uint8
    ``(B, T, H, W, 3)`` for the device to transform; otherwise a list of such clips (see
    :func:`fima_models.extract.clips.prepare_clips` and :func:`~fima_models.extract.clips.raw_clip_limit`).
    ``events`` apply after the clips of the same batch: ``{'video': i, 'status': 'done',
    'num_frames', 'fps', 'num_clips', 'padded', 'height', 'width'}`` or ``{'video': i, 'status': 'failed', 'reason'}``.
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

    def meta(self) -> torch.Tensor:
        """int64 ``(B, 3)``: video, start, end of every clip."""
        return torch.stack([self.videos, self.starts, self.ends], dim=1)


class ClipBatchBuilder:
    """Packs clips of consecutive videos into pieces of a fixed size (in a worker)."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.clips: List[torch.Tensor] = []
        self.meta: List[Tuple[int, int, int]] = []
        self.events: List[Dict[str, Any]] = []

    def add(self, video: int, start: int, end: int, clip: torch.Tensor) -> None:
        """Add one clip of video ``video`` covering frames ``start`` to ``end`` (exclusive)."""
        self.clips.append(clip)
        self.meta.append((video, start, end))

    def drop(self, video: int) -> None:
        """Forget the clips of a failed video that were not sent yet."""
        keep = [i for i, m in enumerate(self.meta) if m[0] != video]
        self.clips = [self.clips[i] for i in keep]
        self.meta = [self.meta[i] for i in keep]

    @property
    def full(self) -> bool:
        """Whether a piece of ``batch_size`` clips is ready."""
        return len(self.clips) >= self.batch_size

    @property
    def pending(self) -> bool:
        """Whether clips or events wait to be sent."""
        return bool(self.clips or self.events)

    def flush(self) -> ClipBatch:
        """The clips and events gathered so far, as one piece; the builder starts empty again."""
        meta = torch.tensor(self.meta, dtype=torch.int64).reshape(-1, 3)
        if len({(tuple(clip.shape), clip.dtype) for clip in self.clips}) <= 1:
            clips: Union[torch.Tensor, List[torch.Tensor]] = torch.stack(self.clips) if self.clips else torch.empty(0)
        else:  # copies, so that no clip drags its whole decoded chunk along
            clips = [clip.clone() for clip in self.clips]
        batch = ClipBatch(clips=clips, videos=meta[:, 0], starts=meta[:, 1], ends=meta[:, 2], events=self.events)
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
            self, jobs: Sequence[Tuple[int, str]], transform: Callable[[torch.Tensor], torch.Tensor], clip_len: int,
            stride: int,
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
        builder = ClipBatchBuilder(self.batch_size)
        for index, path in shard:
            reader: Optional[VideoReader] = None
            try:
                reader = VideoReader(path, fps=self.fps, threads=self.decoder_threads)
                yield from self._video_pieces(builder, index, reader)
            except Exception as exc:  # noqa: BLE001 - any failure of one video must not stop the others
                builder.drop(index)
                builder.events.append({'video': index, 'status': 'failed', 'reason': failure_reason(exc)})
            finally:
                if reader is not None:
                    reader.close()
        if builder.pending:
            yield builder.flush()

    def _video_pieces(self, builder: ClipBatchBuilder, index: int, reader: VideoReader) -> Iterator[ClipBatch]:
        """Add every clip of one video to ``builder``, yielding each piece that fills, then its event."""
        count = 0
        for frames, starts, ends in iter_clip_chunks(reader, self.clip_len, self.stride, self.step,
                                                     max_clips=self.batch_size):
            for clip, start, end in zip(frames, starts, ends):
                raw = clip.numel() <= self.raw_max_bytes
                builder.add(index, start, end, clip if raw else self.transform(clip))
                count += 1
                if builder.full:
                    yield builder.flush()
        builder.events.append({
            'video': index, 'status': 'done', 'num_frames': reader.num_frames, 'fps': reader.fps,
            'num_clips': count, 'padded': is_padded(reader.num_frames, self.clip_len, self.step),
            'height': reader.height, 'width': reader.width,
        })


class ClipQueue:
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
        """Queue prepared clips and their ``(n, 3)`` metadata."""
        self.clips.append(clips)
        self.meta.append(meta)
        self.size += len(meta)
        self.received += len(meta)

    def mark(self, event: Dict[str, Any]) -> None:
        """Queue a video event, due after every clip received so far."""
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
