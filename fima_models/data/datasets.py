"""Video classification data sets: :class:`VideoDataset` and :func:`build_dataset`.

:func:`build_dataset` reads a data set's annotations (the formats are in
:mod:`fima_models.data.formats`), drops videos that are missing or broken (the persisted
index, :mod:`fima_models.data.index`) and decodes clips on the fly. Labels are 0-based
indices into ``dataset.classes``.
"""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from fima_models._utils import VIDEO_EXTENSIONS
from fima_models.data.formats import DATASET_PARSERS, DatasetLayoutError, Sample, dataset_format, list_datasets
from fima_models.data.index import VideoIndex, build_index
from fima_models.data.samplers import ClipSampler, RandomClipSampler, UniformClipSampler
from fima_models.video import VideoDecodeError, VideoReader

__all__ = ["VideoDataset", "DatasetLayoutError", "build_dataset", "list_datasets", "DATASET_PARSERS",
           "VIDEO_EXTENSIONS"]

_logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- dataset
class VideoDataset(Dataset):
    """Map-style data set of ``(sample, label)`` pairs decoded on the fly.

    ``sample`` is ``transform(sampler(reader, generator))`` (the raw uint8 frames
    when ``transform`` is None).

    Args:
        samples: ``(path, label)`` pairs.
        classes: class names; ``label`` indexes this list.
        sampler: clip sampler (default: ``RandomClipSampler(16)``).
        transform: callable on the sampled uint8 frames; if it accepts a
            ``generator`` keyword it receives the sample's generator.
        reader_kwargs: keyword arguments of :class:`~fima_models.video.VideoReader`
            (default ``threads=1``, usually fastest inside DataLoader workers).
        seed: if set, sample ``i`` in epoch ``e`` uses a generator seeded from
            ``(seed, e, i)``, so clips and augmentations are reproducible whatever the
            number of workers; if None, torch's global RNG is used (DataLoader seeds
            it per worker).
        on_error: ``"skip"`` (log and return the next video; default) or ``"raise"``
            when a video is missing or fails to decode at sampling time.
        index: the :class:`~fima_models.data.index.VideoIndex` the samples came from.
        name: data set name for messages.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        classes: Sequence[str],
        sampler: ClipSampler | Callable[..., torch.Tensor] | None = None,
        transform: Callable[..., Any] | None = None,
        reader_kwargs: dict[str, Any] | None = None,
        seed: int | None = None,
        on_error: str = "skip",
        index: VideoIndex | None = None,
        name: str = "videos",
    ) -> None:
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got '{on_error}'")
        self.samples: list[Sample] = [(Path(p), int(y)) for p, y in samples]
        self.classes: list[str] = list(classes)
        self.sampler = sampler if sampler is not None else RandomClipSampler(16)
        self.transform = transform
        self.reader_kwargs = {"threads": 1, **(reader_kwargs or {})}
        self.seed = seed
        self.on_error = on_error
        self.index = index
        self.name = name
        self.epoch = 0
        self._transform_takes_generator = _accepts_generator(transform)
        self.num_errors = 0

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def targets(self) -> list[int]:
        """Labels of all samples, in order."""
        return [y for _, y in self.samples]

    def set_epoch(self, epoch: int) -> None:
        """Change the seeded clips/augmentations for a new epoch (only with ``seed``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def generator_for(self, i: int) -> torch.Generator | None:
        """The generator sample ``i`` uses in the current epoch (None without ``seed``)."""
        if self.seed is None:
            return None
        state = np.random.SeedSequence([self.seed, self.epoch, i]).generate_state(2, dtype=np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def load(self, i: int, generator: torch.Generator | None = None) -> tuple[Any, int]:
        """Decode, sample and transform sample ``i`` (no error recovery)."""
        path, label = self.samples[i]
        info = self.index.info(path) if self.index is not None else None
        # The index's frame table (from its exact probe) spares the reader a decode pass on open.
        frame_index = info.get("frame_index") if info is not None else None
        with VideoReader(path, frame_index=frame_index, **self.reader_kwargs) as reader:
            frames = self.sampler(reader, generator)
        if self.transform is None:
            return frames, label
        if self._transform_takes_generator:
            return self.transform(frames, generator=generator), label
        return self.transform(frames), label

    def __getitem__(self, i: int) -> tuple[Any, int]:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        tries = min(len(self), 10)
        for attempt in range(tries):
            j = (i + attempt) % len(self)
            try:
                return self.load(j, self.generator_for(j))
            except (VideoDecodeError, FileNotFoundError) as exc:
                self.num_errors += 1
                if self.on_error == "raise":
                    raise
                _logger.warning("%s: skipping unreadable video (%s); using sample %d instead", self.name, exc,
                                (j + 1) % len(self))
        raise VideoDecodeError(self.samples[i][0], f"this and the next {tries - 1} videos all failed to decode")

    def __repr__(self) -> str:
        return (f"VideoDataset(name='{self.name}', samples={len(self)}, classes={self.num_classes}, "
                f"sampler={self.sampler!r}, transform={self.transform!r})")


def _accepts_generator(fn: Callable[..., Any] | None) -> bool:
    if fn is None:
        return False
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "generator" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def build_dataset(
    name: str,
    root: str | os.PathLike[str],
    split: int = 1,
    train: bool = True,
    sampler: ClipSampler | Callable[..., torch.Tensor] | None = None,
    transform: Callable[..., Any] | None = None,
    index: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    strict: bool = False,
    reader_kwargs: dict[str, Any] | None = None,
    seed: int | None = None,
    on_error: str = "skip",
    progress: bool = True,
    **kwargs: Any,
) -> VideoDataset:
    """Build a :class:`VideoDataset` from a known annotation format.

    Args:
        name: ``ucf101``, ``hmdb51``, ``kinetics400`` (``k400``), ``diving48``, ``folder`` or ``list``.
        root: data set root (for ``list``: the list file, or its base folder with ``annotation=``).
        split: official split 1-3 (UCF101, HMDB51); 1 elsewhere.
        train: training (True) or test/validation (False) part.
        sampler: clip sampler (default: ``RandomClipSampler(16)`` for training,
            ``UniformClipSampler(10, 16)`` for testing).
        transform: transform of the sampled uint8 frames.
        index: probe videos into the persisted index and drop broken/missing ones.
        cache_dir: store the index here instead of beside the data.
        workers: index pool size.
        strict: make broken or missing videos fatal.
        reader_kwargs: :class:`~fima_models.video.VideoReader` options (e.g. ``fps=``).
        seed: reproducible per-sample randomness (see :class:`VideoDataset`).
        on_error: ``"skip"`` or ``"raise"`` for decode failures at load time.
        progress: tqdm progress bar while indexing.
        **kwargs: format options: ``annotation_dir=`` (ucf101, hmdb51, kinetics400,
            diving48), ``subset=`` (kinetics400: train/val/test), ``annotation=`` (list).

    Returns:
        The data set.

    Raises:
        ValueError: unknown name or split.
        DatasetLayoutError: annotation files or folders not found.
    """
    key = dataset_format(name)
    root_path = Path(root).expanduser()
    if not root_path.exists():
        raise DatasetLayoutError(f"data set root '{root_path}' does not exist; check the path")
    samples, classes = DATASET_PARSERS[key](root_path, split=split, train=train, **kwargs)
    if not samples:
        raise DatasetLayoutError(f"{key}: no samples found under '{root_path}' (split {split}, train={train})")
    vindex = None
    if index:
        index_root = root_path.parent if root_path.is_file() else root_path
        vindex = build_index([p for p, _ in samples], index_root, cache_dir=cache_dir, workers=workers,
                             strict=strict, progress=progress)
        kept = [(p, y) for p, y in samples if vindex.is_ok(p)]
        if not kept:
            raise DatasetLayoutError(
                f"{key}: none of the {len(samples)} listed videos under '{root_path}' is readable "
                f"({len(vindex.missing)} missing, {len(vindex.broken)} broken); check the video folder"
            )
        samples = kept
    if sampler is None:
        sampler = RandomClipSampler(16) if train else UniformClipSampler(10, 16)
    return VideoDataset(samples, classes, sampler=sampler, transform=transform, reader_kwargs=reader_kwargs,
                        seed=seed, on_error=on_error, index=vindex, name=key)
