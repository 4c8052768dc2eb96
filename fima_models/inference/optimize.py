"""``optimize_for_inference``: an eval-mode copy of a model that follows its device's plan, checked and cached."""
from __future__ import annotations

import copy
import logging
import weakref
from dataclasses import replace
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from fima_models._utils import autocast_dtype, to_channels_last_3d
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


def _float_outputs(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, (list, tuple)):
        return type(out)(_float_outputs(o) for o in out)
    return out


def _wrap_heavy_method(model: nn.Module, plan: InferencePlan) -> None:
    """Put ``torch.compile`` and/or autocast around ``forward_features`` (timm models) or ``forward``.

    The wrapper runs without autograd (a frozen compiled graph is only valid there) and returns
    float32 outputs. Nothing is wrapped for an eager float32 plan.
    """
    if not plan.compile and plan.precision == 'fp32':
        return
    name = 'forward_features' if callable(getattr(model, 'forward_features', None)) else 'forward'
    inner = getattr(model, name)
    if plan.compile:
        inner = torch.compile(inner, dynamic=False, options={'freezing': plan.freeze})
    device_type, dtype = torch.device(plan.device).type, autocast_dtype(plan.precision) or torch.float32
    autocast = plan.precision != 'fp32'

    def heavy(*args: Any, **kwargs: Any) -> Any:
        with torch.no_grad(), torch.autocast(device_type=device_type, dtype=dtype, enabled=autocast):
            return _float_outputs(inner(*args, **kwargs))

    # an instance attribute shadows the method, so forward() -> forward_features() uses it too
    object.__setattr__(model, name, heavy)


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
    replaced = factorise_convs(fast) if plan.factorise_convs else 0
    if plan.channels_last:
        to_channels_last_3d(fast)
    _wrap_heavy_method(fast, plan)
    object.__setattr__(fast, _PLAN_ATTR, plan)
    _logger.info('optimize_for_inference(%s, %s): %s; %d BatchNorm folded, %d convs as 2-D',
                 _arch_name(model), shape, plan.describe(), folded, replaced)

    if verify:
        with torch.no_grad():
            mismatch = output_mismatch(fast(example), reference)
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
