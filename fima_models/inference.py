"""The fast inference path: :func:`optimize_for_inference` and the :class:`InferencePlan` it follows.

``optimize_for_inference(model, device=..., example_shape=...)`` returns an eval-mode copy of any
``nn.Module`` (a fima_models backbone with or without classifier, or any other video network) that
computes the same outputs faster. What it does is decided per device by :func:`plan_inference`, a
fixed rule derived from the measurements in ``benchmarks/models.py`` (see ``docs/performance.md``):

* **BatchNorm folding** (every device): an eval-mode BatchNorm that directly follows a convolution
  is merged into the convolution's weight and bias (:func:`fold_batchnorm`). The pairs are found
  by watching one forward pass, so any module structure works, and the result is checked against
  the unfolded model.
* **channels-last-3d** (CPU and CUDA): weights, and therefore activations, in the
  ``torch.channels_last_3d`` memory format, where oneDNN / cuDNN run without layout reorders.
* **factorised convolutions as 2-D convolutions** (CPU): a ``Conv3d`` whose kernel is ``(1, kh, kw)``
  (spatial) or ``(kt, 1, 1)`` (temporal) becomes a :class:`Conv3dAs2d`. On a channels-last-3d
  activation both are zero-copy views of a 2-D convolution run by oneDNN's 2-D kernels; at batch 8
  it measured level with oneDNN's channels-last 3-D path (see ``docs/performance.md``).
* **torch.compile** (opt-in, or by rule where it measured faster), with inductor freezing so
  weights become constants and conv + activation fuse; compiled models are cached per
  (model, shape, device, plan), so the compile cost is paid once per process.
* **precision**: float32 unless asked otherwise; ``precision='auto'`` picks bfloat16 autocast only
  where the hardware computes bfloat16 natively (never on CPUs that would emulate it).
* **allocator** (process-wide, for command-line tools): :func:`configure_allocator` stops glibc from
  returning large activation buffers to the OS after every op, which otherwise costs millions of
  minor page faults per forward on CPU. A library call never changes it; the plan only says
  whether it is recommended.

Outputs match plain float32 within :data:`FP32_TOLERANCE` (``max |opt - ref| <= tol * max |ref|``),
:data:`BF16_TOLERANCE` for bfloat16 plans; :func:`optimize_for_inference` verifies that on its
example input and falls back to the plain model (with a warning) if it ever does not hold.
"""
from __future__ import annotations

import copy
import ctypes
import ctypes.util
import logging
import platform
import weakref
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    'InferencePlan', 'plan_inference', 'optimize_for_inference', 'fold_batchnorm', 'factorise_convs',
    'Conv3dAs2d', 'configure_allocator', 'allocator_configured', 'output_mismatch',
    'FP32_TOLERANCE', 'BF16_TOLERANCE', 'PRECISIONS',
]

_LOGGER = logging.getLogger(__name__)

#: Largest ``max |optimized - fp32| / max |fp32|`` accepted for a float32 plan.
FP32_TOLERANCE = 1e-4
#: The same bound for a bfloat16-autocast plan.
BF16_TOLERANCE = 5e-2
#: Accepted values of ``precision``.
PRECISIONS = ('fp32', 'bf16', 'auto')

_PRECISION_DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16}
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: Attribute set on every module returned by :func:`optimize_for_inference`.
_PLAN_ATTR = 'inference_plan'


