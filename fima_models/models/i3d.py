"""Inception-I3D with "SAME" padding (Carreira & Zisserman 2017).

Paper: `Quo Vadis, Action Recognition? A New Model and the Kinetics Dataset`
(https://arxiv.org/abs/1705.07750).

Module names follow the I3D used by the FIMA reference code (``conv3d_1a_7x7``,
``maxPool3d_2a_3x3``, ..., ``mixed_5c``; a unit is ``conv3d`` without bias + ``batch3d`` + ReLU;
a mixed block has ``branch_0`` .. ``branch_3``), so its checkpoints load after the generic prefix
stripping of :mod:`fima_models.checkpoint`. The classifier is a linear ``fc`` on globally averaged
features.

"SAME" padding, two rules (constructor argument ``padding``):

- ``"static"`` (default): the FIMA authors' rule. A layer with kernel k and stride s pads every
  dimension by ``max(k - s, 0)`` in total, the smaller half before, **whatever the input size**. A
  checkpoint trained with their code gives their features at every input size.
- ``"tf_same"``: TensorFlow's rule, as in DeepMind's Kinetics I3D. The total pad of a dimension of
  size n is ``max(k - s, 0)`` when ``n % s == 0`` and ``max(k - n % s, 0)`` otherwise (smaller half
  before), so every layer's output size is ``ceil(n / s)``.

The two agree whenever every strided layer sees a size divisible by its stride (16x224, 16x112,
32x256); they differ elsewhere (e.g. 12x150x190: different window positions, and the static rule
can give one output fewer along a dimension). Max-pools pad with zeros and use ceil mode, in both
rules. Padding is cheap: stride-1 convs pad symmetrically inside the conv; every pool input is
post-ReLU (non-negative), where a zero pad never wins a maximum, so pools use PyTorch's own padding
and ceil mode instead of a copy when that gives the same windows (:class:`MaxPool3dSame`); only the
strided stem conv pays one ``F.pad``.

Feature levels: ``conv3d_1a_7x7`` (stride 2), ``conv3d_2c_3x3`` (4), ``mixed_3c`` (8),
``mixed_4f`` (16), ``mixed_5c`` (32). A 16x224x224 clip gives a 1024x2x7x7 map.
"""
from typing import Any, Dict, List, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import generate_default_cfgs, register_model

from ._builder import build_video_model
from ._layers import INCEPTION_STAGES, INCEPTION_WIDTHS, VideoBackbone, init_weights, mixed_out_chs, scale_widths
from ._pretrained_cfg import self_supervised_cfgs, video_cfg

__all__ = [
    'I3D', 'Unit3d', 'MaxPool3dSame', 'MixedBlock', 'PADDING_MODES', 'same_padding', 'static_padding', 'same_pad_arg',
    'checkpoint_filter_fn',
]

Size3 = Tuple[int, int, int]


def _triple(v: Union[int, Sequence[int]]) -> Size3:
    return (v, v, v) if isinstance(v, int) else tuple(v)


#: "SAME" padding rules: the FIMA authors' size-independent rule and TensorFlow's size-dependent one.
PADDING_MODES = ('static', 'tf_same')


def same_padding(size: int, kernel: int, stride: int) -> Tuple[int, int]:
    """TensorFlow "SAME" padding ``(before, after)`` of one dimension of ``size`` elements."""
    total = max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def static_padding(kernel: int, stride: int) -> Tuple[int, int]:
    """The FIMA authors' "SAME" padding ``(before, after)``: ``max(k - s, 0)`` in total at every size."""
    total = max(kernel - stride, 0)
    return total // 2, total - total // 2


def _check_mode(padding: str) -> str:
    if padding not in PADDING_MODES:
        raise ValueError(f"unknown I3D padding {padding!r}; use one of {PADDING_MODES}")
    return padding


