"""Pretrained configuration for video backbones.

timm's :class:`~timm.models.PretrainedCfg` describes image weights. Video weights need a few more
facts to be chosen and reported honestly: how they were trained (method and data set), the clip
length they expect, whether the file has actually been published, and what they score downstream.
:class:`VideoPretrainedCfg` adds those fields; timm's registry accepts it unchanged because it is
a subclass.
"""
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from timm.models import PretrainedCfg

__all__ = [
    'VideoPretrainedCfg', 'video_cfg', 'hub_id', 'self_supervised_cfgs', 'KINETICS_MEAN', 'KINETICS_STD',
    'FIMA_PAPER', 'FIMA_PAPER_ID', 'pretrained_cfg_dict',
]

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
    git_blob_sha1: Optional[str] = None  # git blob id of a file whose source publishes no other checksum


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


_DATASET_NAMES = {'kinetics400': 'Kinetics-400', 'ucf101': 'UCF101 split 1'}
_SELF_SUPERVISED_TAGS = (
    ('fima_k400', 'fima', 'kinetics400', 'FIMA self-supervised pretraining'),
    ('fima_ucf101', 'fima', 'ucf101', 'FIMA self-supervised pretraining'),
    ('moco_ucf101', 'moco', 'ucf101', 'MoCo baseline (FIMA pipeline, global InfoNCE loss only)'),
)


def self_supervised_cfgs(
        arch: str,
        make_cfg: Callable[..., VideoPretrainedCfg],
        input_size: Tuple[int, int, int, int],
        metrics: Optional[Dict[str, Dict[str, float]]] = None,
) -> Dict[str, VideoPretrainedCfg]:
    """The ``fima_k400``, ``fima_ucf101`` and ``moco_ucf101`` tags of one architecture.

    Their weights are produced by ``train/`` and published with ``hub/``; until then the tags are
    registered with ``published=False`` and load only from a file, a cache or a converted folder.

    Args:
        arch: Architecture name, e.g. ``'r2plus1d_18'``.
        make_cfg: The model file's ``_cfg`` (sets its ``first_conv`` and ``classifier``).
        input_size: ``(C, T, H, W)`` the weights are trained at.
        metrics: Reported downstream results per tag (e.g. the paper's numbers), keyed by tag.
    """
    metrics = metrics or {}
    frames, size = input_size[1], input_size[2]
    cfgs = {}
    for tag, method, dataset, what in _SELF_SUPERVISED_TAGS:
        reported = metrics.get(tag, {})
        source = "; metrics are the FIMA paper's (top-1, split 1)" if reported else ''
        cfgs[f'{arch}.{tag}'] = make_cfg(
            hf_hub_id=hub_id(f'{arch}.{tag}'), method=method, dataset=dataset, num_frames=frames,
            input_size=input_size, metrics=dict(reported), num_classes=0, published=False,
            paper_name=FIMA_PAPER, paper_ids=FIMA_PAPER_ID, license='apache-2.0',
            description=f'{what} on {_DATASET_NAMES[dataset]} ({frames}x{size} clips), backbone only{source}; '
                        'produced by train/, not yet published.')
    return cfgs


def pretrained_cfg_dict(source: Any) -> Dict[str, Any]:
    """The pretrained configuration of a model, or a configuration itself, as a plain dict.

    Args:
        source: A model (its ``pretrained_cfg`` attribute is read), a :class:`PretrainedCfg`
            dataclass, a mapping, or ``None``.

    Returns:
        A new dict (empty for ``None`` or an object without a ``pretrained_cfg``).
    """
    if not isinstance(source, Mapping) and not dataclasses.is_dataclass(source):
        source = getattr(source, 'pretrained_cfg', None)
    if source is None:
        return {}
    if dataclasses.is_dataclass(source):
        return {f.name: getattr(source, f.name) for f in dataclasses.fields(source)}
    return dict(source)