# ---------------------------------------------------------------------------------------------
# the plan
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InferencePlan:
    """What :func:`optimize_for_inference` does on one device, and why.

    Attributes:
        device: Target device, e.g. ``'cpu'`` or ``'cuda:0'``.
        fold_batchnorm: Merge eval BatchNorm layers into the preceding convolutions.
        channels_last: Run in the ``torch.channels_last_3d`` memory format.
        factorise_convs: Run ``(1,k,k)`` / ``(k,1,1)`` ``Conv3d`` layers as 2-D convolutions on views.
        compile: Wrap the heavy forward in ``torch.compile`` (inductor).
        freeze: Use inductor freezing (weights as constants, conv/BN/activation fusion) when compiling.
        precision: ``'fp32'`` or ``'bf16'`` (autocast) - bfloat16 only on hardware that has it.
        allocator: Whether a process running this plan should call :func:`configure_allocator`
            (a command-line tool may; a library call never does).
        reasons: One line per decision, for logs and ``fima-models`` output.
    """
    device: str
    fold_batchnorm: bool = True
    channels_last: bool = False
    factorise_convs: bool = False
    compile: bool = False
    freeze: bool = False
    precision: str = 'fp32'
    allocator: bool = False
    reasons: Tuple[str, ...] = field(default=(), compare=False)

    @property
    def tolerance(self) -> float:
        """Relative output tolerance of this plan against plain float32."""
        return FP32_TOLERANCE if self.precision == 'fp32' else BF16_TOLERANCE

    def describe(self) -> str:
        """One-line summary, e.g. ``cpu: fold-bn, channels-last-3d, conv-as-2d, fp32``."""
        parts = [name for name, on in (
            ('fold-bn', self.fold_batchnorm), ('channels-last-3d', self.channels_last),
            ('conv-as-2d', self.factorise_convs),
            ('compile+freeze' if self.freeze else 'compile', self.compile)) if on]
        return f'{self.device}: {", ".join(parts + [self.precision])}'


def _native_bf16(device: torch.device) -> bool:
    if device.type == 'cuda':
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == 'cpu':
        # imported here: fima_models.features builds on this module
        from fima_models.features import cpu_has_native_bf16
        return cpu_has_native_bf16()
    return False


def _resolve_precision(precision: str, device: torch.device) -> Tuple[str, str]:
    if precision not in PRECISIONS:
        raise ValueError(f'unknown precision {precision!r}; choose one of {", ".join(PRECISIONS)}')
    if precision == 'fp32':
        return 'fp32', 'fp32: asked for (default)'
    native = _native_bf16(device)
    if precision == 'auto':
        if native:
            return 'bf16', f'bf16 autocast: {device.type} computes bfloat16 natively'
        return 'fp32', f'fp32: {device.type} has no native bfloat16 (emulated bf16 is far slower)'
    if not native:
        raise ValueError(
            f'precision bf16 was asked for, but this {device.type} has no native bfloat16 '
            '(no avx512_bf16 / amx_bf16 on CPU, or a pre-Ampere GPU): it would be emulated and much '
            'slower than fp32. Use precision="fp32" or "auto".')
    return 'bf16', 'bf16 autocast: asked for, hardware has it'


def _glibc() -> bool:
    return platform.system() == 'Linux' and platform.libc_ver()[0] == 'glibc'


def plan_inference(
        device: Union[str, torch.device, None] = None,
        compile: Optional[bool] = None,
        precision: str = 'fp32',
) -> InferencePlan:
    """The fast-inference plan for ``device`` (the rule measured by ``benchmarks/models.py``).

    CPU: BatchNorm folding and channels-last-3d (1.6x on R(2+1)D-18, 2.8x on S3D at batch 8), and
    factorised convs as 2-D convs (level with channels-last 3-D convs); ``torch.compile`` is off
    unless asked for (on CPU it was slower than the eager fast path, after ~40 s of compile); the
    allocator setting is recommended on Linux/glibc. CUDA: BatchNorm folding and channels-last-3d; cuDNN runs the
    factorised convs itself. Other devices: BatchNorm folding only.

    Args:
        device: Target device; ``None`` is the CPU.
        compile: ``True``/``False`` to force ``torch.compile`` on or off, ``None`` for the rule.
        precision: ``'fp32'`` (default), ``'bf16'`` (raises where it would be emulated) or ``'auto'``
            (bfloat16 only where the hardware computes it natively).

    Raises:
        ValueError: Unknown precision, or bfloat16 on hardware without native support.
    """
    device = torch.device(device if device is not None else 'cpu')
    prec, prec_reason = _resolve_precision(precision, device)
    reasons = ['fold-bn: removes one full pass over every conv output, exact up to rounding']
    if device.type == 'cpu':
        reasons += [
            'channels-last-3d: oneDNN convolutions run without NCDHW<->blocked reorders',
            'conv-as-2d: (1,k,k) and (k,1,1) Conv3d run as zero-copy 2-D convs on oneDNN 2-D kernels '
            '(measured level with channels-last 3-D convs at batch 8)',
        ]
        use_compile = bool(compile)
        reasons.append('compile: asked for' if compile else
                       'no compile: asked' if compile is False else
                       'no compile: on CPU the eager fast path is as fast and needs no compile time')
        allocator = _glibc()
        reasons.append('allocator: keep freed activation buffers (glibc), avoids page faults' if allocator else
                       'allocator: not glibc, nothing to configure')
        return InferencePlan(
            device=str(device), fold_batchnorm=True, channels_last=True, factorise_convs=True,
            compile=use_compile, freeze=use_compile, precision=prec, allocator=allocator,
            reasons=tuple(reasons + [prec_reason]))
    if device.type == 'cuda':
        reasons.append('channels-last-3d: cuDNN NDHWC kernels, no layout transposes')
        use_compile = bool(compile)
        reasons.append('compile: asked for' if compile else 'no compile: not asked for (one-off compile time)')
        return InferencePlan(
            device=str(device), fold_batchnorm=True, channels_last=True, factorise_convs=False,
            compile=use_compile, freeze=use_compile, precision=prec, allocator=False,
            reasons=tuple(reasons + [prec_reason]))
    use_compile = bool(compile)
    reasons.append(f'{device.type}: no measured rule, only exact rewrites')
    return InferencePlan(device=str(device), fold_batchnorm=True, compile=use_compile, freeze=False,
                         precision=prec, reasons=tuple(reasons + [prec_reason]))


