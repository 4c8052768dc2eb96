"""The fast inference path: equal outputs, BatchNorm folding, 2-D convs on views, plans, caching."""
import copy
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import fima_models
from fima_models import inference
from fima_models._utils import cpu_has_native_bf16, hardware
from fima_models.inference import (
    BF16_TOLERANCE, FP32_TOLERANCE, Conv3dAs2d, InferencePlan, configure_allocator, factorise_convs,
    fold_batchnorm, optimize_for_inference, output_mismatch, plan_inference,
)

TEST_MODELS = ['test_r3d', 'test_r2plus1d', 'test_s3d', 'test_i3d']
CLIP = (2, 3, 8, 32, 32)


@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    """Tiny models on a shared 2-core machine run much faster on one intra-op thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randomise_batchnorm(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, so folding is really tested."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.2)
    return model


def _model(name: str, **kwargs) -> nn.Module:
    return _randomise_batchnorm(fima_models.create_model(name, **kwargs)).eval()


@pytest.mark.parametrize('name', TEST_MODELS)
def test_fast_path_matches_fp32(name):
    model = _model(name)
    fast = optimize_for_inference(model, device='cpu', example_shape=CLIP)
    plan = fast.inference_plan
    assert plan.fold_batchnorm and plan.channels_last and plan.factorise_convs and plan.precision == 'fp32'
    assert not any(isinstance(m, nn.BatchNorm3d) for m in fast.modules())
    x = torch.randn(CLIP)
    with torch.no_grad():
        assert output_mismatch(fast(x), model(x)) <= FP32_TOLERANCE
        maps, ref_maps = fast.forward_features(x), model.forward_features(x)
        assert output_mismatch(maps, ref_maps) <= FP32_TOLERANCE
        inter = fast.forward_intermediates(x, intermediates_only=True)
        ref_inter = model.forward_intermediates(x, intermediates_only=True)
    assert output_mismatch(inter, ref_inter) <= FP32_TOLERANCE
    assert maps.dtype == torch.float32 and maps.shape == ref_maps.shape


def test_full_size_model_at_tiny_input():
    model = _model('r2plus1d_18', num_classes=0)
    shape = (1, 3, 4, 32, 32)
    fast = optimize_for_inference(model, example_shape=shape)
    assert sum(isinstance(m, Conv3dAs2d) for m in fast.modules()) == 34  # every (1,k,k) and (k,1,1) conv
    x = torch.randn(shape)
    with torch.no_grad():
        out, ref = fast(x), model(x)
    assert out.shape == (1, 512)
    assert output_mismatch(out, ref) <= FP32_TOLERANCE


def test_original_model_is_untouched():
    model = _model('test_r2plus1d').train()
    state = copy.deepcopy(model.state_dict())
    fast = optimize_for_inference(model, example_shape=CLIP)
    assert model.training and not fast.training
    assert all(p.requires_grad for p in model.parameters())
    assert not any(p.requires_grad for p in fast.parameters())
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_fold_batchnorm_exact_and_only_where_safe():
    class TwoReaders(nn.Module):
        """A conv read by a BatchNorm and by a second module: must not be folded."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(4, 4, 3, padding=1)
            self.bn = nn.BatchNorm3d(4)
            self.side = nn.Conv3d(4, 4, 1)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + self.side(y)

    net = nn.Sequential(nn.Conv3d(3, 4, 3, padding=1, bias=False), nn.BatchNorm3d(4), nn.ReLU(),
                        TwoReaders(), nn.BatchNorm3d(4))
    _randomise_batchnorm(net).eval()
    x = torch.randn(2, 3, 4, 8, 8)
    with torch.no_grad():
        ref = net(x)
        pairs = fold_batchnorm(net, x)
        out = net(x)
    # the first conv/BN pair folds; the BN after TwoReaders reads an add, the inner one a shared conv
    assert pairs == [('0', '1')]
    assert isinstance(net[1], nn.Identity) and net[0].bias is not None
    assert isinstance(net[3].bn, nn.BatchNorm3d) and isinstance(net[4], nn.BatchNorm3d)
    assert output_mismatch(out, ref) <= FP32_TOLERANCE


def test_training_batchnorm_is_not_folded():
    net = nn.Sequential(nn.Conv3d(3, 4, 1), nn.BatchNorm3d(4)).train()
    assert fold_batchnorm(net, torch.randn(2, 3, 2, 4, 4)) == []


