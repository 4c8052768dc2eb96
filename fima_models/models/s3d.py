"""S3D: separable 3-D Inception network (Xie et al. 2018).

Paper: `Rethinking Spatiotemporal Feature Learning: Speed-Accuracy Trade-offs in Video
Classification` (https://arxiv.org/abs/1712.04851).

Inception-v1 topology in which every 3x3x3-sized convolution is separated into a spatial
(1xkxk) and a temporal (kx1x1) convolution, each followed by BatchNorm and ReLU.

Module names (``features.N``, ``classifier.1``), parameter counts and outputs equal
``torchvision.models.video.s3d``, so torchvision's Kinetics-400 weights load strictly. One
deliberate difference: torchvision ends with a fixed ``AvgPool3d((2, 7, 7), stride=1)`` and a mean
over the remaining positions, which only accepts clips of at least 14x224x224 (its reported
``min_size``). This model averages globally over T, H and W instead, so it takes any clip of at
least 5x17x17. The two heads are identical whenever the final map is 2x7x7 (16x224x224 input);
on longer clips torchvision's sliding temporal window gives the first and last time step half
weight, this model weights all steps equally.

Feature levels: ``features.0`` (stride 2), ``features.3`` (4), ``features.6`` (8),
``features.12`` (16), ``features.15`` (32).
"""
from functools import partial
from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from ._builder import model_creator
from ._layers import (
    INCEPTION_STAGES, INCEPTION_WIDTHS, TINY_INCEPTION_ARGS, ConvBnAct3d, VideoBackbone, init_weights, mixed_out_chs,
)
from ._manipulate import remap_classifier
from ._pretrained_cfg import self_supervised_cfgs, video_cfg

__all__ = ['S3D', 'SepConv3d', 'SepInceptionBlock', 'checkpoint_filter_fn']

#: S3D's BatchNorm settings (those of the original TensorFlow model).
s3d_norm = partial(nn.BatchNorm3d, eps=1e-3, momentum=1e-3)