# ---------------------------------------------------------------------------------------------
# allocator
# ---------------------------------------------------------------------------------------------
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_ALLOCATOR_STATE = {'configured': False}


def configure_allocator(trim_threshold: int = 1 << 40) -> bool:
    """Make glibc keep freed memory in the process instead of returning it to the OS.

    PyTorch frees each large activation after use; glibc serves such blocks with ``mmap`` and
    unmaps them on free, so the next op's buffer faults in fresh zeroed pages (about 1.7 million
    minor faults per R(2+1)D-18 forward at batch 8, 16x112). ``mallopt(M_MMAP_MAX, 0)`` serves them
    from the heap and a huge ``M_TRIM_THRESHOLD`` keeps the heap's top; the process then holds on to
    its peak memory. This is process-wide: call it from a command-line tool, not from a library.
    Same effect as ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<huge>`` in the environment.

    Args:
        trim_threshold: Free bytes at the top of the heap before glibc trims it.

    Returns:
        ``True`` when applied (Linux with glibc), ``False`` elsewhere.
    """
    if not _glibc():
        _LOGGER.debug('allocator: not Linux/glibc, left unchanged')
        return False
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    ok = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))
    _ALLOCATOR_STATE['configured'] = ok
    if ok:
        _LOGGER.info('allocator: glibc mmap disabled for large blocks, trim threshold %d bytes', trim_threshold)
    else:
        _LOGGER.warning('allocator: mallopt refused the settings; allocator left unchanged')
    return ok


def allocator_configured() -> bool:
    """Whether :func:`configure_allocator` has been applied in this process."""
    return _ALLOCATOR_STATE['configured']


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


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition('.')
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _trace_conv_bn_pairs(model: nn.Module, run: Callable[[], Any]) -> List[Tuple[str, str]]:
    """Run ``run()`` once and return ``(conv, bn)`` names where the BN's input is exactly the conv's
    output and each was called once (consumers outside modules are caught by the output check)."""
    conv_out: Dict[int, str] = {}
    keep_alive: List[torch.Tensor] = []
    calls: Dict[str, int] = {}
    bn_input: Dict[str, Optional[str]] = {}
    consumers: Dict[str, int] = {}
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

    def leaf_pre_hook(name: str, is_bn: bool) -> Callable[..., None]:
        def hook(module: nn.Module, args: Tuple[Any, ...]) -> None:
            if is_bn:
                count(name)
            for arg in args:
                if isinstance(arg, torch.Tensor) and id(arg) in conv_out:
                    source = conv_out[id(arg)]
                    consumers[source] = consumers.get(source, 0) + 1
                    if is_bn:
                        bn_input[name] = source
        return hook

    for name, module in model.named_modules():
        if isinstance(module, _CONV_TYPES):
            handles.append(module.register_forward_hook(conv_hook(name)))
        if isinstance(module, _BN_TYPES) or not any(True for _ in module.children()):
            handles.append(module.register_forward_pre_hook(leaf_pre_hook(name, isinstance(module, _BN_TYPES))))
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
        keep_alive.clear()
    modules = dict(model.named_modules())
    pairs = []
    for bn_name, conv_name in bn_input.items():
        bn, conv = modules[bn_name], modules[conv_name]
        if (conv_name is not None and calls.get(bn_name) == 1 and calls.get(conv_name) == 1
                and consumers.get(conv_name) == 1 and not bn.training and bn.running_mean is not None
                and conv.out_channels == bn.num_features and not getattr(conv, 'transposed', False)):
            pairs.append((conv_name, bn_name))
    return pairs


