"""Video data sets, clip samplers, the persisted video index and synthetic motion data.

Typical use::

    from fima_models.data import build_dataset, RandomClipSampler
    from fima_models.transforms import TrainTransform

    ds = build_dataset("ucf101", root, split=1, train=True,
                       sampler=RandomClipSampler(16), transform=TrainTransform(112))
    clip, label = ds[0]

See ``docs/data.md`` for the supported layouts.
"""

from fima_models.data.datasets import (
    DATASET_PARSERS,
    VIDEO_EXTENSIONS,
    DatasetLayoutError,
    VideoDataset,
    build_dataset,
    list_datasets,
)
from fima_models.data.index import VideoIndex, build_index
from fima_models.data.samplers import (
    ClipSampler,
    RandomClipSampler,
    StridedClipSampler,
    UniformClipSampler,
    clip_indices,
)

__all__ = [
    "DATASET_PARSERS",
    "VIDEO_EXTENSIONS",
    "ClipSampler",
    "DatasetLayoutError",
    "RandomClipSampler",
    "StridedClipSampler",
    "UniformClipSampler",
    "VideoDataset",
    "VideoIndex",
    "build_dataset",
    "build_index",
    "clip_indices",
    "list_datasets",
]
