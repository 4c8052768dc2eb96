"""``optimize_for_inference``: an eval-mode copy of a model that follows its device's plan, checked and cached."""
from __future__ import annotations

import copy
import logging
import threading
import weakref
from dataclasses import replace
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from fima_models._utils import autocast_dtype, describe_error, to_channels_last_3d
from fima_models.inference.fusion import fuse_onednn, onednn_fusion_available
from fima_models.inference.plan import InferencePlan, plan_inference
from fima_models.inference.rewrites import factorise_convs, fold_traced
from fima_models.models import pretrained_cfg_dict

__all__ = ['optimize_for_inference', 'output_mismatch']

_logger = logging.getLogger(__name__)

#: Attribute set on every module returned by :func:`optimize_for_inference`.
_PLAN_ATTR = 'inference_plan'


def output_mismatch(out: Any, ref: Any) -> float:
    """``max |out - ref| / max |ref|`` over all tensors of two matching outputs (inf if they differ in shape)."""
    outs = [out] if isinstance(out, torch.Tensor) else list(out)
    refs = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    if len(outs) != len(refs):
        return float('inf')
    worst = 0.0
    for o, r in zip(outs, refs):
        if o.shape != r.shape:
            return float('inf')
        o, r = o.detach().float(), r.detach().float()
        scale = r.abs().max().item() if r.numel() else 0.0
        diff = (o - r).abs().max().item() if r.numel() else 0.0
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device('cpu')


def _default_shape(model: nn.Module) -> Tuple[int, ...]:
    size = pretrained_cfg_dict(model).get('input_size')
    if size is not None and len(size) == 4:
        return (1, *size)
    return (1, getattr(model, 'in_chans', 3), 16, 112, 112)


def _to_dtype(obj: Any, dtype: torch.dtype, channels_last: bool) -> Any:
    """``obj`` with every floating tensor (also inside lists/tuples) in ``dtype``, 5-D ones channels-last if asked."""
    if isinstance(obj, torch.Tensor):
        if not obj.is_floating_point():
            return obj
        layout = torch.channels_last_3d if channels_last and obj.dim() == 5 else torch.preserve_format
        return obj.to(dtype=dtype, memory_format=layout)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_dtype(o, dtype, channels_last) for o in obj)
    return obj


#: Methods of timm-style models that take clips or features and are wrapped by a non-plain plan.
_ENTRY_METHODS = ('forward', 'forward_features', 'forward_head', 'forward_intermediates')


def _wrap_entry_methods(model: nn.Module, plan: InferencePlan) -> None:
    """Wrap the model's entry methods: dtype casts at the outermost call, ``torch.compile`` of the heavy one.

    A bfloat16 plan's weights are bfloat16, so the first wrapped method a caller enters casts the
    floating inputs to bfloat16 (and channels-last-3d) once and its outputs back to float32 once;
    the methods it calls in turn (``forward`` -> ``forward_features`` -> ``forward_head``) run on
    bfloat16 tensors without further casts. With ``plan.compile`` the heavy method
    (``forward_features`` of timm-style models, else ``forward``) is compiled. Everything runs
    without autograd (a frozen compiled graph is only valid there). Nothing is wrapped for an
    eager float32 plan.
    """
    if not plan.compile and plan.precision == 'fp32':
        return
    dtype = autocast_dtype(plan.precision) or torch.float32
    heavy = 'forward_features' if callable(getattr(model, 'forward_features', None)) else 'forward'
    names = [name for name in _ENTRY_METHODS if callable(getattr(model, name, None))]
    if plan.precision == 'fp32':
        names = [heavy]  # nothing to cast: only the compiled method needs a wrapper
    depth = threading.local()

    def entry(inner: Callable[..., Any]) -> Callable[..., Any]:
        def method(*args: Any, **kwargs: Any) -> Any:
            if getattr(depth, 'level', 0):
                return inner(*args, **kwargs)
            depth.level = 1
            try:
                with torch.no_grad():
                    args = _to_dtype(args, dtype, plan.channels_last)
                    kwargs = {key: _to_dtype(value, dtype, plan.channels_last) for key, value in kwargs.items()}
                    return _to_dtype(inner(*args, **kwargs), torch.float32, False)
            finally:
                depth.level = 0
        return method

    for name in names:
        inner = getattr(model, name)
        if plan.compile and name == heavy:
            inner = torch.compile(inner, dynamic=False, options={'freezing': plan.freeze})
        # an instance attribute shadows the method, so forward() -> forward_features() uses it too
        object.__setattr__(model, name, entry(inner))


_CACHE: 'weakref.WeakKeyDictionary[nn.Module, Dict[Tuple[Any, ...], nn.Module]]' = weakref.WeakKeyDictionary()


def _state_fingerprint(model: nn.Module) -> Tuple[Tuple[str, int, int, Tuple[int, ...]], ...]:
    """Identity of every parameter and buffer and its in-place version counter.

    Training steps, ``load_state_dict``, ``copy_`` and ``reset_classifier`` all change it, so a
    cached optimised copy is never served for weights it was not made from.
    """
    return tuple((name, t.data_ptr(), t._version, tuple(t.shape))
                 for name, t in model.state_dict(keep_vars=True).items())


