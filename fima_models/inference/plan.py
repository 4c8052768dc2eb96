"""The plan of the fast inference path (what is done on which device, and why) and the allocator setting.

The rule is fixed, derived from the measurements in ``benchmarks/models.py`` (see
``docs/performance.md``); :func:`fima_models.inference.optimize_for_inference` follows it.
"""
import ctypes
import ctypes.util
import logging
import platform
from dataclasses import dataclass, field
from typing import Optional, Tuple, Union

import torch

from fima_models._utils import resolve_precision
from fima_models.inference.fusion import onednn_fusion_available

__all__ = [
    'InferencePlan', 'plan_inference', 'configure_allocator', 'allocator_configured', 'FP32_TOLERANCE',
    'BF16_TOLERANCE',
]

_logger = logging.getLogger(__name__)

#: Largest ``max |optimized - fp32| / max |fp32|`` accepted for a float32 plan.
FP32_TOLERANCE = 1e-4
#: What the oneDNN fusion does and measured in the eager bf16 plan (docs/performance.md).
_FUSION_GAIN = ('3-D convs with prepacked weights, ReLU and residual add as oneDNN post-ops '
                '(resnets 1.06-1.2x the unfused eager bf16 plan at low load, up to 1.7x loaded)')

#: The same bound for a bfloat16 plan (bfloat16 weights and activations; measured <= 1e-2 on the zoo).
BF16_TOLERANCE = 5e-2


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
        fuse_onednn: Run convolutions through oneDNN with prepacked weights and ReLU / residual add
            as post-ops (:func:`~fima_models.inference.fusion.fuse_onednn`; eager bf16 CPU plans).
        compile: Wrap the heavy forward in ``torch.compile`` (inductor).
        freeze: Use inductor freezing (weights as constants, conv/BN/activation fusion) when compiling.
        precision: ``'fp32'`` or ``'bf16'``: a bfloat16 plan stores the (folded) weights in bfloat16
            and runs every layer on bfloat16 activations, casting inputs once at entry and outputs
            back to float32 once (no autocast, so no per-layer casts) - only on hardware that
            computes bfloat16 natively.
        allocator: Whether a process running this plan should call :func:`configure_allocator`
            (a command-line tool may; a library call never does).
        reasons: One line per decision, for logs and ``fima-models`` output.
    """
    device: str
    fold_batchnorm: bool = True
    channels_last: bool = False
    factorise_convs: bool = False
    fuse_onednn: bool = False
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
            ('conv-as-2d', self.factorise_convs), ('onednn-fused', self.fuse_onednn),
            ('compile+freeze' if self.freeze else 'compile', self.compile)) if on]
        precision = 'bf16 weights' if self.precision == 'bf16' else self.precision
        return f'{self.device}: {", ".join(parts + [precision])}'


def _glibc() -> bool:
    return platform.system() == 'Linux' and platform.libc_ver()[0] == 'glibc'


def plan_inference(
        device: Union[str, torch.device, None] = None,
        compile: Optional[bool] = None,
        precision: str = 'fp32',
) -> InferencePlan:
    """The fast-inference plan for ``device`` (the rule measured by ``benchmarks/models.py``).

    CPU: BatchNorm folding and channels-last-3d (1.6x on R(2+1)D-18, 2.8x on S3D at batch 8), and
    in float32 factorised convs as 2-D convs (level with channels-last 3-D convs); in float32
    ``torch.compile`` is off unless asked for (on CPU it was slower than the eager fast path, after
    ~40 s of compile). In bfloat16 the eager plan runs oneDNN's fused convolutions instead of the
    2-D rewrite where this torch has them (:func:`~fima_models.inference.fusion.fuse_onednn`:
    prepacked weights, ReLU and residual add as post-ops; on the ResNets 1.06-1.2x the unfused
    eager bf16 plan at low load, up to 1.7x on a loaded machine, and level with or faster than
    compiling) and compile stays opt-in (compiled S3D / I3D ran 0.1-0.2x the
    eager plan). The allocator setting is recommended on Linux/glibc. CUDA: BatchNorm folding and
    channels-last-3d; cuDNN runs the factorised convs itself. Other devices: BatchNorm folding only.

    Args:
        device: Target device; ``None`` is the CPU.
        compile: ``True``/``False`` to force ``torch.compile`` on or off, ``None`` for the rule.
        precision: One of :data:`~fima_models._utils.PRECISIONS`: ``'fp32'`` (default), ``'bf16'``
            (raises where it would be emulated) or ``'auto'`` (bfloat16 only where the hardware
            computes it natively); see :func:`fima_models._utils.resolve_precision`.

    Raises:
        ValueError: Unknown precision, or bfloat16 on hardware without native support.
    """
    device = torch.device(device if device is not None else 'cpu')
    prec, prec_reason = resolve_precision(precision, device)
    reasons = ['fold-bn: removes one full pass over every conv output, exact up to rounding']
    if device.type == 'cpu':
        reasons.append('channels-last-3d: oneDNN convolutions run without NCDHW<->blocked reorders')
        bf16 = prec == 'bf16'
        use_compile = bool(compile)
        reasons.append('compile: asked for' if compile else
                       'no compile: asked' if compile is False else
                       'no compile: in bf16 the fused eager plan is as fast or faster (r2plus1d_18 / r3d_18 / '
                       'mc3_18) and compiled s3d / i3d run 0.1-0.2x the eager plan' if bf16 else
                       'no compile: on CPU the eager fast path is as fast and needs no compile time')
        # eager bf16: oneDNN's fused 3-D convs (prepacked weights, ReLU / residual add as post-ops);
        # a compiled bf16 graph runs 3-D channels-last convs (inductor's oneDNN fusions match them);
        # eager fp32 runs factorised convs as 2-D convs (level with or faster than 3-D)
        fuse, fuse_reason = (onednn_fusion_available() if bf16 and not use_compile else (False, ''))
        factorise = not (bf16 and (use_compile or fuse))
        if fuse:
            reasons.append(f'onednn-fused: {_FUSION_GAIN} ({fuse_reason})')
        elif fuse_reason:
            reasons.append(f'no onednn fusion: {fuse_reason}')
        reasons.append('conv-as-2d: (1,k,k) and (k,1,1) Conv3d run as zero-copy 2-D convs on oneDNN 2-D kernels '
                       '(measured level with channels-last 3-D convs at batch 8)' if factorise else
                       'no conv-as-2d: the compiled graph fuses 3-D channels-last convs' if use_compile else
                       'no conv-as-2d: the fused oneDNN convs run 3-D (as fast or faster per layer in bf16)')
        allocator = _glibc()
        reasons.append('allocator: keep freed activation buffers (glibc), avoids page faults' if allocator else
                       'allocator: not glibc, nothing to configure')
        return InferencePlan(
            device=str(device), fold_batchnorm=True, channels_last=True, factorise_convs=factorise,
            fuse_onednn=fuse, compile=use_compile, freeze=use_compile, precision=prec, allocator=allocator,
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
        _logger.debug('allocator: not Linux/glibc, left unchanged')
        return False
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    ok = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))
    _ALLOCATOR_STATE['configured'] = ok
    if ok:
        _logger.info('allocator: glibc mmap disabled for large blocks, trim threshold %d bytes', trim_threshold)
    else:
        _logger.warning('allocator: mallopt refused the settings; allocator left unchanged')
    return ok


def allocator_configured() -> bool:
    """Whether :func:`configure_allocator` has been applied in this process."""
    return _ALLOCATOR_STATE['configured']
