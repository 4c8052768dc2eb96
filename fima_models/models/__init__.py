"""Video backbones, registered with timm on import, and the machinery that builds and loads them.

Families: :mod:`.resnet3d` (``r3d_18``, ``mc3_18``, ``r2plus1d_18``), :mod:`.s3d` (``s3d``) and
:mod:`.i3d` (``i3d``), plus tiny ``test_*`` variants for unit tests. Every model takes float
``(N, C, T, H, W)`` clips and offers timm's model interface (see :class:`VideoBackbone`).
Build models by name with ``fima_models.create_model`` (or ``timm.create_model``); the entrypoint
functions stay in their modules so that ``fima_models.models.s3d`` / ``.i3d`` name the modules.

The layers below the model files, timm's split: :mod:`._registry` (aliases), :mod:`._hub`
(fetching weights), :mod:`._manipulate` (fitting a state dict), :mod:`._builder` (building a
model and loading its weights), :mod:`._pretrained_cfg` (the video pretrained config).
"""
from . import i3d, resnet3d, s3d  # noqa: F401  (registers the models with timm)
from ._builder import LoadedWeights, build_video_model, load_pretrained, load_state_dict_strict
from ._hub import (
    CONFIG_NAME, SAFE_WEIGHTS_NAME, PretrainedWeightsUnavailable, download_pretrained, fetch_pretrained,
    git_blob_sha1, resolve_model_source,
)
from ._layers import VideoBackbone, check_video_input
from ._manipulate import adapt_input_conv3d, adapt_state_dict
from ._pretrained_cfg import VideoPretrainedCfg, hub_id, pretrained_cfg_dict, video_cfg
from .i3d import I3D
from .resnet3d import VideoResNet
from .s3d import S3D

__all__ = [
    'build_video_model', 'load_pretrained', 'load_state_dict_strict', 'LoadedWeights',
    'PretrainedWeightsUnavailable', 'download_pretrained', 'fetch_pretrained', 'git_blob_sha1',
    'resolve_model_source',
    'CONFIG_NAME', 'SAFE_WEIGHTS_NAME',
    'adapt_input_conv3d', 'adapt_state_dict', 'VideoBackbone', 'check_video_input',
    'VideoPretrainedCfg', 'hub_id', 'pretrained_cfg_dict', 'video_cfg', 'VideoResNet', 'S3D', 'I3D',
]