def same_pad_arg(spatial: Sequence[int], kernel: Size3, stride: Size3, padding: str = 'static') -> List[int]:
    """``F.pad`` argument (last dim first) for "SAME" padding of a ``(T, H, W)`` input.

    Args:
        spatial: input size ``(T, H, W)``.
        kernel: kernel size.
        stride: stride.
        padding: ``"static"`` (the FIMA authors' rule) or ``"tf_same"`` (TensorFlow's).
    """
    _check_mode(padding)
    pad: List[int] = []
    for size, k, s in zip(reversed(spatial), reversed(kernel), reversed(stride)):
        pad.extend(static_padding(k, s) if padding == 'static' else same_padding(size, k, s))
    return pad


class _SamePad(nn.Module):
    """Computes "SAME" padding for a kernel / stride and applies it with one ``F.pad`` when needed."""

    def __init__(
            self,
            kernel_size: Union[int, Sequence[int]],
            stride: Union[int, Sequence[int]],
            padding: str = 'static',
    ):
        super().__init__()
        self.kernel_size = _triple(kernel_size)
        self.stride = _triple(stride)
        self.padding = _check_mode(padding)

    def pad_arg(self, x: torch.Tensor) -> List[int]:
        return same_pad_arg(x.shape[-3:], self.kernel_size, self.stride, self.padding)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.pad_arg(x)
        return F.pad(x, pad) if any(pad) else x


class Unit3d(_SamePad):
    """Conv3d (no bias) + BatchNorm3d + ReLU with "SAME" padding: ``conv3d``, ``batch3d``.

    Stride-1 odd kernels pad symmetrically, so the conv pads itself; strided convs pad per input.

    Args:
        in_chs: Input channels.
        out_chs: Output channels.
        kernel_size: Kernel size.
        stride: Stride.
        padding: "SAME" rule, ``"static"`` or ``"tf_same"`` (see the module docstring).
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            kernel_size: Union[int, Sequence[int]] = 1,
            stride: Union[int, Sequence[int]] = 1,
            padding: str = 'static',
    ):
        super().__init__(kernel_size, stride, padding)
        self.conv_pads = all(s == 1 and k % 2 == 1 for k, s in zip(self.kernel_size, self.stride))
        conv_padding = tuple((k - 1) // 2 for k in self.kernel_size) if self.conv_pads else 0
        self.conv3d = nn.Conv3d(in_chs, out_chs, self.kernel_size, stride=self.stride, padding=conv_padding, bias=False)
        self.batch3d = nn.BatchNorm3d(out_chs)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.conv_pads:
            x = self.pad(x)
        return self.relu(self.batch3d(self.conv3d(x)))


def _pool_out_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Output length of PyTorch's ceil-mode max-pool with symmetric ``pad`` (its rule: the last window must
    start inside the input or the left padding)."""
    out = -(-(size + 2 * pad - kernel) // stride) + 1
    return out - 1 if (out - 1) * stride >= size + pad else out


class MaxPool3dSame(_SamePad):
    """3-D max-pool with "SAME" zero padding and ceil mode.

    With ``nonnegative_input=True`` (the caller guarantees inputs >= 0, e.g. post-ReLU maps) the
    explicit zero padding is skipped whenever it can be: a window always covers at least one input
    element, so a zero pad never wins a maximum, and PyTorch's own padding (``-inf``, symmetric) plus
    ceil mode produce the same windows whenever both give the same number of outputs along every
    dimension and the last window starts inside the input (checked per input size by
    :func:`_pool_out_size`). This saves a full copy of the input per pool; the result is identical.

    Args:
        kernel_size: Kernel size.
        stride: Stride.
        nonnegative_input: Inputs are never negative, allowing the copy-free path.
        padding: "SAME" rule, ``"static"`` or ``"tf_same"`` (see the module docstring).
    """

    def __init__(
            self,
            kernel_size: Union[int, Sequence[int]],
            stride: Union[int, Sequence[int]],
            nonnegative_input: bool = False,
            padding: str = 'static',
    ):
        super().__init__(kernel_size, stride, padding)
        self.nonnegative_input = nonnegative_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.pad_arg(x)
        if self.nonnegative_input:
            # pad is (w_before, w_after, h_before, h_after, t_before, t_after)
            befores = (pad[4], pad[2], pad[0])
            afters = (pad[5], pad[3], pad[1])
            if all(
                _pool_out_size(n + b + a, k, s, 0) == _pool_out_size(n, k, s, b) and (_pool_out_size(n, k, s, b) - 1) * s - b < n
                for n, k, s, b, a in zip(x.shape[-3:], self.kernel_size, self.stride, befores, afters)
            ):
                return F.max_pool3d(x, self.kernel_size, self.stride, padding=befores, ceil_mode=True)
        if any(pad):
            x = F.pad(x, pad)
        return F.max_pool3d(x, self.kernel_size, self.stride, ceil_mode=True)


class MixedBlock(nn.Module):
    """Inception mixed block: ``branch_0`` (1x1x1), ``branch_1`` / ``branch_2`` (1x1x1 then 3x3x3),
    ``branch_3`` (3x3x3 stride-1 max-pool then 1x1x1), concatenated on channels.

    Args:
        in_chs: Input channels.
        widths: ``(b0, b1a, b1b, b2a, b2b, b3)``.
        padding: "SAME" rule, ``"static"`` or ``"tf_same"``.
    """

    def __init__(self, in_chs: int, widths: Sequence[int], padding: str = 'static'):
        super().__init__()
        b0, b1a, b1b, b2a, b2b, b3 = widths
        self.branch_0 = Unit3d(in_chs, b0, 1, padding=padding)
        self.branch_1 = nn.Sequential(Unit3d(in_chs, b1a, 1, padding=padding), Unit3d(b1a, b1b, 3, padding=padding))
        self.branch_2 = nn.Sequential(Unit3d(in_chs, b2a, 1, padding=padding), Unit3d(b2a, b2b, 3, padding=padding))
        self.branch_3 = nn.Sequential(
            MaxPool3dSame(3, 1, nonnegative_input=True, padding=padding), Unit3d(in_chs, b3, 1, padding=padding))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch_0(x), self.branch_1(x), self.branch_2(x), self.branch_3(x)], dim=1)


