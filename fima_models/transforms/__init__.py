"""Clip transforms: functional ops, random augmentation pieces and the train / eval presets.

Layouts:

* decoded clips are uint8 channel-last ``[T, H, W, 3]`` (several clips: ``[K, T, H, W, 3]``);
* model input is float channel-first ``[3, T, H, W]`` or batched ``[N, 3, T, H, W]``.

Modules:

* :mod:`.functional`: deterministic ops on float ``[C, T, H, W]`` / ``[N, C, T, H, W]``
  clips on any device (resize, crops, flip, colour, blur, normalise, frame difference);
* :mod:`.augment`: random pieces (:func:`random_resized_crop_params`,
  :class:`RandomResizedCropFlip`, :class:`ColorAugment`), drawing from an optional
  :class:`torch.Generator` once per clip;
* :mod:`.presets`: :class:`TrainTransform` and :class:`EvalTransform` (see ``docs/data.md``), and
  :class:`RandomViewTransform`, the base of the transforms that cut random views.

The FIMA pretraining views live with the FIMA code, in ``train/fima/views.py``.
"""

from fima_models._utils import KINETICS_MEAN, KINETICS_STD
from fima_models.transforms.augment import ColorAugment, RandomResizedCropFlip, random_resized_crop_params
from fima_models.transforms.functional import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    center_crop,
    check_uint8_clip,
    crop,
    crop_box,
    frame_difference,
    gaussian_blur,
    hflip,
    normalize,
    resize,
    resize_short_side,
    resized_crop,
    rgb_to_grayscale,
    three_crop,
    to_float,
)
from fima_models.transforms.presets import EvalTransform, RandomViewTransform, TrainTransform

# The one list of the public names (the modules themselves keep their helpers private by a leading "_").
__all__ = [
    "KINETICS_MEAN",
    "KINETICS_STD",
    # functional
    "to_float",
    "check_uint8_clip",
    "resize",
    "resize_short_side",
    "crop",
    "resized_crop",
    "center_crop",
    "three_crop",
    "hflip",
    "crop_box",
    "rgb_to_grayscale",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
    "gaussian_blur",
    "normalize",
    "frame_difference",
    # augment
    "random_resized_crop_params",
    "RandomResizedCropFlip",
    "ColorAugment",
    # presets
    "RandomViewTransform",
    "TrainTransform",
    "EvalTransform",
]
