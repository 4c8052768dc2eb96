"""oneDNN fused convolutions for the eager bfloat16 CPU plan: prepacked weights, ReLU and residual adds as post-ops.

In the eager bfloat16 plan the convolutions shrink ~4x against float32 but the memory-bound passes
around them (ReLU, residual add) only ~2x, and oneDNN reorders every plain weight into its blocked
layout on every call. :func:`fuse_onednn` rewrites a (BatchNorm-folded) model so that

* every zero-padded ``Conv3d`` becomes a :class:`OneDnnConv3d`, which reorders its weight into
  oneDNN's blocked layout once (on its first call, cached until the weight changes) and runs through
  ``torch.ops.mkldnn._convolution_pointwise`` - the private op inductor's freezing emits;
* a ``ReLU`` module that reads nothing but a convolution's output is merged into that convolution
  as a post-op (found by watching one forward pass, like BatchNorm folding);
* the residual ``relu(conv2(conv1(x)) + shortcut)`` of torchvision-style video ResNet blocks runs
  as one convolution with an ``add`` then ``relu`` post-op (:class:`FusedBasicBlock`).

All of it is exact up to rounding (the post-ops act on the convolution's accumulator, so in
bfloat16 the sum is rounded once instead of twice) and keeps every state-dict key. The ops are
private: :func:`onednn_fusion_available` checks once per process that they exist and compute the
right values, and the plan leaves the rewrite out (with one logged reason) where they do not.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from fima_models._utils import describe_error
from fima_models.inference.rewrites import conv3d_sharing_parameters, set_submodule, trace_single_consumers

__all__ = ['OneDnnConv3d', 'FusedBasicBlock', 'fuse_onednn', 'onednn_fusion_available']

_logger = logging.getLogger(__name__)

#: The private ``torch.ops.mkldnn`` operators the fused convolutions need.
REQUIRED_OPS = ('_convolution_pointwise', '_reorder_convolution_weight',
                '_is_mkldnn_bf16_supported')

#: Residual blocks computing ``relu(conv2(conv1(x)) + (x or downsample(x)))``: (module, class name).
_BASIC_BLOCKS = frozenset({
    ('fima_models.models.resnet3d', 'BasicBlock3d'),
    ('torchvision.models.video.resnet', 'BasicBlock'),
})


def _probe() -> None:
    """Run each fused op once on a tiny float32 input and compare with the unfused computation."""
    ops = torch.ops.mkldnn
    for name in REQUIRED_OPS:
        getattr(ops, name)  # AttributeError where this torch build lacks the op
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 3, 5, 5, generator=gen)
    weight = torch.randn(6, 4, 3, 3, 3, generator=gen)
    bias = torch.randn(6, generator=gen)
    other = torch.randn(1, 6, 3, 5, 5, generator=gen)
    args = ([1, 1, 1], [1, 1, 1], [1, 1, 1], 1)
    packed = ops._reorder_convolution_weight(weight, *args, list(x.shape))
    conv = F.conv3d(x, weight, bias, 1, 1)
    got = (ops._convolution_pointwise(x, packed, bias, *args, 'relu', [], ''),
           ops._convolution_pointwise.binary(x, other, packed, bias, *args, 'add', None, 'relu', [], ''))
    for out, ref in zip(got, (F.relu(conv), F.relu(conv + other))):
        if out.shape != ref.shape or not torch.allclose(out, ref, rtol=1e-4, atol=1e-4):
            raise RuntimeError('a fused oneDNN convolution gave values different from conv3d')


@functools.lru_cache(maxsize=None)
def onednn_fusion_available() -> Tuple[bool, str]:
    """Whether this torch build runs oneDNN's fused convolutions correctly, and why (checked once per process).

    Returns:
        ``(True, reason)`` or ``(False, reason)``; where unavailable the reason is logged once.
    """
    if not torch.backends.mkldnn.is_available():
        ok, reason = False, 'torch was built without oneDNN (mkldnn)'
    else:
        try:
            with torch.no_grad():
                _probe()
            ok, reason = True, 'torch.ops.mkldnn fused convolutions present and checked'
        except Exception as exc:  # noqa: BLE001 - private ops: any failure means "do not use them"
            ok, reason = False, f'torch.ops.mkldnn fused convolutions unusable ({describe_error(exc)})'
    if not ok:
        _logger.warning('oneDNN fusion off: %s; the bf16 plan runs unfused convolutions', reason)
    return ok, reason


@functools.lru_cache(maxsize=None)
def _dtype_supported(dtype: torch.dtype) -> bool:
    """Whether oneDNN computes convolutions in ``dtype`` on this CPU (bfloat16 needs AVX512-BF16 / AMX
    or its emulation in oneDNN; elsewhere the ATen convolution is used, as by the unfused plan)."""
    if dtype == torch.float32:
        return True
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


class OneDnnConv3d(nn.Conv3d):
    """A ``Conv3d`` run by oneDNN with a prepacked weight and an optional ReLU / residual-add post-op.

    The weight stays an ordinary parameter (same state-dict keys as ``nn.Conv3d``); a copy reordered
    into oneDNN's blocked layout is made on the first call and reused until the weight tensor is
    replaced or changed in place. Outside the fast case (autograd recording, another device, a
    dtype oneDNN does not compute on this CPU) it computes the same thing with ``F.conv3d``.

    Attributes:
        unary: ``'relu'`` or ``'none'``: the activation applied to the convolution's output
            (ignored when a residual is given, which is always followed by ReLU).
    """

    unary: str

    @staticmethod
    def supported(conv: nn.Module) -> bool:
        """Whether ``conv`` is a plain ``nn.Conv3d`` oneDNN can run as is (zero, explicit padding)."""
        return (type(conv) is nn.Conv3d and conv.padding_mode == 'zeros'
                and not isinstance(conv.padding, str))

    @classmethod
    def from_conv(cls, conv: nn.Conv3d, unary: str = 'none') -> OneDnnConv3d:
        """A :class:`OneDnnConv3d` sharing ``conv``'s parameters."""
        if not cls.supported(conv):
            raise ValueError(f'{conv} is not a zero-padded nn.Conv3d')
        new = conv3d_sharing_parameters(cls, conv)
        new.unary = unary
        return new

    def __getstate__(self) -> Dict[str, Any]:
        # oneDNN's opaque tensors cannot be copied or pickled; a copy packs its own weight
        state = self.__dict__.copy()
        state.pop('_packed', None)
        return state

    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        # inference-mode tensors keep no version counter (and cannot be changed outside inference mode)
        key = (weight.data_ptr(), -1 if weight.is_inference() else weight._version, weight.dtype)
        cached = self.__dict__.get('_packed')
        if cached is None or cached[0] != key:
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                weight.detach(), list(self.padding), list(self.stride), list(self.dilation), self.groups,
                list(x.shape))
            cached = (key, packed)
            self.__dict__['_packed'] = cached
        return cached[1]

    def _fast(self, x: torch.Tensor) -> bool:
        recording = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        return (x.device.type == 'cpu' and x.dim() == 5 and x.dtype == self.weight.dtype
                and _dtype_supported(x.dtype) and not recording)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not self._fast(x):
            y = super().forward(x)
            if residual is not None:
                return F.relu(y + residual)
            return F.relu(y) if self.unary == 'relu' else y
        args = (self._packed_weight(x), self.bias, list(self.padding), list(self.stride), list(self.dilation),
                self.groups)
        if residual is not None:
            return torch.ops.mkldnn._convolution_pointwise.binary(x, residual, *args, 'add', None, 'relu', [], '')
        return torch.ops.mkldnn._convolution_pointwise(x, *args, self.unary, [], '')

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, unary={self.unary}'


