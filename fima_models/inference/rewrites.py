"""Exact rewrites of a module for inference: BatchNorm folding and factorised 3-D convs as 2-D convs.

Both change a module in place and keep its outputs (up to float rounding); they are the
building blocks of :func:`fima_models.inference.optimize_for_inference`.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['fold_batchnorm', 'fold_traced', 'Conv3dAs2d', 'factorise_convs']

_logger = logging.getLogger(__name__)

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


# ---------------------------------------------------------------------------------------------
# batch-norm folding
# ---------------------------------------------------------------------------------------------
def _fold_pair(conv: nn.Module, bn: nn.Module) -> None:
    """Merge eval-mode ``bn`` into ``conv`` (in place): ``W' = W * s``, ``b' = (b - mean) * s + beta``."""
    weight = conv.weight.detach().double()
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(mean)
    scale = gamma * torch.rsqrt(var + bn.eps)
    new_weight = weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))
    new_bias = (bias - mean) * scale + beta
    dtype = conv.weight.dtype
    conv.weight = nn.Parameter(new_weight.to(dtype).contiguous(memory_format=_memory_format_of(conv.weight)),
                               requires_grad=False)
    conv.bias = nn.Parameter(new_bias.to(dtype), requires_grad=False)


def _memory_format_of(t: torch.Tensor) -> torch.memory_format:
    if t.ndim == 5 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    if t.ndim == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition('.')
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def conv3d_sharing_parameters(cls: type, conv: nn.Conv3d) -> Any:
    """A ``cls`` (an ``nn.Conv3d`` subclass) with ``conv``'s hyper-parameters, parameters and mode."""
    new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
              conv.dilation, conv.groups, bias=False, device='meta')
    new.weight = conv.weight
    new.bias = conv.bias
    new.train(conv.training)
    return new


def trace_single_consumers(model: nn.Module, run: Callable[[], Any],
                           consumer_types: Tuple[type, ...]) -> List[Tuple[str, str]]:
    """Run ``run()`` once and return ``(conv, consumer)`` names where a module of ``consumer_types`` reads
    exactly a convolution's output, both are called once, and no other module reads that output.

    ``nn.Identity`` (a folded BatchNorm) passes the tensor on without reading it; a module that
    returns its input tensor changed in place (``ReLU(inplace=True)``) ends the conv output's life,
    so the next module reads the consumer's result, not the conv's. Readers outside modules (a
    functional op) are invisible here: callers check the result against the unchanged model.
    """
    conv_out: Dict[int, str] = {}
    keep_alive: List[torch.Tensor] = []
    calls: Dict[str, int] = {}
    consumer_input: Dict[str, str] = {}
    readers: Dict[str, int] = {}
    handles = []

    def count(name: str) -> None:
        calls[name] = calls.get(name, 0) + 1

    def conv_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Tuple[Any, ...], output: Any) -> None:
            count(name)
            if isinstance(output, torch.Tensor):
                conv_out[id(output)] = name
                keep_alive.append(output)
        return hook

    def leaf_pre_hook(name: str, is_consumer: bool) -> Callable[..., None]:
        def hook(module: nn.Module, args: Tuple[Any, ...]) -> None:
            if is_consumer:
                count(name)
            for arg in args:
                if isinstance(arg, torch.Tensor) and id(arg) in conv_out:
                    source = conv_out[id(arg)]
                    readers[source] = readers.get(source, 0) + 1
                    if is_consumer:
                        consumer_input[name] = source
        return hook

    def leaf_post_hook(module: nn.Module, args: Tuple[Any, ...], output: Any) -> None:
        if isinstance(output, torch.Tensor):
            conv_out.pop(id(output), None)  # an in-place result is this module's output now

    for name, module in model.named_modules():
        is_consumer = isinstance(module, consumer_types)
        if isinstance(module, _CONV_TYPES):
            handles.append(module.register_forward_hook(conv_hook(name)))
        elif isinstance(module, nn.Identity):
            continue
        if is_consumer or not any(True for _ in module.children()):
            handles.append(module.register_forward_pre_hook(leaf_pre_hook(name, is_consumer)))
            if not isinstance(module, _CONV_TYPES):
                handles.append(module.register_forward_hook(leaf_post_hook))
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
        keep_alive.clear()
    return [(conv_name, name) for name, conv_name in consumer_input.items()
            if calls.get(name) == 1 and calls.get(conv_name) == 1 and readers.get(conv_name) == 1]


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (not bn.training and bn.running_mean is not None and conv.out_channels == bn.num_features
            and not getattr(conv, 'transposed', False))