class I3D(VideoBackbone):
    """Inception-I3D backbone with "SAME" padding (static by default) and a linear ``fc`` classifier.

    Args:
        stem_widths: Output channels of ``conv3d_1a_7x7``, ``conv3d_2b_1x1`` and ``conv3d_2c_3x3``.
        mixed_widths: Widths of the nine mixed blocks 3b..5c.
        num_classes: Classifier outputs, 0 for pooled features.
        in_chans: Input channels.
        drop_rate: Dropout before ``fc``.
        model_name: Name used in error messages.
        padding: "SAME" rule: ``"static"`` (default, the FIMA authors' I3D) or ``"tf_same"``
            (TensorFlow's size-dependent rule, DeepMind's I3D); see the module docstring.
    """

    def __init__(
            self,
            stem_widths: Tuple[int, int, int] = (64, 64, 192),
            mixed_widths: Sequence[Sequence[int]] = INCEPTION_WIDTHS,
            num_classes: int = 400,
            in_chans: int = 3,
            drop_rate: float = 0.,
            model_name: str = 'i3d',
            padding: str = 'static',
    ):
        super().__init__(model_name, num_classes, in_chans, drop_rate)
        self.padding = _check_mode(padding)
        # the static rule pads the 7x7x7 stem by only 5, so a dimension needs 2 elements
        self.min_input_size = (2, 2, 2) if padding == 'static' else (1, 1, 1)
        w1, w2, w3 = stem_widths
        self.conv3d_1a_7x7 = Unit3d(in_chans, w1, 7, stride=2, padding=padding)
        self.maxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2), nonnegative_input=True, padding=padding)
        self.conv3d_2b_1x1 = Unit3d(w1, w2, 1, padding=padding)
        self.conv3d_2c_3x3 = Unit3d(w2, w3, 3, padding=padding)
        self.feature_info = [
            dict(num_chs=w1, reduction=2, temporal_reduction=2, module='conv3d_1a_7x7'),
            dict(num_chs=w3, reduction=4, temporal_reduction=2, module='conv3d_2c_3x3'),
        ]
        stage_names = [('conv3d_1a_7x7',), ('maxPool3d_2a_3x3', 'conv3d_2b_1x1', 'conv3d_2c_3x3')]
        pools = (
            ('maxPool3d_3a_3x3', (1, 3, 3), (1, 2, 2)),
            ('maxPool3d_4a_3x3', (3, 3, 3), (2, 2, 2)),
            ('maxPool3d_5a_2x2', (2, 2, 2), (2, 2, 2)),
        )
        in_chs, reduction, t_reduction = w3, 4, 2
        widths = iter(mixed_widths)
        for (pool_name, kernel, stride), blocks in zip(pools, INCEPTION_STAGES):
            self.add_module(pool_name, MaxPool3dSame(kernel, stride, nonnegative_input=True, padding=padding))
            names = [pool_name]
            for block in blocks:
                block_widths = next(widths)
                self.add_module(f'mixed_{block}', MixedBlock(in_chs, block_widths, padding))
                names.append(f'mixed_{block}')
                in_chs = mixed_out_chs(block_widths)
            reduction *= stride[1]
            t_reduction *= stride[0]
            stage_names.append(tuple(names))
            self.feature_info.append(dict(
                num_chs=in_chs, reduction=reduction, temporal_reduction=t_reduction, module=names[-1]))
        self.stage_names = tuple(stage_names)
        self.num_features = self.head_hidden_size = in_chs
        self.fc = self._make_fc(num_classes)
        init_weights(self)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: I3D) -> Dict[str, torch.Tensor]:
    """Architecture-specific key remapping for I3D.

    The reference I3D classifies with a biased 1x1x1 unit ``conv3d_0c_1x1.conv3d``; it becomes the
    linear ``fc`` of this model (weight flattened to 2-D).
    """
    out = {}
    for k, v in state_dict.items():
        if k.startswith('conv3d_0c_1x1.conv3d.'):
            k = 'fc.' + k.rsplit('.', 1)[1]
            if v.ndim == 5:
                v = v.flatten(1)
        out[k] = v
    return out