def _fold_traced(model: nn.Module, run: Callable[[], Any]) -> List[Tuple[str, str]]:
    """Find conv -> BatchNorm pairs while ``run()`` runs ``model`` once, then fold them in place."""
    with torch.no_grad():
        pairs = _trace_conv_bn_pairs(model, run)
        modules = dict(model.named_modules())
        for conv_name, bn_name in pairs:
            _fold_pair(modules[conv_name], modules[bn_name])
            _set_submodule(model, bn_name, nn.Identity())
    _LOGGER.debug('fold_batchnorm: folded %d BatchNorm layers', len(pairs))
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
    return _fold_traced(model, lambda: model(example_input))


def _to_channels_last_3d(model: nn.Module) -> None:
    """Store every 5-D parameter and buffer in the ``channels_last_3d`` format (others unchanged)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.ndim == 5:
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last_3d)


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
        (pt, ph, pw), (dt, dh, dw) = conv.padding, conv.dilation
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
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                  conv.dilation, conv.groups, bias=False, device='meta')
        new.weight = conv.weight
        new.bias = conv.bias
        new.mode = mode
        new.train(conv.training)
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
            _set_submodule(model, name, Conv3dAs2d.from_conv(module))
            replaced += 1
    return replaced


# ---------------------------------------------------------------------------------------------
# optimize_for_inference
# ---------------------------------------------------------------------------------------------
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
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    size = cfg.get('input_size') if isinstance(cfg, dict) else getattr(cfg, 'input_size', None)
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
    device_type, dtype = torch.device(plan.device).type, _PRECISION_DTYPES[plan.precision]
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
    cfg = getattr(model, 'pretrained_cfg', None)
    arch = cfg.get('architecture') if isinstance(cfg, dict) else None
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

    folded = len(_fold_traced(fast, run_reference)) if plan.fold_batchnorm else 0
    if verify and reference is None:
        with torch.no_grad():
            run_reference()
    replaced = factorise_convs(fast) if plan.factorise_convs else 0
    if plan.channels_last:
        _to_channels_last_3d(fast)
    _wrap_heavy_method(fast, plan)
    object.__setattr__(fast, _PLAN_ATTR, plan)
    _LOGGER.info('optimize_for_inference(%s, %s): %s; %d BatchNorm folded, %d convs as 2-D',
                 _arch_name(model), shape, plan.describe(), folded, replaced)

    if verify:
        with torch.no_grad():
            mismatch = output_mismatch(fast(example), reference)
        if not mismatch <= plan.tolerance:
            _LOGGER.warning(
                'optimize_for_inference(%s): outputs differ from float32 by %.3g (relative, > %.1g); '
                'using the plain model instead', _arch_name(model), mismatch, plan.tolerance)
            fast = copy.deepcopy(model).eval().to(device)
            fast.requires_grad_(False)
            fallback = InferencePlan(device=str(device), fold_batchnorm=False,
                                     reasons=(f'fallback: optimised outputs differed by {mismatch:.3g}',))
            object.__setattr__(fast, _PLAN_ATTR, fallback)
        else:
            _LOGGER.debug('optimize_for_inference: relative difference to fp32 %.3g', mismatch)
    per_model[key] = fast
    return fast