class SepConv3d(nn.Sequential):
    """A kxkxk convolution separated into spatial (1xkxk) then temporal (kx1x1), each with BN + ReLU.

    Args:
        in_chs: Input channels.
        out_chs: Output channels (of both parts).
        kernel_size: k.
        stride: Stride in every dimension.
        padding: Zero padding in every dimension.
        norm_layer: Normalisation layer factory.
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            kernel_size: int,
            stride: int = 1,
            padding: int = 0,
            norm_layer: Callable[[int], nn.Module] = s3d_norm,
    ):
        k, s, p = kernel_size, stride, padding
        super().__init__(
            ConvBnAct3d(in_chs, out_chs, (1, k, k), (1, s, s), (0, p, p), norm_layer=norm_layer),
            ConvBnAct3d(out_chs, out_chs, (k, 1, 1), (s, 1, 1), (p, 0, 0), norm_layer=norm_layer),
        )


class SepInceptionBlock(nn.Module):
    """Inception block with separable 3x3x3 convolutions: ``branch0`` .. ``branch3``, concatenated.

    Args:
        in_chs: Input channels.
        widths: ``(b0, b1a, b1b, b2a, b2b, b3)`` - 1x1x1 branch, two (1x1x1 -> sep 3x3x3) branches,
            pooled 1x1x1 branch.
        norm_layer: Normalisation layer factory.
    """

    def __init__(self, in_chs: int, widths: Sequence[int], norm_layer: Callable[[int], nn.Module] = s3d_norm):
        super().__init__()
        b0, b1a, b1b, b2a, b2b, b3 = widths
        self.branch0 = ConvBnAct3d(in_chs, b0, norm_layer=norm_layer)
        self.branch1 = nn.Sequential(
            ConvBnAct3d(in_chs, b1a, norm_layer=norm_layer),
            SepConv3d(b1a, b1b, 3, padding=1, norm_layer=norm_layer),
        )
        self.branch2 = nn.Sequential(
            ConvBnAct3d(in_chs, b2a, norm_layer=norm_layer),
            SepConv3d(b2a, b2b, 3, padding=1, norm_layer=norm_layer),
        )
        self.branch3 = nn.Sequential(
            nn.MaxPool3d(3, stride=1, padding=1),
            ConvBnAct3d(in_chs, b3, norm_layer=norm_layer),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], dim=1)


class S3D(VideoBackbone):
    """S3D backbone: ``features`` (an ``nn.Sequential`` of 16 layers) and ``classifier``
    (``Dropout``, 1x1x1 ``Conv3d``).

    Args:
        stem_widths: Output channels of the 7x7x7 stem, the 1x1x1 conv and the 3x3x3 conv.
        mixed_widths: Widths of the nine mixed blocks 3b..5c.
        num_classes: Classifier outputs, 0 for pooled features.
        in_chans: Input channels.
        drop_rate: Dropout before the classifier (torchvision's default 0.2).
        model_name: Name used in error messages.
    """
    min_input_size = (5, 17, 17)

    def __init__(
            self,
            stem_widths: Tuple[int, int, int] = (64, 64, 192),
            mixed_widths: Sequence[Sequence[int]] = INCEPTION_WIDTHS,
            num_classes: int = 400,
            in_chans: int = 3,
            drop_rate: float = 0.2,
            model_name: str = 's3d',
    ):
        super().__init__(model_name, num_classes, in_chans, drop_rate)
        w1, w2, w3 = stem_widths
        layers: List[nn.Module] = [
            SepConv3d(in_chans, w1, 7, stride=2, padding=3),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            ConvBnAct3d(w1, w2, norm_layer=s3d_norm),
            SepConv3d(w2, w3, 3, padding=1),
        ]
        self.feature_info = [
            dict(num_chs=w1, reduction=2, temporal_reduction=2, module='features.0'),
            dict(num_chs=w3, reduction=4, temporal_reduction=2, module='features.3'),
        ]
        stage_names = [('features.0',), ('features.1', 'features.2', 'features.3')]
        pools = (
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.MaxPool3d(3, stride=2, padding=1),
            nn.MaxPool3d(2, stride=2),
        )
        in_chs, reduction, t_reduction = w3, 4, 2
        widths = iter(mixed_widths)
        for pool, blocks in zip(pools, INCEPTION_STAGES):
            first = len(layers)
            layers.append(pool)
            for _ in blocks:
                block_widths = next(widths)
                layers.append(SepInceptionBlock(in_chs, block_widths))
                in_chs = mixed_out_chs(block_widths)
            reduction *= 2
            t_reduction *= pool.stride if isinstance(pool.stride, int) else pool.stride[0]
            stage_names.append(tuple(f'features.{i}' for i in range(first, len(layers))))
            self.feature_info.append(dict(
                num_chs=in_chs, reduction=reduction, temporal_reduction=t_reduction, module=f'features.{len(layers) - 1}'))
        self.features = nn.Sequential(*layers)
        self.stage_names = tuple(stage_names)
        self.num_features = self.head_hidden_size = in_chs
        self.classifier = nn.Sequential(nn.Dropout(drop_rate), self._make_conv_classifier(num_classes))
        init_weights(self)

    def _make_conv_classifier(self, num_classes: int) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        conv = nn.Conv3d(self.num_features, num_classes, kernel_size=1, bias=True)
        nn.init.normal_(conv.weight, 0.0, 0.01)
        nn.init.zeros_(conv.bias)
        return conv

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """Return the 1x1x1 conv classifier (``nn.Identity`` when ``num_classes == 0``)."""
        return self.classifier[1]

    def reset_classifier(self, num_classes: int, global_pool: Any = None) -> None:
        """Replace the classifier conv with a fresh one with ``num_classes`` outputs (0 removes it)."""
        if global_pool not in (None, '', 'avg'):
            raise ValueError(f"{self.model_name} only supports global_pool='avg', got {global_pool!r}.")
        self.num_classes = num_classes
        self.classifier[1] = self._make_conv_classifier(num_classes)

    def _head_dropout(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier[0](x)

    def _classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier[1](x[:, :, None, None, None]).flatten(1)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: S3D) -> Dict[str, torch.Tensor]:
    """Architecture-specific key remapping for S3D.

    torchvision's layout is this model's. The one remap: a linear classifier (``fc.weight`` /
    ``fc.bias`` with a 2-D weight, as saved by linear-probe code) becomes the 1x1x1 conv ``classifier.1``.
    """
    return remap_classifier(state_dict, 'fc', 'classifier.1', target_ndim=5)


_create_s3d = model_creator(S3D, checkpoint_filter_fn)


def _cfg(**kwargs: Any):
    return video_cfg(first_conv='features.0.0.0', classifier='classifier.1', **kwargs)


# the first tag is the default (pretrained=True): the published weights come first
default_cfgs = generate_default_cfgs({
    's3d.tv_k400': _cfg(
        url='https://download.pytorch.org/models/s3d-d76dad2f.pth', method='supervised', dataset='kinetics400',
        num_frames=128, input_size=(3, 128, 224, 224), crop_pct=224 / 256, published=True, num_classes=400,
        metrics={'kinetics400_acc1': 68.368, 'kinetics400_acc5': 88.050}, num_params=8320048,
        description='torchvision Kinetics-400 supervised weights; clip accuracy with clip_len=128, frame_rate=15, '
                    'one clip per video; eval resize 256x256, centre crop 224. torchvision needs >=14 frames.',
        paper_name='Rethinking Spatiotemporal Feature Learning: Speed-Accuracy Trade-offs in Video Classification',
        paper_ids='arXiv:1712.04851', license='bsd-3-clause',
        origin_url='https://github.com/pytorch/vision/tree/main/references/video_classification#s3d'),
    **self_supervised_cfgs('s3d', _cfg, (3, 16, 224, 224)),
    'test_s3d': _cfg(num_classes=10, input_size=(3, 8, 32, 32), description='Tiny untrained model for tests.'),
})


@register_model
def s3d(pretrained: bool = False, **kwargs: Any) -> S3D:
    """S3D with torchvision's widths and module names."""
    return _create_s3d('s3d', pretrained, **kwargs)


@register_model
def test_s3d(pretrained: bool = False, **kwargs: Any) -> S3D:
    """Tiny S3D (widths / 16) for tests."""
    return _create_s3d('test_s3d', pretrained, **{**TINY_INCEPTION_ARGS, **kwargs})
