"""oneDNN fused convolutions (the eager bf16 CPU plan): exact in float32, found only where safe, and a fallback.

The fused ops compute float32 too, so their arithmetic is checked on any CPU against the unfused
float32 computation; the bfloat16 check runs only where the CPU computes bfloat16 natively.
"""
import copy
import logging

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fima_models
from fima_models._utils import has_native_bf16, hardware
from fima_models.inference import InferencePlan, fold_batchnorm, optimize_for_inference, output_mismatch, plan_inference
from fima_models.inference import fusion
from fima_models.inference.fusion import FusedBasicBlock, OneDnnConv3d, fuse_onednn, onednn_fusion_available
from fima_models.models.resnet3d import BasicBlock3d
from tests import test_inference

CLIP = (2, 3, 8, 32, 32)
_one_thread = test_inference._one_thread
needs_onednn = pytest.mark.skipif(not onednn_fusion_available()[0], reason='no oneDNN fused convolutions here')


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last_3d)


def _folded(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = test_inference._randomise_batchnorm(fima_models.create_model(name, num_classes=10).eval())
    fold_batchnorm(model, torch.randn(CLIP))
    return model.requires_grad_(False)


@needs_onednn
@pytest.mark.parametrize('kwargs', [
    dict(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
    dict(kernel_size=(3, 1, 1), stride=(2, 1, 1), padding=(1, 0, 0)),
    dict(kernel_size=3, padding=1, groups=2),
    dict(kernel_size=1, stride=2, bias=False),
])
def test_onednn_conv_equals_conv_relu_and_residual(kwargs):
    torch.manual_seed(0)
    conv = nn.Conv3d(4, 6, **{'bias': True, **kwargs}).requires_grad_(False)
    x = _channels_last(torch.randn(2, 4, 5, 9, 9))
    with torch.no_grad():
        ref = F.conv3d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        residual = torch.randn_like(ref)
        plain, relu = OneDnnConv3d.from_conv(conv), OneDnnConv3d.from_conv(conv, 'relu')
        torch.testing.assert_close(plain(x), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(relu(x), ref.clamp_min(0), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(plain(x, residual=residual), (ref + residual).clamp_min(0), rtol=1e-5, atol=1e-5)
        # another input size reuses the weight packed for the first one
        x2 = _channels_last(torch.randn(1, 4, 3, 7, 11))
        ref2 = F.conv3d(x2, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        torch.testing.assert_close(relu(x2), ref2.clamp_min(0), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_packed_weight_follows_the_weight_and_copies():
    torch.manual_seed(0)
    conv = OneDnnConv3d.from_conv(nn.Conv3d(3, 5, 3, padding=1).requires_grad_(False), 'relu')
    x = torch.randn(1, 3, 4, 6, 6)
    with torch.no_grad():
        conv(x)
        conv.weight.mul_(-1)  # in place: the packed copy must be remade
        torch.testing.assert_close(conv(x), F.relu(F.conv3d(x, conv.weight, conv.bias, padding=1)))
        twin = copy.deepcopy(conv)  # oneDNN's packed tensors cannot be copied: the twin packs its own
        twin.load_state_dict({'weight': torch.randn_like(conv.weight), 'bias': conv.bias})
        torch.testing.assert_close(twin(x), F.relu(F.conv3d(x, twin.weight, twin.bias, padding=1)))
        torch.testing.assert_close(conv(x), F.relu(F.conv3d(x, conv.weight, conv.bias, padding=1)))
    with torch.inference_mode():  # weights made in inference mode have no version counter
        made = OneDnnConv3d.from_conv(nn.Conv3d(3, 5, 1), 'none')
        torch.testing.assert_close(made(x), F.conv3d(x, made.weight, made.bias))
    # with autograd recording it is the ordinary convolution, and differentiable
    conv.weight.requires_grad_(True)
    conv(x).sum().backward()
    assert conv.weight.grad is not None


@needs_onednn
@pytest.mark.parametrize('name', ['test_r2plus1d', 'test_r3d', 'test_s3d', 'test_i3d'])
def test_fused_model_equals_the_unfused_fp32_model(name):
    model = _folded(name)
    relus = sum(isinstance(m, nn.ReLU) for m in model.modules())
    blocks = sum(isinstance(m, BasicBlock3d) for m in model.modules())
    keys = list(model.state_dict())
    fused = copy.deepcopy(model).to(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        counts = fuse_onednn(fused, lambda: fused(torch.randn(1, *CLIP[1:])))
        x = torch.randn(CLIP, generator=torch.Generator().manual_seed(2))
        ref, out = model(x), fused(_channels_last(x))
    convs = [m for m in fused.modules() if isinstance(m, nn.Conv3d)]
    assert counts['convs'] == len(convs) and all(isinstance(m, OneDnnConv3d) for m in convs)
    # every ReLU follows a conv (+ folded BN) except the blocks' residual ReLUs, which the blocks fuse
    assert counts['residual'] == blocks and counts['relu'] == relus - blocks
    assert sum(isinstance(m, FusedBasicBlock) for m in fused.modules()) == blocks
    assert list(fused.state_dict()) == keys
    assert output_mismatch(out, ref) < 1e-5


@needs_onednn
def test_relu_stays_separate_where_the_conv_output_is_read_twice():
    class Branches(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.relu, self.other = nn.Conv3d(3, 4, 1), nn.ReLU(), nn.Conv3d(4, 2, 1)

        def forward(self, x):
            y = self.conv(x)
            return torch.cat([self.relu(y), self.other(y)], dim=1)

    model = Branches().eval().requires_grad_(False)
    x = torch.randn(1, 3, 2, 4, 4)
    with torch.no_grad():
        ref = model(x)
        counts = fuse_onednn(model, lambda: model(x))
        assert counts == {'convs': 2, 'relu': 0, 'residual': 0}
        assert isinstance(model.relu, nn.ReLU)
        torch.testing.assert_close(model(x), ref)


@pytest.fixture
def missing_op(monkeypatch):
    """A torch build without one of the private ops (the availability check runs again, and after)."""
    monkeypatch.setattr(fusion, 'REQUIRED_OPS', fusion.REQUIRED_OPS + ('_no_such_fused_op',))
    onednn_fusion_available.cache_clear()
    yield
    onednn_fusion_available.cache_clear()


def test_missing_op_falls_back_to_the_unfused_plan(missing_op, monkeypatch, caplog):
    monkeypatch.setattr(hardware, 'cpu_has_native_bf16', lambda: True)
    with caplog.at_level(logging.WARNING, logger='fima_models.inference.fusion'):
        plans = [plan_inference('cpu', precision='bf16') for _ in range(2)]
        # an explicit plan asking for the fusion gets the plain one (same outputs), fp32 so any CPU runs it
        model = _folded('test_r2plus1d')
        asked = InferencePlan('cpu', channels_last=True, fuse_onednn=True)
        fast = optimize_for_inference(model, example_shape=CLIP, plan=asked)
    warnings = [r for r in caplog.records if 'oneDNN fusion off' in r.getMessage()]
    assert len(warnings) == 1 and '_no_such_fused_op' in warnings[0].getMessage()
    assert not any(plan.fuse_onednn for plan in plans) and plans[0].factorise_convs
    assert any('no onednn fusion' in reason for reason in plans[0].reasons)
    assert not fast.inference_plan.fuse_onednn and fast.inference_plan.factorise_convs
    assert not any(isinstance(m, (OneDnnConv3d, FusedBasicBlock)) for m in fast.modules())
    plain = optimize_for_inference(model, example_shape=CLIP)
    x = torch.randn(CLIP)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), rtol=0, atol=0)


def test_fp32_plans_never_fuse():
    for device in ('cpu', 'meta'):
        assert not plan_inference(device, precision='fp32').fuse_onednn


@needs_onednn
@pytest.mark.skipif(not has_native_bf16(torch.device('cpu')), reason='CPU without native bfloat16')
def test_bf16_plan_fuses_on_native_hardware():
    model = _folded('test_r2plus1d')
    fast = optimize_for_inference(model, example_shape=CLIP, precision='bf16')
    assert fast.inference_plan.fuse_onednn and 'onednn-fused' in fast.inference_plan.describe()
    fused = [m for m in fast.modules() if isinstance(m, OneDnnConv3d)]
    assert fused and all(m.weight.dtype == torch.bfloat16 for m in fused)
    x = torch.randn(CLIP, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref, out = model.forward_features(x).mean((2, 3, 4)), fast.forward_features(x).mean((2, 3, 4))
    assert F.cosine_similarity(out.double(), ref.double(), dim=1).min() >= 0.999
