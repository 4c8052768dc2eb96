"""Multi-crop extraction: which crops of a clip are taken, and the transform that takes them.

After the short-side resize of the evaluation transform (to ``floor(size / crop_pct)``), a clip
gives ``crops`` square views of side ``size`` (the model's input size, or ``size=``):

- ``1``: the centre (exactly what :class:`fima_models.transforms.EvalTransform` takes);
- ``3``: along the longer side: left, centre, right (landscape) or top, centre, bottom (portrait);
- ``10``: top-left, top-right, bottom-left, bottom-right, centre, then the same five mirrored
  left-right (the order of torchvision's ``TenCrop`` and Caffe's ``oversample``, which the
  10-crop I3D feature sets follow).

All views of a clip come from one decode and one resize (crop views of the resized clip). Their
boxes are recorded as ``[x1, y1, x2, y2]`` pixels of the resized frame (``x2``, ``y2``
exclusive) plus a ``flip`` flag: a flipped view is the box's pixels mirrored left-right.
"""
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Union

import torch

from fima_models.extract.runner import FeatureRunner, pool_maps
from fima_models.transforms import EvalTransform
from fima_models.transforms.functional import (
    check_uint8_clip, crop, crop_positions, hflip, normalize, resize_short_side, short_side_size, to_float,
)

__all__ = [
    'CROP_COUNTS', 'CROP_POOLS', 'CropBox', 'check_crops', 'crop_boxes', 'MultiCropTransform', 'crop_transform',
    'crop_metadata', 'views_per_batch', 'run_pooled',
]

#: Crops per clip that extraction takes.
CROP_COUNTS = (1, 3, 10)
#: What happens to the crops axis: ``keep`` it (right after the clips axis) or take the ``mean``.
CROP_POOLS = ('keep', 'mean')

_CROP_CHOICES = '1 (centre), 3 (three crops along the long side) or 10 (corners and centre, plus their flips)'
_POSITION_NAMES = {
    1: ('centre',),
    3: ('start', 'centre', 'end'),
    5: ('top_left', 'top_right', 'bottom_left', 'bottom_right', 'centre'),
}


@dataclass(frozen=True)
class CropBox:
    """One view of a clip: the pixels ``[y1:y2, x1:x2]`` of the resized frame, mirrored when ``flip``."""
    name: str
    x1: int
    y1: int
    x2: int
    y2: int
    flip: bool = False

    def as_dict(self) -> Dict[str, Any]:
        """JSON form recorded in the sidecar."""
        return {'name': self.name, 'box': [self.x1, self.y1, self.x2, self.y2], 'flip': self.flip}


def check_crops(crops: int, crop_pool: str) -> None:
    """Refuse a crop count or crop pooling extraction does not offer.

    Raises:
        ValueError: naming the bad value and the choices.
    """
    if isinstance(crops, bool) or crops not in CROP_COUNTS:
        raise ValueError(f'crops={crops!r} is not offered; choose {_CROP_CHOICES}')
    if crop_pool not in CROP_POOLS:
        raise ValueError(f"crop_pool={crop_pool!r} is not offered; choose 'keep' (a crops axis after the clips "
                         "axis) or 'mean' (the mean over the crops)")


def crop_boxes(height: int, width: int, size: int, crops: int) -> List[CropBox]:
    """The views of a resized ``height x width`` frame, in the order the features keep them.

    Raises:
        ValueError: an unknown crop count, or a crop larger than the resized frame.
    """
    check_crops(crops, 'keep')
    if size > min(height, width):
        raise ValueError(f'a {size}x{size} crop does not fit the {height}x{width} frame after the short-side '
                         f'resize; lower the crop size (size=, --size) or raise crop_pct to at most 1')
    positions = 5 if crops == 10 else crops
    boxes = [CropBox(name, left, top, left + size, top + size)
             for name, (top, left) in zip(_POSITION_NAMES[positions], crop_positions(height, width, size, positions))]
    if crops == 10:
        boxes += [CropBox(f'{box.name}_flip', box.x1, box.y1, box.x2, box.y2, flip=True) for box in boxes]
    return boxes


