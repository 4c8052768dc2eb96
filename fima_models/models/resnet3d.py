"""3-D ResNets for video: R3D, MC3 and R(2+1)D (Tran et al. 2018).

Paper: `A Closer Look at Spatiotemporal Convolutions for Action Recognition`
(https://arxiv.org/abs/1711.11248).

The three variants share one residual network and differ only in the convolution inside each
basic block:

* ``r3d``: full 3x3x3 convolutions everywhere;
* ``mc3``: 3x3x3 in the first stage, then spatial-only 1x3x3 (mixed convolutions);
* ``r2plus1d``: every 3x3x3 factorised into a 1x3x3 spatial conv, BN, ReLU and a 3x1x1 temporal
  conv, with the middle width chosen so the parameter count matches the 3-D conv.

Module names, parameter counts and outputs equal ``torchvision.models.video`` so torchvision's
Kinetics-400 weights (and FIMA checkpoints, which use the same key names) load strictly.
Feature levels: ``stem`` (stride 2), ``layer1`` (2), ``layer2`` (4), ``layer3`` (8), ``layer4`` (16).
"""
import logging
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from ._builder import model_creator
from ._layers import VideoBackbone, init_weights
from ._manipulate import remap_classifier
from ._pretrained_cfg import self_supervised_cfgs, video_cfg

__all__ = ['VideoResNet', 'BasicBlock3d', 'checkpoint_filter_fn']

_logger = logging.getLogger(__name__)

CONV_KINDS = ('3d', '2d', '2plus1d')


def factorised_width(in_chs: int, out_chs: int) -> int:
    """Middle width of a (2+1)D conv with the parameters of a 3x3x3 conv (Tran et al., eq. for M_i)."""
    return (27 * in_chs * out_chs) // (9 * in_chs + 3 * out_chs)


def spatiotemporal_conv(kind: str, in_chs: int, out_chs: int, mid_chs: int, stride: int = 1) -> nn.Module:
    """One 3x3x3-sized convolution of the given kind (no bias).

    Args:
        kind: ``'3d'`` (3x3x3), ``'2d'`` (1x3x3, no temporal stride) or ``'2plus1d'`` (1x3x3, BN, ReLU, 3x1x1).
        in_chs: Input channels.
        out_chs: Output channels.
        mid_chs: Width between the spatial and temporal conv of ``'2plus1d'`` (ignored otherwise).
        stride: Spatial stride; also temporal except for ``'2d'``.
    """
    if kind == '3d':
        return nn.Conv3d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
    if kind == '2d':
        return nn.Conv3d(in_chs, out_chs, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False)
    if kind == '2plus1d':
        return nn.Sequential(
            nn.Conv3d(in_chs, mid_chs, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False),
            nn.BatchNorm3d(mid_chs),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid_chs, out_chs, (3, 1, 1), stride=(stride, 1, 1), padding=(1, 0, 0), bias=False),
        )
    raise ValueError(f'Unknown conv kind {kind!r}; expected one of {CONV_KINDS}.')


def temporal_stride(kind: str, stride: int) -> int:
    """Temporal stride a conv of ``kind`` applies for a block stride ``stride``."""
    return 1 if kind == '2d' else stride