def _arch_name(model: nn.Module) -> str:
    arch = pretrained_cfg_dict(model).get('architecture')
    return arch or getattr(model, 'model_name', None) or type(model).__name__


def optimize_for_inference(
        model: nn.Module,
        device: Union[str, torch.device, None] = None,
        example_shape: Optional[Sequence[int]] = None,
        compile: Optional[bool] = None,
        precision: str = 'fp32',
        plan: Optional[InferencePlan] = None,
        verify: bool = True,
) -> nn.Module:
    """Return a faster eval-mode copy of ``model`` with the same forward outputs.

    The copy keeps ``model``'s class and methods (``forward``, ``forward_features``,
    ``forward_intermediates`` ...), its parameters do not require grad, and it carries the plan it
    follows as ``.inference_plan``. ``model`` itself is not changed. Calling this again with the same
    model (and unchanged weights), shape, device and options returns the cached copy (compiled once
    per process); calling it on an optimised model returns that model.

    Args:
        model: Any ``nn.Module`` taking one ``(N, C, T, H, W)`` float tensor.
        device: Where to run; ``None`` keeps the model's current device.
        example_shape: The input shape that will be used, for the check and (when compiling) the
            compiled specialisation; ``None`` uses the model's ``pretrained_cfg['input_size']`` with
            batch 1.
        compile: Force ``torch.compile`` on/off; ``None`` follows the device rule.
        precision: ``'fp32'``, ``'bf16'`` or ``'auto'`` (see :func:`plan_inference`).
        plan: Use this plan instead of :func:`plan_inference`'s.
        verify: Compare the result with the plain float32 model on a random ``example_shape`` input
            (one extra forward of each); on a mismatch beyond the plan's tolerance, log a warning and
            return the plain eval-mode model instead.

    Returns:
        The optimised module (inputs must be on its device).
    """
    if getattr(model, _PLAN_ATTR, None) is not None:
        return model
    device = torch.device(device) if device is not None else _model_device(model)
    if plan is None:
        plan = plan_inference(device, compile=compile, precision=precision)
    if plan.fuse_onednn and not onednn_fusion_available()[0]:  # a given plan on a torch without the ops
        plan = replace(plan, fuse_onednn=False, factorise_convs=True,
                       reasons=plan.reasons + (f'no onednn fusion: {onednn_fusion_available()[1]}',))
    shape = tuple(int(s) for s in (example_shape if example_shape is not None else _default_shape(model)))
    key = (shape, str(device), replace(plan, reasons=()), _state_fingerprint(model))
    per_model = _CACHE.setdefault(model, {})
    if key in per_model:
        return per_model[key]

    fast = copy.deepcopy(model).eval().to(device)
    fast.requires_grad_(False)
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(shape, generator=generator).to(device)
    reference: Any = None

    def run_reference() -> None:
        nonlocal reference
        reference = fast(example)

    folded = len(fold_traced(fast, run_reference)) if plan.fold_batchnorm else 0
    if verify and reference is None:
        with torch.no_grad():
            run_reference()
    fused = fuse_onednn(fast, lambda: fast(example[:1])) if plan.fuse_onednn else {}
    replaced = factorise_convs(fast) if plan.factorise_convs else 0
    if plan.precision != 'fp32':
        fast.to(autocast_dtype(plan.precision))  # weights stored in bf16: no per-layer casts
    if plan.channels_last:
        to_channels_last_3d(fast)
    _wrap_entry_methods(fast, plan)
    object.__setattr__(fast, _PLAN_ATTR, plan)
    _logger.info('optimize_for_inference(%s, %s): %s; %d BatchNorm folded, %d convs as 2-D%s',
                 _arch_name(model), shape, plan.describe(), folded, replaced,
                 ', oneDNN: {convs} convs, {relu} with ReLU, {residual} residual adds'.format(**fused) if fused else '')

    if verify:
        try:
            with torch.no_grad():
                output = fast(example)
        except Exception as exc:  # noqa: BLE001 - inductor needs a C++ toolchain; eager always runs
            if not plan.compile:
                raise
            _logger.warning('optimize_for_inference(%s): torch.compile failed (%s); using the eager plan',
                            _arch_name(model), describe_error(exc))
            eager = plan_inference(device, compile=False, precision=plan.precision)
            fast = optimize_for_inference(model, device, shape, plan=eager, verify=verify)
            per_model[key] = fast
            return fast
        mismatch = output_mismatch(output, reference)
        if not mismatch <= plan.tolerance:
            _logger.warning(
                'optimize_for_inference(%s): outputs differ from float32 by %.3g (relative, > %.1g); '
                'using the plain model instead', _arch_name(model), mismatch, plan.tolerance)
            fast = copy.deepcopy(model).eval().to(device)
            fast.requires_grad_(False)
            fallback = InferencePlan(device=str(device), fold_batchnorm=False,
                                     reasons=(f'fallback: optimised outputs differed by {mismatch:.3g}',))
            object.__setattr__(fast, _PLAN_ATTR, fallback)
        else:
            _logger.debug('optimize_for_inference: relative difference to fp32 %.3g', mismatch)
    per_model[key] = fast
    return fast
