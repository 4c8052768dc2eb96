"""The bfloat16 inference plan: bfloat16 weights, channels-last throughout, fp32 outputs close to fp32.

The plan's structure and accuracy are checked on every machine with ``has_native_bf16`` patched to
``True`` (bfloat16 ops compute the same values where the CPU emulates them, only slower); the test
of the real hardware detection runs only on CPUs with native bfloat16.
"""
from typing import List, Tuple

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fima_models
from fima_models._utils import cpu_has_native_bf16, hardware
from fima_models.inference import BF16_TOLERANCE, optimize_for_inference, output_mismatch, plan_inference
from fima_models.inference.fusion import onednn_fusion_available
from tests import test_inference

TEST_MODELS = ['test_r3d', 'test_r2plus1d', 'test_s3d', 'test_i3d']
CLIP = (2, 3, 8, 32, 32)
#: Cosine similarity of pooled bfloat16 features to float32 ones the plan must keep.
MIN_COSINE = 0.999
#: The autouse fixture of the inference tests: tiny models run on one intra-op thread.
_one_thread = test_inference._one_thread


@pytest.fixture
def native_bf16(monkeypatch):
    """Pretend the CPU computes bfloat16 natively, so the plan is built on any machine."""
    monkeypatch.setattr(hardware, 'cpu_has_native_bf16', lambda: True)


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = fima_models.create_model(name, num_classes=10).eval()
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():  # non-trivial statistics, so the folded bf16 weights are really tested
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


@pytest.mark.parametrize('name', TEST_MODELS)
def test_bf16_features_close_to_fp32(name, native_bf16):
    model = _model(name)
    fast = optimize_for_inference(model, example_shape=CLIP, precision='bf16')
    assert fast.inference_plan.precision == 'bf16', fast.inference_plan.reasons
    x = torch.randn(CLIP, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref_maps, ref_logits = model.forward_features(x), model(x)
    maps, logits = fast.forward_features(x), fast(x)
    assert maps.dtype == logits.dtype == torch.float32
    pooled, ref_pooled = maps.mean((2, 3, 4)), ref_maps.mean((2, 3, 4))
    for i in range(CLIP[0]):  # per clip, as extraction stores them
        assert _cosine(pooled[i], ref_pooled[i]) >= MIN_COSINE
    assert output_mismatch(maps, ref_maps) <= BF16_TOLERANCE
    assert output_mismatch(logits, ref_logits) <= BF16_TOLERANCE
    assert output_mismatch(maps, ref_maps) > 0  # really computed in bfloat16, not the fp32 fallback


def _leaf_calls(model: nn.Module, x: torch.Tensor) -> List[Tuple[str, nn.Module, torch.Tensor, torch.Tensor]]:
    """``(name, module, input, output)`` of every leaf module call during ``model(x)``."""
    calls = []
    handles = [m.register_forward_hook(lambda mod, args, out, name=name: calls.append((name, mod, args[0], out)))
               for name, m in model.named_modules() if not any(True for _ in m.children())]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return calls


@pytest.mark.parametrize('name', TEST_MODELS)
def test_bf16_plan_weights_and_activations_are_bf16_channels_last(name, native_bf16):
    fast = optimize_for_inference(_model(name), example_shape=CLIP, precision='bf16')
    params = dict(fast.named_parameters())
    assert params and all(p.dtype == torch.bfloat16 for p in params.values())
    assert all(b.dtype == torch.bfloat16 for b in fast.buffers() if b.is_floating_point())
    convs = [m for m in fast.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    assert convs and all(c.weight.dtype == torch.bfloat16 for c in convs)
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last_3d) for c in convs if c.weight.dim() == 5)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fast.modules())  # all folded
    calls = _leaf_calls(fast, torch.randn(CLIP))
    assert calls
    assert calls[0][2].is_contiguous(memory_format=torch.channels_last_3d)  # the input, cast once on entry
    cl, checked = torch.channels_last_3d, 0
    for module_name, module, inp, out in calls:
        # no per-layer casts: every layer (conv, ReLU, pool, linear) reads and writes bfloat16
        assert inp.dtype == out.dtype == torch.bfloat16, (module_name, inp.dtype, out.dtype)
        # a one-channel tensor is both layouts and oneDNN may answer it in either (only tiny models have
        # one-channel layers), so the layout is checked on convs reading a many-channel clip
        if isinstance(module, nn.Conv3d) and inp.shape[1] > 1 and inp.is_contiguous(memory_format=cl):
            assert out.is_contiguous(memory_format=cl), (module_name, type(module))
            checked += 1
    assert checked > 0