class BasicBlock3d(nn.Module):
    """Two 3x3x3-sized convs with a residual connection (``conv1``, ``conv2``, optional ``downsample``).

    Args:
        in_chs: Input channels.
        out_chs: Output channels.
        kind: Conv kind, see :func:`spatiotemporal_conv`.
        stride: Stride of the first conv (and of the shortcut projection).
    """

    def __init__(self, in_chs: int, out_chs: int, kind: str, stride: int = 1):
        super().__init__()
        # both convs use the width derived from the block's input/output widths
        mid_chs = factorised_width(in_chs, out_chs)
        self.conv1 = nn.Sequential(
            spatiotemporal_conv(kind, in_chs, out_chs, mid_chs, stride),
            nn.BatchNorm3d(out_chs),
            nn.ReLU(inplace=True),
        )
        self.conv2 = nn.Sequential(
            spatiotemporal_conv(kind, out_chs, out_chs, mid_chs),
            nn.BatchNorm3d(out_chs),
        )
        self.relu = nn.ReLU(inplace=True)
        self.downsample: Optional[nn.Module] = None
        if stride != 1 or in_chs != out_chs:
            t_stride = temporal_stride(kind, stride)
            self.downsample = nn.Sequential(
                nn.Conv3d(in_chs, out_chs, 1, stride=(t_stride, stride, stride), bias=False),
                nn.BatchNorm3d(out_chs),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.conv2(self.conv1(x))
        return self.relu(out + shortcut)


def make_stem(kind: str, in_chans: int, width: int, mid_width: int) -> nn.Sequential:
    """The stem: a (3,7,7) conv with spatial stride 2, or its (2+1)D factorisation for ``'2plus1d'``."""
    if kind == '2plus1d':
        return nn.Sequential(
            nn.Conv3d(in_chans, mid_width, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
            nn.BatchNorm3d(mid_width),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid_width, width, (3, 1, 1), stride=1, padding=(1, 0, 0), bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
        )
    return nn.Sequential(
        nn.Conv3d(in_chans, width, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
        nn.BatchNorm3d(width),
        nn.ReLU(inplace=True),
    )


class VideoResNet(VideoBackbone):
    """Video ResNet of basic blocks: ``stem``, ``layer1``..``layer4``, ``fc``.

    Args:
        conv_kinds: Conv kind of each of the four stages.
        stem_kind: ``'2plus1d'`` for the factorised stem, anything else for the (3,7,7) stem.
        layers: Blocks per stage.
        widths: Output channels per stage.
        stem_width: Stem output channels.
        stem_mid_width: Middle width of the factorised stem.
        num_classes: Classifier outputs, 0 for pooled features.
        in_chans: Input channels.
        drop_rate: Dropout before ``fc``.
        model_name: Name used in error messages.
    """
    stages_are_block_lists = True

    def __init__(
            self,
            conv_kinds: Sequence[str],
            stem_kind: str = '3d',
            layers: Sequence[int] = (2, 2, 2, 2),
            widths: Sequence[int] = (64, 128, 256, 512),
            stem_width: int = 64,
            stem_mid_width: int = 45,
            num_classes: int = 400,
            in_chans: int = 3,
            drop_rate: float = 0.,
            model_name: str = 'video_resnet',
    ):
        super().__init__(model_name, num_classes, in_chans, drop_rate)
        self.stem = make_stem(stem_kind, in_chans, stem_width, stem_mid_width)
        self.feature_info = [dict(num_chs=stem_width, reduction=2, temporal_reduction=1, module='stem')]
        in_chs, reduction, t_reduction = stem_width, 2, 1
        for i, (kind, depth, width) in enumerate(zip(conv_kinds, layers, widths)):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock3d(in_chs if j == 0 else width, width, kind, stride if j == 0 else 1)
                      for j in range(depth)]
            self.add_module(f'layer{i + 1}', nn.Sequential(*blocks))
            in_chs = width
            reduction *= stride
            t_reduction *= temporal_stride(kind, stride)
            self.feature_info.append(dict(
                num_chs=width, reduction=reduction, temporal_reduction=t_reduction, module=f'layer{i + 1}'))
        self.stage_names = (('stem',),) + tuple((f'layer{i + 1}',) for i in range(len(layers)))
        self.num_features = self.head_hidden_size = in_chs
        self.fc = self._make_fc(num_classes)
        init_weights(self)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: VideoResNet) -> Dict[str, torch.Tensor]:
    """Architecture-specific key remapping for video ResNets.

    torchvision and FIMA checkpoints already use this module layout. The one remap: a classifier
    stored as a 1x1x1 conv (``fc.weight`` of shape ``(K, C, 1, 1, 1)``) is flattened to a linear layer.
    """
    return remap_classifier(state_dict, 'fc', 'fc', target_ndim=2)


_create_resnet3d = model_creator(VideoResNet, checkpoint_filter_fn)


def _cfg(**kwargs: Any):
    return video_cfg(first_conv='stem.0', classifier='fc', **kwargs)


_TV_DESC = ('torchvision Kinetics-400 supervised weights; clip accuracy with torchvision\'s video-level protocol '
            '(frame_rate=15, clips_per_video=5, clip_len=16); eval resize 128x171, centre crop 112.')
_TV_PAPER = dict(paper_name='A Closer Look at Spatiotemporal Convolutions for Action Recognition',
                 paper_ids='arXiv:1711.11248', license='bsd-3-clause',
                 origin_url='https://github.com/pytorch/vision/tree/main/references/video_classification')
def _tv_cfg(url: str, acc1: float, acc5: float, num_params: int) -> Any:
    return _cfg(
        url=url, method='supervised', dataset='kinetics400', num_frames=16, published=True,
        input_size=(3, 16, 112, 112), crop_pct=112 / 128,
        metrics={'kinetics400_acc1': acc1, 'kinetics400_acc5': acc5}, num_params=num_params,
        description=_TV_DESC, **_TV_PAPER)


# an architecture's first tag is its default (pretrained=True): the published weights come first
default_cfgs = generate_default_cfgs({
    'r2plus1d_18.tv_k400': _tv_cfg('https://download.pytorch.org/models/r2plus1d_18-91a641e6.pth',
                                   67.463, 86.175, 31505325),
    **self_supervised_cfgs('r2plus1d_18', _cfg, (3, 16, 112, 112)),
    'r3d_18.tv_k400': _tv_cfg('https://download.pytorch.org/models/r3d_18-b3b3357e.pth',
                              63.200, 83.479, 33371472),
    **self_supervised_cfgs('r3d_18', _cfg, (3, 16, 112, 112)),
    'mc3_18.tv_k400': _tv_cfg('https://download.pytorch.org/models/mc3_18-a90a0ba3.pth',
                              63.960, 84.130, 11695440),
    'test_r3d': _cfg(num_classes=10, input_size=(3, 4, 32, 32), description='Tiny untrained model for tests.'),
    'test_r2plus1d': _cfg(num_classes=10, input_size=(3, 4, 32, 32), description='Tiny untrained model for tests.'),
    'test_r2plus1d_mc': _cfg(num_classes=10, input_size=(3, 8, 64, 64),
                             description='Tiny untrained model for tests and the CPU demo (8x64x64 -> 2x4x4 map).'),
})


@register_model
def r3d_18(pretrained: bool = False, **kwargs: Any) -> VideoResNet:
    """R3D-18: 18-layer ResNet with 3x3x3 convolutions."""
    return _create_resnet3d('r3d_18', pretrained, conv_kinds=('3d',) * 4, stem_kind='3d', **kwargs)


@register_model
def mc3_18(pretrained: bool = False, **kwargs: Any) -> VideoResNet:
    """MC3-18: 3-D convolutions in ``layer1``, spatial (1x3x3) convolutions in ``layer2``..``layer4``."""
    return _create_resnet3d('mc3_18', pretrained, conv_kinds=('3d',) + ('2d',) * 3, stem_kind='3d', **kwargs)


@register_model
def r2plus1d_18(pretrained: bool = False, **kwargs: Any) -> VideoResNet:
    """R(2+1)D-18: every 3x3x3 convolution factorised into spatial 1x3x3 and temporal 3x1x1."""
    return _create_resnet3d('r2plus1d_18', pretrained, conv_kinds=('2plus1d',) * 4, stem_kind='2plus1d', **kwargs)


@register_model
def test_r3d(pretrained: bool = False, **kwargs: Any) -> VideoResNet:
    """Tiny R3D (one block per stage, widths 8..32) for tests."""
    return _create_resnet3d(
        'test_r3d', pretrained, conv_kinds=('3d',) * 4, stem_kind='3d',
        layers=(1, 1, 1, 1), widths=(8, 16, 24, 32), stem_width=8, **kwargs)


@register_model
def test_r2plus1d(pretrained: bool = False, **kwargs: Any) -> VideoResNet:
    """Tiny R(2+1)D (one block per stage, widths 8..32) for tests."""
    return _create_resnet3d(
        'test_r2plus1d', pretrained, conv_kinds=('2plus1d',) * 4, stem_kind='2plus1d',
        layers=(1, 1, 1, 1), widths=(8, 16, 24, 32), stem_width=8, stem_mid_width=6, **kwargs)


@register_model
def test_r2plus1d_mc(pretrained: bool = False, **kwargs: Any) -> VideoResNet:
    """Tiny mixed-convolution R(2+1)D (widths 8..32) for tests and the CPU demo.

    (2+1)D convolutions in the stem and ``layer1``..``layer3``, spatial-only (1x3x3) ones in
    ``layer4``, which therefore keeps the time axis: an 8-frame clip leaves a map of 2 time steps
    (1 for :func:`test_r2plus1d`), the two temporal indices FIMA's motion decoder works on.
    """
    return _create_resnet3d(
        'test_r2plus1d_mc', pretrained, conv_kinds=('2plus1d',) * 3 + ('2d',), stem_kind='2plus1d',
        layers=(1, 1, 1, 1), widths=(8, 16, 24, 32), stem_width=8, stem_mid_width=6, **kwargs)