def _create_i3d(variant: str, pretrained: bool = False, **kwargs: Any) -> I3D:
    kwargs.setdefault('model_name', variant)
    return build_video_model(I3D, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


def _cfg(**kwargs: Any):
    return video_cfg(first_conv='conv3d_1a_7x7.conv3d', classifier='fc', **kwargs)


default_cfgs = generate_default_cfgs({
    **self_supervised_cfgs('i3d', _cfg, (3, 16, 224, 224), metrics={
        'fima_ucf101': {'ucf101_finetune': 84.2, 'hmdb51_finetune': 57.8, 'ucf101_linear': 75.3, 'hmdb51_linear': 42.8},
        'moco_ucf101': {'ucf101_finetune': 76.7, 'hmdb51_finetune': 48.8, 'ucf101_linear': 58.1, 'hmdb51_linear': 26.7},
    }),
    'test_i3d': _cfg(num_classes=10, input_size=(3, 8, 32, 32), description='Tiny untrained model for tests.'),
})


@register_model
def i3d(pretrained: bool = False, **kwargs: Any) -> I3D:
    """Inception-I3D with the FIMA reference module names."""
    return _create_i3d('i3d', pretrained, **kwargs)


@register_model
def test_i3d(pretrained: bool = False, **kwargs: Any) -> I3D:
    """Tiny I3D (widths / 16) for tests."""
    return _create_i3d(
        'test_i3d', pretrained, stem_widths=(8, 8, 12),
        mixed_widths=tuple(scale_widths(w, 16) for w in INCEPTION_WIDTHS), **kwargs)
