"""The decode -> model -> save loop of a many-video run, for the videos one rank has to extract.

The decoding workers start before the model is moved to the device: they fork from a small
process without a CUDA context (fast and safe) and decode while the device initialises. Pieces
from the workers are prepared on the device, joined into batches of exactly ``batch_size`` clips,
run and pooled; each video is saved once all its clips have been through the model. With several
crops a batch holds ``batch_size // crops`` clips (at least one), whose views are run in passes of
at most ``batch_size``. A failure
(of a video, a batch, or writing an output) fails only the videos it touches.
"""
import logging
import time
from typing import Any, Callable, Dict, Iterator, List, Optional

from torch.utils.data import DataLoader

from fima_models._utils import describe_os_error
from fima_models.extract.api import FeatureAccumulator
from fima_models.extract.clips import prepare_clips, raw_clip_limit
from fima_models.extract.crops import crop_metadata, run_pooled, views_per_batch
from fima_models.extract.inputs import VideoJob
from fima_models.extract.runner import FeatureRunner, prepare_inference
from fima_models.extract.setup import ExtractionSetup
from fima_models.extract.storage import NonFiniteFeaturesError, output_path, save_features
from fima_models.extract.summary import RunState, failure_reason, record
from fima_models.extract.workers import PIECE_CLIPS, ClipBatch, ClipBatchDataset, ClipQueue
from fima_models.inference import configure_allocator

__all__ = ['VideoPipeline']

_logger = logging.getLogger(__name__)


