"""Pretrained configuration for video backbones.

timm's :class:`~timm.models.PretrainedCfg` describes image weights. Video weights need a few more
facts to be chosen and reported honestly: how they were trained (method and data set), the clip
length they expect, whether the file has actually been published, and what they score downstream.
:class:`VideoPretrainedCfg` adds those fields; timm's registry accepts it unchanged because it is
a subclass.
"""
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from timm.models import PretrainedCfg

__all__ = ['VideoPretrainedCfg', 'video_cfg', 'hub_id', 'KINETICS_MEAN', 'KINETICS_STD', 'FIMA_PAPER']

#: Normalisation used by FIMA and by torchvision's Kinetics-400 video models.
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)

FIMA_PAPER = 'Fine-grained Motion Alignment for Video Representation Learning (ACM MM 2023)'
FIMA_PAPER_ID = 'arXiv:2309.00297'

#: Organisation on the Hugging Face hub that hosts this project's weights; override it to publish a fork.
HUB_ORG_ENV = 'FIMA_MODELS_HUB_ORG'
DEFAULT_HUB_ORG = 'fima-models'


@dataclass
class VideoPretrainedCfg(PretrainedCfg):
    """A timm pretrained config with the facts video weights need.

    ``input_size`` is ``(C, T, H, W)`` for video models.
    """
    method: Optional[str] = None  # 'fima', 'moco' or 'supervised'
    dataset: Optional[str] = None  # pretraining data set, e.g. 'ucf101', 'kinetics400'
    num_frames: Optional[int] = None  # clip length the weights were trained with
    published: bool = False  # True only when the weight file really exists at its source
    metrics: Dict[str, float] = field(default_factory=dict)  # reported downstream results
    num_params: Optional[int] = None  # parameter count the weights' source reports (with its classifier)


def hub_id(name: str) -> str:
    """Return the hub repo id ``ORG/name`` under the configurable organisation."""
    return f'{os.environ.get(HUB_ORG_ENV, DEFAULT_HUB_ORG)}/{name}'


def video_cfg(**kwargs: Any) -> VideoPretrainedCfg:
    """Build a :class:`VideoPretrainedCfg` with video defaults (16x112 clips, Kinetics normalisation)."""
    defaults: Dict[str, Any] = dict(
        input_size=(3, 16, 112, 112),
        num_frames=16,
        crop_pct=0.875,
        interpolation='bilinear',
        mean=KINETICS_MEAN,
        std=KINETICS_STD,
        num_classes=400,
    )
    defaults.update(kwargs)
    return VideoPretrainedCfg(**defaults)