def test_bf16_plan_casts_once_at_the_outermost_entry(native_bf16):
    fast = optimize_for_inference(_model('test_r2plus1d'), example_shape=CLIP, precision='bf16')
    head_inputs = []
    handle = fast.fc.register_forward_pre_hook(lambda mod, args: head_inputs.append(args[0].dtype))
    try:
        fast(torch.randn(CLIP))
        features = fast.forward_features(torch.randn(CLIP))
        head = fast.forward_head(features)
    finally:
        handle.remove()
    # forward -> forward_features -> forward_head stays in bf16; a direct call gets fp32 back
    assert head_inputs == [torch.bfloat16, torch.bfloat16]
    assert features.dtype == head.dtype == torch.float32
    intermediates = fast.forward_intermediates(torch.randn(CLIP), intermediates_only=True)
    assert intermediates and all(t.dtype == torch.float32 for t in intermediates)


def test_bf16_plan_refused_without_native_bf16(monkeypatch):
    monkeypatch.setattr(hardware, 'cpu_has_native_bf16', lambda: False)
    with pytest.raises(ValueError, match='no native bfloat16.*Use precision fp32 or auto'):
        optimize_for_inference(_model('test_r3d'), example_shape=CLIP, precision='bf16')
    fast = optimize_for_inference(_model('test_r3d'), example_shape=CLIP, precision='auto')
    assert fast.inference_plan.precision == 'fp32'
    assert all(p.dtype == torch.float32 for p in fast.parameters())


def test_bf16_plan_describes_its_weights(native_bf16):
    assert 'bf16 weights' in plan_inference('cpu', precision='bf16').describe()
    assert plan_inference('cpu', precision='fp32').describe().endswith('fp32')


@pytest.mark.skipif(not cpu_has_native_bf16(), reason='needs a CPU with native bfloat16 (AMX / AVX512-BF16)')
def test_auto_uses_bf16_on_native_hardware():
    model = _model('test_r3d')
    fast = optimize_for_inference(model, example_shape=CLIP, precision='auto')
    assert fast.inference_plan.precision == 'bf16'
    x = torch.randn(CLIP)
    with torch.no_grad():
        ref = model.forward_features(x)
    assert _cosine(fast.forward_features(x), ref) >= MIN_COSINE


def test_bf16_plan_is_eager_unless_compile_asked(native_bf16, monkeypatch):
    default = plan_inference('cpu', precision='bf16')
    # eager: oneDNN's fused 3-D convs (where this torch has them) instead of the 2-D rewrite
    fused = onednn_fusion_available()[0]
    assert not default.compile and default.fuse_onednn == fused and default.factorise_convs != fused
    compiled = plan_inference('cpu', precision='bf16', compile=True)
    # the compiled graph gets the 3-D channels-last convs inductor fuses with their ReLU / adds
    assert compiled.compile and compiled.freeze and not compiled.factorise_convs
    calls = []

    def fake_compile(fn, **kwargs):
        calls.append(fn.__name__)
        return fn

    monkeypatch.setattr(torch, 'compile', fake_compile)
    fast = optimize_for_inference(_model('test_r3d'), example_shape=CLIP, precision='bf16', compile=True)
    assert calls == ['forward_features'] and fast.inference_plan.compile
    assert fast(torch.randn(CLIP)).dtype == torch.float32


def test_failed_compile_falls_back_to_the_eager_bf16_plan(native_bf16, monkeypatch, caplog):
    def broken_compile(fn, **kwargs):
        def compiled(*args, **kw):
            raise RuntimeError('no C++ compiler found')
        return compiled

    monkeypatch.setattr(torch, 'compile', broken_compile)
    fast = optimize_for_inference(_model('test_r2plus1d'), example_shape=CLIP, precision='bf16', compile=True)
    assert not fast.inference_plan.compile and fast.inference_plan.precision == 'bf16'
    assert 'torch.compile failed' in caplog.text and 'no C++ compiler found' in caplog.text
    assert all(p.dtype == torch.bfloat16 for p in fast.parameters())


def test_extraction_runs_the_bf16_plan_where_bf16_is_native(native_bf16):
    from fima_models.extract import prepare_inference

    runner = prepare_inference(_model('test_r2plus1d'), precision='bf16', example_shape=(1, 3, 4, 32, 32))
    assert {p.dtype for p in runner.model.parameters()} == {torch.bfloat16}
    maps = runner(torch.randn(2, 3, 4, 32, 32))
    assert maps.dtype == torch.float32 and torch.isfinite(maps).all()


def test_emulated_bf16_extraction_keeps_float32_weights(monkeypatch):
    from fima_models.extract import prepare_inference

    monkeypatch.setattr(hardware, 'cpu_has_native_bf16', lambda: False)
    runner = prepare_inference(_model('test_r2plus1d'), precision='bf16', allow_emulated=True,
                               example_shape=(1, 3, 4, 32, 32))
    assert {p.dtype for p in runner.model.parameters()} == {torch.float32} and runner.precision == 'bf16'