class MultiCropTransform:
    """The evaluation transform of ``base`` taking ``crops`` views of every clip (see the module docstring).

    uint8 ``[T, H, W, 3]`` -> ``[crops, 3, T, S, S]``; ``[K, T, H, W, 3]`` -> ``[K, crops, 3, T, S, S]``.
    It has the ``size``, ``crop_pct``, ``mean`` and ``std`` of ``base``, so it stands in for it.
    """

    def __init__(self, base: EvalTransform, crops: int) -> None:
        check_crops(crops, 'keep')
        self.size, self.crop_pct, self.mean, self.std = base.size, base.crop_pct, base.mean, base.std
        self.crops = crops

    @property
    def resize_to(self) -> int:
        """Short side after the resize, as :class:`~fima_models.transforms.EvalTransform` computes it."""
        return int(math.floor(self.size / self.crop_pct))

    def boxes(self, height: int, width: int) -> List[CropBox]:
        """The views of a ``height x width`` video (frame size before the resize)."""
        return crop_boxes(*short_side_size(height, width, self.resize_to), self.size, self.crops)

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        """Transform one clip or a stack of clips of one frame size (see the class docstring)."""
        check_uint8_clip(clip, type(self).__name__)
        # normalising the resized frame once costs less than normalising every overlapping view
        frames = normalize(resize_short_side(to_float(clip), self.resize_to), self.mean, self.std)
        views = []
        for box in crop_boxes(*frames.shape[-2:], self.size, self.crops):
            view = crop(frames, box.y1, box.x1, self.size, self.size)
            views.append(hflip(view) if box.flip else view)
        return torch.stack(views, dim=0 if clip.dim() == 4 else 1)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(size={self.size}, crop_pct={self.crop_pct}, crops={self.crops})'


def crop_transform(base: EvalTransform, crops: int) -> Union[EvalTransform, MultiCropTransform]:
    """``base`` itself for one crop (so single-crop features stay exactly as they were), else its multi-crop form."""
    check_crops(crops, 'keep')
    return base if crops == 1 else MultiCropTransform(base, crops)


def crop_metadata(
        transform: Union[EvalTransform, MultiCropTransform], height: int, width: int, crop_pool: str,
) -> Dict[str, Any]:
    """What a video's sidecar records about its crops: count, pooling, resized frame size, every box."""
    view = transform if isinstance(transform, MultiCropTransform) else MultiCropTransform(transform, 1)
    resized = short_side_size(height, width, view.resize_to)
    return {'count': view.crops, 'pool': crop_pool, 'resized_size': list(resized),
            'boxes': [box.as_dict() for box in crop_boxes(*resized, view.size, view.crops)]}


def views_per_batch(batch_size: int, crops: int) -> int:
    """Clips per forward pass when a pass holds at most ``batch_size`` views (at least one clip)."""
    return max(1, batch_size // crops)


def run_pooled(
        runner: FeatureRunner, clips: torch.Tensor, spatial: str, temporal: str, batch_size: int,
        crop_pool: str = 'keep',
) -> torch.Tensor:
    """Pooled features of prepared clips: ``(N, 3, T, S, S)`` -> ``(N, ...)``, ``(N, V, 3, T, S, S)`` -> ``(N, V, ...)``.

    Single-crop clips go through the model in one pass, as they come. The views of multi-crop
    clips are run in passes of at most ``batch_size`` views; ``crop_pool='mean'`` averages them.
    """
    if clips.ndim == 5:
        return pool_maps(runner(clips), spatial, temporal)
    views = clips.flatten(0, 1)
    pooled = torch.cat([pool_maps(runner(views[lo:lo + batch_size]), spatial, temporal)
                        for lo in range(0, len(views), batch_size)])
    pooled = pooled.unflatten(0, tuple(clips.shape[:2]))
    return pooled.mean(dim=1) if crop_pool == 'mean' else pooled

