"""Video backbones, registered with timm on import.

Families: :mod:`.resnet3d` (``r3d_18``, ``mc3_18``, ``r2plus1d_18``), :mod:`.s3d` (``s3d``) and
:mod:`.i3d` (``i3d``), plus tiny ``test_*`` variants for unit tests. Every model takes float
``(N, C, T, H, W)`` clips and offers timm's model interface (see :class:`VideoBackbone`).
Build models by name with ``fima_models.create_model`` (or ``timm.create_model``); the entrypoint
functions stay in their modules so that ``fima_models.models.s3d`` / ``.i3d`` name the modules.
"""
from . import i3d, resnet3d, s3d  # noqa: F401  (registers the models with timm)
from ._builder import adapt_input_conv3d, build_video_model
from ._layers import VideoBackbone, check_video_input
from ._pretrained_cfg import VideoPretrainedCfg, hub_id, pretrained_cfg_dict, video_cfg
from .i3d import I3D
from .resnet3d import VideoResNet
from .s3d import S3D

__all__ = [
    'adapt_input_conv3d', 'build_video_model', 'VideoBackbone', 'check_video_input',
    'VideoPretrainedCfg', 'hub_id', 'pretrained_cfg_dict', 'video_cfg', 'VideoResNet', 'S3D', 'I3D',
]
