"""The fast inference path: :func:`optimize_for_inference` and the :class:`InferencePlan` it follows.

Modules: :mod:`.plan` (the per-device rule, tolerances, the allocator setting), :mod:`.rewrites`
(BatchNorm folding, factorised convolutions as 2-D convolutions), :mod:`.fusion` (oneDNN fused
convolutions for the eager bfloat16 CPU plan) and :mod:`.optimize` (the checked, cached optimised
copy).

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
* **precision**: float32 unless asked otherwise; ``precision='bf16'`` (or ``'auto'``, which picks it
  only where the hardware computes bfloat16 natively, never on CPUs that would emulate it; the one
  vocabulary of :func:`fima_models._utils.resolve_precision`) converts the folded model to
  bfloat16 weights: inputs are cast to bfloat16 channels-last-3d once on entry, every layer
  (convs, ReLU, adds, pooling) runs on bfloat16 tensors and the outputs come back as float32 once.
  On CPUs that run it, the eager bfloat16 plan also runs every convolution through oneDNN with a
  prepacked weight and its ReLU / residual add as post-ops (:func:`fuse_onednn`); the private ops
  are checked once per process and left out, with one logged reason, where they are missing.
  Measured speed-ups per CPU are in ``docs/performance.md``.
* **allocator** (process-wide, for command-line tools): :func:`configure_allocator` stops glibc from
  returning large activation buffers to the OS after every op, which otherwise costs millions of
  minor page faults per forward on CPU. A library call never changes it; the plan only says
  whether it is recommended.

Outputs match plain float32 within :data:`FP32_TOLERANCE` (``max |opt - ref| <= tol * max |ref|``),
:data:`BF16_TOLERANCE` for bfloat16 plans; :func:`optimize_for_inference` verifies that on its
example input and falls back to the plain model (with a warning) if it ever does not hold.
"""
from fima_models._utils import PRECISIONS
from fima_models.inference.fusion import FusedBasicBlock, OneDnnConv3d, fuse_onednn, onednn_fusion_available
from fima_models.inference.optimize import optimize_for_inference, output_mismatch
from fima_models.inference.plan import (
    BF16_TOLERANCE, FP32_TOLERANCE, InferencePlan, allocator_configured, configure_allocator, plan_inference,
)
from fima_models.inference.rewrites import Conv3dAs2d, factorise_convs, fold_batchnorm

__all__ = [
    'InferencePlan', 'plan_inference', 'optimize_for_inference', 'fold_batchnorm', 'factorise_convs',
    'Conv3dAs2d', 'fuse_onednn', 'OneDnnConv3d', 'FusedBasicBlock', 'onednn_fusion_available',
    'configure_allocator', 'allocator_configured', 'output_mismatch',
    'FP32_TOLERANCE', 'BF16_TOLERANCE', 'PRECISIONS',
]