def _flat_sequence(module: nn.Module) -> List[nn.Module]:
    """The modules ``module`` runs in order, looking through plain ``nn.Sequential`` containers."""
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        return [leaf for child in module for leaf in _flat_sequence(child)]
    return [module]


class FusedBasicBlock(nn.Module):
    """A video ResNet basic block whose ``relu(conv2(...) + shortcut)`` is conv2's last convolution's post-op.

    Keeps the block's sub-modules (``conv1``, ``conv2``, ``downsample``, ``relu``) and so its
    state-dict keys; only the order of calls changes: the shortcut is computed first and handed to
    the last convolution of ``conv2``, which adds it and applies ReLU in the same oneDNN call.
    """

    def __init__(self, block: nn.Module, body: Tuple[nn.Module, ...], last: OneDnnConv3d):
        super().__init__()
        self.conv1 = block.conv1
        self.conv2 = block.conv2
        self.downsample = block.downsample
        self.relu = block.relu
        # references into conv2 (already registered there), so not registered twice
        self.__dict__['_body'] = body
        self.__dict__['_last'] = last
        self.train(block.training)

    @classmethod
    def from_block(cls, block: nn.Module) -> Optional[FusedBasicBlock]:
        """The fused form of a torchvision-style basic block, or ``None`` where its shape does not allow it.

        The block must be a known basic block class, end its ``conv2`` with a :class:`OneDnnConv3d`
        without activation followed only by ``nn.Identity`` (a folded BatchNorm), and have a ReLU.
        """
        if (type(block).__module__, type(block).__name__) not in _BASIC_BLOCKS:
            return None
        if not isinstance(getattr(block, 'relu', None), nn.ReLU):
            return None
        seq = _flat_sequence(block.conv2)
        last = max((i for i, m in enumerate(seq) if not isinstance(m, nn.Identity)), default=None)
        if last is None or not isinstance(seq[last], OneDnnConv3d) or seq[last].unary != 'none':
            return None
        return cls(block, tuple(seq[:last]), seq[last])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.conv1(x)
        for module in self._body:
            out = module(out)
        return self._last(out, residual=shortcut)