def fold_traced(model: nn.Module, run: Callable[[], Any]) -> List[Tuple[str, str]]:
    """Find conv -> BatchNorm pairs while ``run()`` runs ``model`` once, then fold them in place."""
    with torch.no_grad():
        modules = dict(model.named_modules())
        pairs = [(conv, bn) for conv, bn in trace_single_consumers(model, run, _BN_TYPES)
                 if _foldable(modules[conv], modules[bn])]
        for conv_name, bn_name in pairs:
            _fold_pair(modules[conv_name], modules[bn_name])
            set_submodule(model, bn_name, nn.Identity())
    _logger.debug('fold_batchnorm: folded %d BatchNorm layers', len(pairs))
    return pairs


def fold_batchnorm(model: nn.Module, example_input: torch.Tensor) -> List[Tuple[str, str]]:
    """Fold every eval-mode BatchNorm that directly consumes a convolution's output into that conv.

    The pairs are found by running ``model(example_input)`` once with hooks: a BatchNorm qualifies
    when its input is the very tensor a convolution returned, both run exactly once, and no other
    module reads the conv output. The BatchNorm is replaced by ``nn.Identity`` and the conv gains a
    bias. BatchNorm layers in training mode (batch statistics) are left alone. A consumer of the raw
    conv output outside any module (a functional op) is not visible to hooks: check the result
    (:func:`optimize_for_inference` does).

    Args:
        model: Module to change in place.
        example_input: Any input the model accepts (its batch size and shape do not matter).

    Returns:
        The folded ``(conv_name, bn_name)`` pairs.
    """
    return fold_traced(model, lambda: model(example_input))


# ---------------------------------------------------------------------------------------------
# factorised 3-D convolutions as 2-D convolutions
# ---------------------------------------------------------------------------------------------
class Conv3dAs2d(nn.Conv3d):
    """A ``Conv3d`` with a ``(1, kh, kw)`` or ``(kt, 1, 1)`` kernel, run as a 2-D convolution.

    On a ``channels_last_3d`` input ``(N, C, T, H, W)`` (memory ``N, T, H, W, C``):

    * spatial ``(1, kh, kw)``: the input is the channels-last 2-D batch ``(N*T, C, H, W)``;
    * temporal ``(kt, 1, 1)``: the input is the channels-last 2-D map ``(N, C, T, H*W)`` and the
      kernel ``(kt, 1)``;

    both are views, and so is the output, so no data is copied. Any other input layout runs the
    ordinary 3-D convolution. Parameters and state-dict keys are those of ``nn.Conv3d``.
    """

    mode: str

    @staticmethod
    def factorised_mode(conv: nn.Conv3d) -> Optional[str]:
        """``'spatial'``, ``'temporal'`` or ``None`` (not expressible as a 2-D conv on a view)."""
        if type(conv) not in (nn.Conv3d, Conv3dAs2d) or conv.padding_mode != 'zeros' \
                or isinstance(conv.padding, str):
            return None
        (kt, kh, kw), (st, sh, sw) = conv.kernel_size, conv.stride
        (pt, ph, pw) = conv.padding
        if kt == 1 and st == 1 and pt == 0:
            return 'spatial'
        if kh == kw == 1 and sh == sw == 1 and ph == pw == 0:
            return 'temporal'
        return None

    @classmethod
    def from_conv(cls, conv: nn.Conv3d) -> Conv3dAs2d:
        """A :class:`Conv3dAs2d` sharing ``conv``'s parameters (``conv`` must have a factorised mode)."""
        mode = cls.factorised_mode(conv)
        if mode is None:
            raise ValueError(f'{conv} has no (1,k,k) / (k,1,1) form with zero padding along the unit dims')
        new = conv3d_sharing_parameters(cls, conv)
        new.mode = mode
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or not x.is_contiguous(memory_format=torch.channels_last_3d):
            return super().forward(x)
        n, c, t, h, w = x.shape
        if self.mode == 'spatial':
            y = F.conv2d(x.transpose(1, 2).reshape(n * t, c, h, w), self.weight.squeeze(2), self.bias,
                         self.stride[1:], self.padding[1:], self.dilation[1:], self.groups)
            return y.view(n, t, *y.shape[1:]).transpose(1, 2)
        y = F.conv2d(x.flatten(3), self.weight[..., 0], self.bias,
                     (self.stride[0], 1), (self.padding[0], 0), (self.dilation[0], 1), self.groups)
        return y.unflatten(3, (h, w))


def factorise_convs(model: nn.Module) -> int:
    """Replace every ``(1,k,k)`` / ``(k,1,1)`` ``nn.Conv3d`` of ``model`` by a :class:`Conv3dAs2d` (in place).

    Returns:
        The number of replaced convolutions.
    """
    replaced = 0
    for name, module in list(model.named_modules()):
        if type(module) is nn.Conv3d and Conv3dAs2d.factorised_mode(module) is not None:
            set_submodule(model, name, Conv3dAs2d.from_conv(module))
            replaced += 1
    return replaced
