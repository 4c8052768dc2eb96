"""Video backbones, registered with timm on import.

Families: :mod:`.resnet3d` (``r3d_18``, ``mc3_18``, ``r2plus1d_18``), :mod:`.s3d` (``s3d``) and
:mod:`.i3d` (``i3d``), plus tiny ``test_*`` variants for unit tests. Every model takes float
``(N, C, T, H, W)`` clips and offers timm's model interface (see :class:`VideoBackbone`).
"""
from ._builder import adapt_input_conv3d, build_video_model
from ._layers import VideoBackbone, check_video_input
from ._pretrained_cfg import VideoPretrainedCfg, hub_id, video_cfg
from .i3d import I3D, i3d, test_i3d
from .resnet3d import VideoResNet, mc3_18, r2plus1d_18, r3d_18, test_r2plus1d, test_r3d
from .s3d import S3D, s3d, test_s3d

__all__ = [
    'adapt_input_conv3d', 'build_video_model', 'VideoBackbone', 'check_video_input',
    'VideoPretrainedCfg', 'hub_id', 'video_cfg',
    'VideoResNet', 'S3D', 'I3D',
    'r3d_18', 'mc3_18', 'r2plus1d_18', 's3d', 'i3d',
    'test_r3d', 'test_r2plus1d', 'test_s3d', 'test_i3d',
]