class VideoPipeline:
    """Decodes, runs and saves the pending videos of one rank, recording each outcome in ``state``.

    Args:
        setup: the resolved run (settings, device, model, transform, config, fingerprint).
        jobs: the videos to extract.
        sources: :func:`~fima_models.extract.storage.source_id` of every job, by job index.
        state: where each video's record and the clip count go.
        show_progress: show a tqdm bar over the videos.
        on_finished: called after each video is settled (e.g. to rewrite the interim summary).
    """

    def __init__(self, setup: ExtractionSetup, jobs: List[VideoJob], sources: Dict[int, Dict[str, Any]],
                 state: RunState, show_progress: bool, on_finished: Callable[[], None]) -> None:
        self.setup = setup
        self.jobs = {job.index: job for job in jobs}
        self.sources = sources
        self.state = state
        self.show_progress = show_progress
        self.on_finished = on_finished
        self.accumulators: Dict[int, FeatureAccumulator] = {}
        self.broken: Dict[int, str] = {}  # videos failed by a batch, with the reason
        self.clip_batch = views_per_batch(setup.settings.batch_size, setup.settings.crops)
        self.queue = ClipQueue(self.clip_batch)
        self.runner: Optional[FeatureRunner] = None
        self.bar: Any = None
        self.started = time.perf_counter()

    def run(self) -> None:
        """Extract every job; a dead worker fails the videos not finished instead of raising."""
        from tqdm.auto import tqdm

        settings = self.setup.settings
        pieces = iter(self._loader())  # the workers start here, before the model moves to the device
        self.runner = prepare_inference(
            self.setup.model, device=self.setup.device, precision=self.setup.precision,
            channels_last=settings.channels_last, layer=settings.layer, optimize=settings.optimize,
            example_shape=(1, 3, settings.clip_len, self.setup.transform.size, self.setup.transform.size))
        if settings.optimize and self.runner.model.inference_plan.allocator:
            configure_allocator()
        self.bar = tqdm(total=len(self.jobs), unit='video', desc='extract', dynamic_ncols=True,
                        disable=True if not self.show_progress else None)
        self.started = time.perf_counter()
        try:
            self._consume(pieces)
        except Exception as exc:  # noqa: BLE001 - a dead worker: report what is left instead of crashing
            _logger.error('decoding stopped: %s', failure_reason(exc))
            for job in self.jobs.values():
                if job.index not in self.state.records:
                    self.state.records[job.index] = record(
                        job.path, 'failed', reason=f'extraction stopped: {failure_reason(exc)}')
        finally:
            self.bar.close()

    def _loader(self) -> DataLoader:
        settings = self.setup.settings
        workers = min(settings.workers, len(self.jobs))
        dataset = ClipBatchDataset(
            [(job.index, str(job.path)) for job in self.jobs.values()], self.setup.transform, settings.clip_len,
            settings.stride, settings.step, min(self.clip_batch, PIECE_CLIPS), fps=settings.fps,
            decoder_threads=1 if workers else 0,
            raw_max_bytes=raw_clip_limit(self.setup.device, settings.clip_len, self.setup.transform.size,
                                         settings.crops),
        )
        return DataLoader(
            dataset, batch_size=None, num_workers=workers, pin_memory=self.setup.device.type == 'cuda',
            prefetch_factor=max(2, -(-self.clip_batch // PIECE_CLIPS)) if workers else None,
        )

    def _consume(self, pieces: Iterator[ClipBatch]) -> None:
        """Queue every piece, run full batches as they form, then the rest; settle videos when due."""
        batch_size = self.clip_batch
        for piece in pieces:
            self._put(piece)
            while self.queue.size >= batch_size:
                self._run_queued(batch_size)
            self._settle_due()
        if self.queue.size:
            self._run_queued(self.queue.size)
        self._settle_due()

    def _put(self, piece: ClipBatch) -> None:
        assert self.runner is not None
        if piece.videos.numel():
            try:
                self.queue.put(prepare_clips(piece.clips, self.setup.transform, self.runner.device), piece.meta())
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory: fail these videos, keep going
                for index in set(piece.videos.tolist()):
                    self.broken.setdefault(index, f'preparing clips on {self.runner.device} failed: '
                                                  f'{failure_reason(exc)}')
        for event in piece.events:
            self.queue.mark(event)

    def _run_queued(self, count: int) -> None:
        """Run the model on the next ``count`` clips and hand each video's rows to its accumulator."""
        assert self.runner is not None
        clips, meta = self.queue.take(count)
        self.state.clips += len(meta)
        videos = meta[:, 0].tolist()
        try:
            settings = self.setup.settings
            pooled = run_pooled(self.runner, clips, self.setup.spatial, self.setup.temporal, settings.batch_size,
                                settings.crop_pool).cpu()
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory: fail these videos, keep going
            for index in set(videos):
                self.broken.setdefault(index, f'the model failed on a batch: {failure_reason(exc)}')
            return
        lo = 0
        for hi in range(1, len(videos) + 1):
            if hi == len(videos) or videos[hi] != videos[lo]:
                index = videos[lo]
                if index not in self.broken:
                    self.accumulators.setdefault(index, FeatureAccumulator(self.setup.settings.level)).add(
                        pooled[lo:hi], meta[lo:hi, 1].tolist(), meta[lo:hi, 2].tolist())
                lo = hi

    def _settle_due(self) -> None:
        for event in self.queue.due():
            self._settle(event)

    def _settle(self, event: Dict[str, Any]) -> None:
        """Save a video whose clips have all been run, or record why it failed."""
        index = event['video']
        accumulator = self.accumulators.pop(index, None)
        if event['status'] == 'failed' or index in self.broken:
            self._finish(index, 'failed', reason=event.get('reason') or self.broken.pop(index))
            return
        settings = self.setup.settings
        job = self.jobs[index]
        out_path = output_path(settings.out, job.rel, settings.format)
        try:
            assert accumulator is not None, 'a finished video without clips'
            crops = crop_metadata(self.setup.transform, event['height'], event['width'], settings.crop_pool)
            result = accumulator.result(settings.model, event['fps'], event['num_frames'], padded=event['padded'],
                                        config=self.setup.config, crops=crops)
            save_features(result, out_path, extra={'input': str(job.path), 'extraction': self.setup.fingerprint,
                                                   'source': self.sources[index]})
        except NonFiniteFeaturesError as exc:
            self._finish(index, 'failed', reason=str(exc))
        except OSError as exc:  # disk full, read-only: the earlier file of that name stays as it was
            self._finish(index, 'failed', reason=describe_os_error(exc, out_path))
        except Exception as exc:  # noqa: BLE001 - one unwritable output must not stop the rest
            self._finish(index, 'failed', reason=f'could not write the features: {failure_reason(exc)}')
        else:
            self._finish(index, 'ok', output=str(out_path.relative_to(settings.out)), num_clips=result.num_clips,
                         seconds=result.duration)

    def _finish(self, index: int, status: str, **fields: Any) -> None:
        self.state.records[index] = record(self.jobs[index].path, status, **fields)
        self.bar.update(1)
        rate = self.state.clips / max(time.perf_counter() - self.started, 1e-9)
        self.bar.set_postfix_str(f'{rate:.1f} clips/s', refresh=False)
        self.on_finished()