def test_functional_reader_of_conv_output_falls_back(caplog):
    class HiddenReader(nn.Module):
        """The conv output is also read by a functional op, invisible to module hooks."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm3d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    net = _randomise_batchnorm(HiddenReader()).eval()
    shape = (1, 3, 4, 8, 8)
    with caplog.at_level('WARNING', logger='fima_models.inference'):
        fast = optimize_for_inference(net, example_shape=shape)
    assert 'plain model' in caplog.text
    assert not fast.inference_plan.fold_batchnorm
    x = torch.randn(shape)
    with torch.no_grad():
        assert output_mismatch(fast(x), net(x)) <= FP32_TOLERANCE


@pytest.mark.parametrize('kwargs', [
    dict(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
    dict(kernel_size=(1, 3, 3), padding=(0, 2, 2), dilation=(1, 2, 2), groups=2),
    dict(kernel_size=(3, 1, 1), stride=(2, 1, 1), padding=(1, 0, 0)),
    dict(kernel_size=(3, 1, 1), padding=(2, 0, 0), dilation=(2, 1, 1), bias=False),
    dict(kernel_size=1),
])
def test_conv3d_as_2d_matches_conv3d(kwargs):
    conv = nn.Conv3d(4, 6, **kwargs)
    fast = Conv3dAs2d.from_conv(conv)
    assert fast.weight is conv.weight and fast.state_dict().keys() == conv.state_dict().keys()
    x = torch.randn(2, 4, 6, 9, 10)
    xcl = x.contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        ref = conv(x)
        out = fast(xcl)
        plain = fast(x)  # not channels-last: the ordinary 3-D conv
    assert out.shape == ref.shape
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.allclose(out, ref, atol=1e-5) and torch.allclose(plain, ref, atol=1e-5)


def test_factorise_convs_skips_full_3d_kernels():
    net = nn.Sequential(nn.Conv3d(3, 4, 3, padding=1), nn.Conv3d(4, 4, (1, 3, 3), padding=(0, 1, 1)),
                        nn.Conv3d(4, 4, (3, 1, 1), padding=(1, 0, 0), padding_mode='circular'),
                        nn.Conv3d(4, 4, (3, 1, 1), padding=(1, 0, 0)))
    assert factorise_convs(net) == 2
    assert [type(m) for m in net] == [nn.Conv3d, Conv3dAs2d, nn.Conv3d, Conv3dAs2d]
    assert [m.mode for m in net if isinstance(m, Conv3dAs2d)] == ['spatial', 'temporal']
    with pytest.raises(ValueError):
        Conv3dAs2d.from_conv(net[0])


def test_plan_never_picks_emulated_bf16(monkeypatch):
    monkeypatch.setattr(hardware, 'cpu_has_native_bf16', lambda: False)
    assert plan_inference('cpu', precision='auto').precision == 'fp32'
    with pytest.raises(ValueError, match='native bfloat16'):
        plan_inference('cpu', precision='bf16')
    monkeypatch.setattr(hardware, 'cpu_has_native_bf16', lambda: True)
    assert plan_inference('cpu', precision='auto').precision == 'bf16'
    assert plan_inference('cpu').precision == 'fp32'
    with pytest.raises(ValueError, match='unknown precision'):
        plan_inference('cpu', precision='fp8')


def test_native_bf16_detection_matches_cpu_flags() -> None:
    flags = set()
    for line in Path('/proc/cpuinfo').read_text().splitlines() if Path('/proc/cpuinfo').exists() else []:
        if line.lower().startswith(('flags', 'features')):
            flags = set(line.split(':', 1)[1].split())
            break
    if not flags:
        pytest.skip('no /proc/cpuinfo flags on this machine')
    assert cpu_has_native_bf16() == bool(flags & {'avx512_bf16', 'amx_bf16', 'bf16'})


def test_plan_rules_per_device():
    cpu = plan_inference('cpu')
    assert (cpu.fold_batchnorm, cpu.channels_last, cpu.factorise_convs, cpu.compile) == (True, True, True, False)
    assert cpu.reasons and 'cpu' in cpu.describe()
    forced = plan_inference('cpu', compile=True)
    assert forced.compile and forced.freeze
    cuda = plan_inference('cuda:0')
    assert cuda.channels_last and not cuda.factorise_convs and not cuda.allocator
    other = plan_inference('mps')
    assert other.fold_batchnorm and not (other.channels_last or other.factorise_convs or other.compile)
    assert plan_inference().device == 'cpu'


def test_bf16_plan_returns_fp32(monkeypatch):
    monkeypatch.setattr(hardware, 'cpu_has_native_bf16', lambda: True)
    model = _model('test_r3d')
    fast = optimize_for_inference(model, example_shape=CLIP, precision='auto')
    assert fast.inference_plan.precision == 'bf16' and fast.inference_plan.tolerance == BF16_TOLERANCE
    x = torch.randn(CLIP)
    maps = fast.forward_features(x)
    assert maps.dtype == torch.float32
    with torch.no_grad():
        assert output_mismatch(maps, model.forward_features(x)) <= BF16_TOLERANCE


def test_compile_wraps_forward_features_once(monkeypatch):
    calls = []

    def fake_compile(fn, **kwargs):
        calls.append(kwargs)
        return fn

    monkeypatch.setattr(torch, 'compile', fake_compile)
    model = _model('test_r3d')
    fast = optimize_for_inference(model, example_shape=CLIP, compile=True)
    assert calls == [dict(dynamic=False, options={'freezing': True})]
    assert 'forward_features' in vars(fast)  # forward() reaches the compiled method through it
    again = optimize_for_inference(model, example_shape=CLIP, compile=True)
    assert again is fast and len(calls) == 1
    x = torch.randn(CLIP)
    with torch.no_grad():
        assert output_mismatch(fast(x), model(x)) <= FP32_TOLERANCE


def test_idempotent_and_cached_per_shape_and_plan():
    model = _model('test_r3d')
    fast = optimize_for_inference(model, example_shape=CLIP)
    assert optimize_for_inference(model, example_shape=CLIP) is fast
    assert optimize_for_inference(fast) is fast
    assert optimize_for_inference(model, example_shape=(1, 3, 8, 32, 32)) is not fast
    plain = optimize_for_inference(model, example_shape=CLIP, plan=InferencePlan('cpu', fold_batchnorm=False))
    assert plain is not fast and any(isinstance(m, nn.BatchNorm3d) for m in plain.modules())


def test_plain_modules_and_default_shape():
    net = nn.Sequential(nn.Conv3d(3, 8, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(8), nn.ReLU(),
                        nn.Conv3d(8, 8, (3, 1, 1), padding=(1, 0, 0)), nn.AdaptiveAvgPool3d(1), nn.Flatten())
    _randomise_batchnorm(net).eval()
    fast = optimize_for_inference(net, example_shape=(2, 3, 4, 16, 16))
    x = torch.randn(2, 3, 4, 16, 16)
    with torch.no_grad():
        assert output_mismatch(fast(x), net(x)) <= FP32_TOLERANCE
    # a zoo model without example_shape uses its pretrained input size (batch 1)
    model = _model('test_r3d')
    assert optimize_for_inference(model) is optimize_for_inference(model, example_shape=(1, 3, 4, 32, 32))


def test_output_mismatch():
    a = torch.tensor([1.0, -2.0])
    assert output_mismatch(a, a) == 0
    assert output_mismatch(a + 0.02, a) == pytest.approx(0.01)
    assert output_mismatch(a[:1], a) == float('inf')
    assert output_mismatch([a, a], [a]) == float('inf')


def test_configure_allocator_reports_whether_applied():
    applied = configure_allocator()
    assert applied == inference.plan._glibc()
    assert inference.allocator_configured() == applied
    x = torch.randn(1 << 20)  # large allocations still work afterwards
    assert float((x * 0 + 1).sum()) == float(1 << 20)


def test_cache_never_serves_a_copy_of_older_weights():
    model = fima_models.create_model('test_r3d', num_classes=0).eval()
    shape = (1, 3, 8, 32, 32)
    first = optimize_for_inference(model, example_shape=shape)
    assert optimize_for_inference(model, example_shape=shape) is first
    model.reset_classifier(5)
    with torch.no_grad():
        model.get_classifier().weight.fill_(0.5)
    changed = optimize_for_inference(model, example_shape=shape)
    assert changed is not first
    x = torch.randn(shape)
    with torch.no_grad():
        assert changed(x).shape == (1, 5)
        torch.testing.assert_close(changed(x), model(x), rtol=1e-4, atol=1e-4)