def fuse_onednn(model: nn.Module, run: Callable[[], Any]) -> Dict[str, int]:
    """Rewrite ``model`` in place for oneDNN's fused convolutions (see the module docstring).

    Run after BatchNorm folding (a BatchNorm between a conv and its ReLU prevents the fusion).
    ``run()`` must run ``model`` once (any input size); it is used to find the conv -> ReLU pairs.
    Where :func:`onednn_fusion_available` says no, nothing is changed.

    Args:
        model: Module to change in place.
        run: Runs ``model`` once.

    Returns:
        Counts: ``convs`` (convolutions now run by oneDNN), ``relu`` (ReLUs merged into a conv) and
        ``residual`` (residual blocks whose add + ReLU became a post-op).
    """
    counts = {'convs': 0, 'relu': 0, 'residual': 0}
    if not onednn_fusion_available()[0]:
        return counts
    with torch.no_grad():
        modules = dict(model.named_modules())
        relu_of = {conv: relu for conv, relu in trace_single_consumers(model, run, (nn.ReLU,))
                   if OneDnnConv3d.supported(modules[conv])}
        for name, module in list(model.named_modules()):
            if OneDnnConv3d.supported(module):
                fused = name in relu_of
                set_submodule(model, name, OneDnnConv3d.from_conv(module, 'relu' if fused else 'none'))
                if fused:
                    set_submodule(model, relu_of[name], nn.Identity())
                counts['convs'] += 1
                counts['relu'] += fused
        for name, module in list(model.named_modules()):
            block = FusedBasicBlock.from_block(module)
            if block is not None:
                set_submodule(model, name, block)
                counts['residual'] += 1
    _logger.debug('fuse_onednn: %s', counts)
    return counts
