"""The model zoo: timm interface of every family, shapes, SAME padding, pretrained configs, errors.

Generic behaviour runs on the tiny ``test_*`` variants (one per family); full-size models are only
built on the meta device (parameter counts, output shapes) so the file stays fast on 2 CPU cores.
"""
import copy
import itertools
import math

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import get_pretrained_cfg, group_parameters

import fima_models
from fima_models.models import adapt_input_conv3d, build_video_model, check_video_input
from fima_models.models._manipulate import keys_under, remap_classifier
from fima_models.models import i3d as i3d_mod
from fima_models.models import resnet3d as resnet3d_mod
from fima_models.models import s3d as s3d_mod
from fima_models.models.i3d import MaxPool3dSame, Unit3d, same_pad_arg, same_padding, static_padding

TEST_MODELS = ['test_r3d', 'test_r2plus1d', 'test_s3d', 'test_i3d']
FULL_MODELS = ['r3d_18', 'mc3_18', 'r2plus1d_18', 's3d', 'i3d']
CLIP = (2, 3, 8, 32, 32)


def _clip(shape=CLIP) -> torch.Tensor:
    return torch.randn(*shape)


def _meta_model(name: str, **kwargs) -> nn.Module:
    with torch.device('meta'):
        return timm.create_model(name, **kwargs)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _intermediates(name: str):
    """A tiny model in eval mode, a clip, and the model's final map and five intermediate maps of it."""
    model = timm.create_model(name).eval()
    x = _clip()
    with torch.no_grad():
        final, feats = model.forward_intermediates(x)
    return model, x, final, feats


# --- registration ----------------------------------------------------------------------------

def test_every_model_registered_with_timm():
    names = set(timm.list_models())
    assert set(FULL_MODELS + TEST_MODELS) <= names
    for name in FULL_MODELS + TEST_MODELS:
        assert timm.models.model_entrypoint(name).__module__.startswith('fima_models.models.')


def test_timm_create_model_builds_our_class():
    model = timm.create_model('test_r2plus1d', num_classes=3)
    assert isinstance(model, resnet3d_mod.VideoResNet)
    assert model(_clip()).shape == (2, 3)
    assert isinstance(fima_models.create_model('test_i3d'), i3d_mod.I3D)


# --- full-size models: parameter counts and shapes on the meta device ------------------------

@pytest.mark.parametrize('name, n_params', [
    ('r3d_18', 33371472), ('mc3_18', 11695440), ('r2plus1d_18', 31505325), ('s3d', 8320048),
    ('i3d', 12287264 + 1024 * 400 + 400),
])
def test_param_counts_with_400_classes(name, n_params):
    assert _n_params(_meta_model(name, num_classes=400)) == n_params


@pytest.mark.parametrize('name', ['r3d_18', 'mc3_18', 'r2plus1d_18', 's3d'])
def test_tv_cfg_records_the_param_count(name):
    cfg = get_pretrained_cfg(f'{name}.tv_k400')
    assert _n_params(_meta_model(f'{name}.tv_k400')) == cfg.num_params


@pytest.mark.parametrize('shape, out, padding', [
    ((1, 3, 16, 224, 224), (1, 1024, 2, 7, 7), 'static'),
    ((1, 3, 8, 112, 112), (1, 1024, 1, 4, 4), 'static'),
    ((2, 3, 32, 256, 256), (2, 1024, 4, 8, 8), 'static'),
    # odd sizes, static rule by hand: W 97 -> (97 + 5 - 7) // 2 + 1 = 48 -> ceil-mode pools on 48 + 1,
    # 24 + 1, 12 + 1 padded cells: 24, 12, 6 -> unpadded 2x2x2 pool: 3 (T 15 -> 7 -> 7 -> 4 -> 2, H -> 4)
    ((1, 3, 15, 113, 97), (1, 1024, 2, 4, 3), 'static'),
    ((1, 3, 15, 113, 97), (1, 1024, 2, 4, 4), 'tf_same'),  # TensorFlow: every layer gives ceil(n / stride)
])
def test_i3d_feature_map_shape(shape, out, padding):
    model = _meta_model('i3d', num_classes=0, padding=padding)
    assert model.forward_features(torch.empty(shape, device='meta')).shape == out


@pytest.mark.parametrize('name', FULL_MODELS)
def test_full_model_levels_match_feature_info(name):
    model = _meta_model(name, num_classes=0)
    x = torch.empty(1, 3, 16, 224, 224, device='meta')
    final, feats = model.forward_intermediates(x)
    assert len(feats) == len(model.feature_info) == 5
    for info, f in zip(model.feature_info, feats):
        assert f.shape[1] == info['num_chs']
        assert f.shape[3] == math.ceil(224 / info['reduction'])
        assert f.shape[2] == math.ceil(16 / info['temporal_reduction'])
    assert final.shape[1] == model.num_features


# --- generic suite over the test variants ----------------------------------------------------

@pytest.mark.parametrize('name', TEST_MODELS)
def test_forward_backward(name):
    model = timm.create_model(name, num_classes=5)
    out = model(_clip())
    assert out.shape == (2, 5)
    out.logsumexp(1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize('name', TEST_MODELS)
@pytest.mark.parametrize('size', [(1, 16, 16), (8, 32, 32), (12, 40, 24)])
def test_any_clip_size(name, size):
    model = timm.create_model(name, num_classes=0).eval()
    t, h, w = (max(a, b) for a, b in zip(size, model.min_input_size))
    with torch.no_grad():
        assert model(torch.randn(1, 3, t, h, w)).shape == (1, model.num_features)


@pytest.mark.parametrize('name', TEST_MODELS)
def test_pooled_features(name):
    model = timm.create_model(name, num_classes=7).eval()
    x = _clip()
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pre.shape == (2, model.num_features)
        assert torch.allclose(model.forward_features(x).mean((2, 3, 4)), pre)
        model.reset_classifier(0)
        assert torch.allclose(model(x), pre)
    assert model.num_classes == 0 and isinstance(model.get_classifier(), nn.Identity)


@pytest.mark.parametrize('name', TEST_MODELS)
def test_reset_classifier(name):
    model = timm.create_model(name, num_classes=0)
    model.reset_classifier(11)
    assert model.num_classes == 11
    assert model(_clip()).shape == (2, 11)
    clf = model.get_classifier()
    assert sum(p.numel() for p in clf.parameters()) == model.num_features * 11 + 11
    with pytest.raises(ValueError, match="global_pool='avg'"):
        model.reset_classifier(3, global_pool='max')


@pytest.mark.parametrize('name', TEST_MODELS)
def test_features_only_gives_5d_maps(name):
    model = timm.create_model(name, features_only=True)
    assert type(model).__name__ == 'FeatureGetterNet'
    feats = model(_clip())
    assert [f.shape[1] for f in feats] == model.feature_info.channels()
    for f, red in zip(feats, model.feature_info.reduction()):
        assert f.ndim == 5 and f.shape[-1] == math.ceil(32 / red)
    assert model.in_chans == 3 and 'num_classes' not in model.pretrained_cfg


@pytest.mark.parametrize('name', TEST_MODELS)
@pytest.mark.parametrize('feature_cls', ['getter', 'list', 'hook'])
def test_features_only_out_indices(name, feature_cls):
    torch.manual_seed(0)
    model = timm.create_model(name, features_only=True, out_indices=(1, 3), feature_cls=feature_cls).eval()
    feats = model(_clip())
    feats = list(feats.values()) if isinstance(feats, dict) else feats
    assert [f.shape[1] for f in feats] == model.feature_info.channels()
    assert len(feats) == 2


@pytest.mark.parametrize('name', TEST_MODELS)
def test_forward_intermediates(name):
    model, x, final, feats = _intermediates(name)
    with torch.no_grad():
        assert torch.equal(final, model.forward_features(x))
        assert torch.equal(feats[-1], final) and len(feats) == 5
        only = model.forward_intermediates(x, indices=[0, -2], intermediates_only=True)
        assert [torch.equal(a, b) for a, b in zip(only, [feats[0], feats[3]])] == [True, True]
        last, early = model.forward_intermediates(x, indices=2, stop_early=True)  # last two: 3, 4
        assert torch.equal(last, feats[4]) and torch.equal(early[0], feats[3]) and torch.equal(early[1], last)
    with pytest.raises(ValueError, match='NCTHW'):
        model.forward_intermediates(x, output_fmt='NHWC')


@pytest.mark.parametrize('name', TEST_MODELS)
def test_stop_early_stops(name):
    model = timm.create_model(name).eval()
    with torch.no_grad():
        last, feats = model.forward_intermediates(_clip(), indices=[1], stop_early=True)
    assert torch.equal(last, feats[0]) and last.shape[1] == model.feature_info[1]['num_chs']


@pytest.mark.parametrize('name', TEST_MODELS)
def test_prune_intermediate_layers(name):
    model, x, _, before = _intermediates(name)
    n_before = _n_params(model)
    assert model.prune_intermediate_layers([0, 2]) == [0, 2]
    with torch.no_grad():
        after = model.forward_intermediates(x, indices=[0, 2], intermediates_only=True)
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[2])
    assert _n_params(model) < n_before
    assert model.num_classes == 0
    for names in model.stage_names[3:]:
        assert all(isinstance(model.get_submodule(n), nn.Identity) for n in names)


@pytest.mark.parametrize('name', TEST_MODELS)
def test_grad_checkpointing_same_result_less_saved_memory(name):
    model = timm.create_model(name, num_classes=4, drop_rate=0.).train()
    ckpt = copy.deepcopy(model)
    ckpt.set_grad_checkpointing()
    x = _clip()

    def run(m):
        saved = []

        def pack(t):
            saved.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = m(x)
        out.square().mean().backward()
        return out, sum(saved), {n: p.grad for n, p in m.named_parameters()}

    out_a, bytes_a, grads_a = run(model)
    out_b, bytes_b, grads_b = run(ckpt)
    assert torch.allclose(out_a, out_b, atol=1e-6)
    for n, g in grads_a.items():
        assert torch.allclose(g, grads_b[n], atol=1e-5, rtol=1e-4), n
    # activations kept alive for backward: checkpointing keeps only the stage inputs
    assert bytes_b < 0.4 * bytes_a, (bytes_a, bytes_b)


@pytest.mark.parametrize('name', TEST_MODELS)
def test_group_matcher_covers_all_params(name):
    model = timm.create_model(name)
    fine = group_parameters(model, model.group_matcher(coarse=False))
    coarse = group_parameters(model, model.group_matcher(coarse=True))
    n_params = len(list(model.parameters()))
    for groups in (fine, coarse):
        assert sum(len(v) for v in groups.values()) == n_params
        first = groups[min(groups)]
        assert all(n.startswith(model.stage_names[0][0]) for n in first)  # stem first
    assert len(coarse) == 6  # stem, 4 stages, head
    assert len(fine) >= len(coarse)


@pytest.mark.parametrize('name, n_fine', [('r3d_18', 10), ('s3d', 13), ('i3d', 13)])
def test_fine_groups_are_blocks(name, n_fine):
    model = _meta_model(name, num_classes=400)
    groups = group_parameters(model, model.group_matcher())
    assert len(groups) == n_fine  # stem + blocks + head


@pytest.mark.parametrize('name', TEST_MODELS)
def test_channels_last_3d(name):
    model = timm.create_model(name).eval()
    x = _clip()
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last_3d)
        out = model(x.contiguous(memory_format=torch.channels_last_3d))
    assert torch.allclose(ref, out, atol=1e-5)


@pytest.mark.parametrize('name', ['test_i3d', pytest.param('test_r2plus1d', marks=pytest.mark.slow)])
def test_torch_export(name):
    model = timm.create_model(name).eval()
    x = _clip((1, 3, 8, 32, 32))
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        assert torch.allclose(exported.module()(x), model(x), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize('name', TEST_MODELS)
def test_dynamo_traces_without_graph_breaks(name):
    model = timm.create_model(name).eval()
    x = _clip((1, 3, 8, 32, 32))
    compiled = torch.compile(model, backend='eager', fullgraph=True)
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-6)


@pytest.mark.slow
def test_torch_compile_inductor():
    model = timm.create_model('test_i3d').eval()
    x = _clip((1, 3, 8, 32, 32))
    compiled = torch.compile(model)
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-4)


@pytest.mark.parametrize('name', TEST_MODELS)
def test_drop_rate(name):
    model = timm.create_model(name, num_classes=0, drop_rate=0.5).train()
    fmap = torch.rand(32, model.num_features, 1, 2, 2) + 0.1
    pooled = fmap.mean((2, 3, 4))
    dropped = model.forward_head(fmap, pre_logits=True)
    kept = dropped != 0
    assert torch.allclose(dropped[kept], 2 * pooled[kept])  # inverted dropout, p=0.5
    assert 0.35 < 1 - kept.float().mean().item() < 0.65
    model.eval()
    assert torch.equal(model.forward_head(fmap), pooled)


def test_s3d_default_dropout_is_torchvision_s():
    assert timm.create_model('test_s3d').classifier[0].p == 0.2
    assert timm.create_model('test_i3d').drop_rate == 0.0


@pytest.mark.parametrize('name', TEST_MODELS)
@pytest.mark.parametrize('in_chans', [1, 2, 5])
def test_in_chans(name, in_chans):
    model = timm.create_model(name, in_chans=in_chans, num_classes=3).eval()
    assert model.in_chans == in_chans
    assert model(torch.randn(1, in_chans, 8, 32, 32)).shape == (1, 3)
    with pytest.raises(ValueError, match=rf'\(N, {in_chans}, T, H, W\)'):
        model(torch.randn(1, 3 if in_chans != 3 else 4, 8, 32, 32))


# --- input validation --------------------------------------------------------------------------

@pytest.mark.parametrize('name', TEST_MODELS)
def test_wrong_rank_names_expected_shape(name):
    model = timm.create_model(name)
    with pytest.raises(ValueError, match=rf'{name} expects input of shape \(N, 3, T, H, W\).*got \(3, 8, 32, 32\)'):
        model(torch.randn(3, 8, 32, 32))
    with pytest.raises(ValueError, match='unsqueeze'):
        model.forward_features(torch.randn(3, 8, 32, 32))
    with pytest.raises(ValueError, match='transpose'):
        model(torch.randn(1, 8, 3, 32, 32))
    with pytest.raises(ValueError, match='permute'):
        model.forward_intermediates(torch.randn(1, 8, 32, 32, 3))


def test_too_small_clip_names_the_minimum():
    model = timm.create_model('test_s3d')
    with pytest.raises(ValueError, match=r'T>=5, H>=17, W>=17, got \(1, 3, 4, 32, 32\)'):
        model(torch.randn(1, 3, 4, 32, 32))
    with pytest.raises(ValueError, match='W>=17'):
        timm.create_model('test_s3d', features_only=True)(torch.randn(1, 3, 8, 32, 16))


def test_integer_clip_is_a_type_error():
    with pytest.raises(TypeError, match='float'):
        timm.create_model('test_r3d')(torch.zeros(1, 3, 4, 16, 16, dtype=torch.uint8))


def test_check_video_input_accepts_valid():
    check_video_input(torch.zeros(1, 3, 1, 1, 1), 'x', 3)
    with pytest.raises(ValueError, match='T>=2'):
        check_video_input(torch.zeros(1, 3, 1, 4, 4), 'x', 3, (2, 1, 1))


@pytest.mark.parametrize('name', TEST_MODELS)
def test_min_input_size_is_exact(name):
    """The declared minimum runs; one less in any dim fails inside the layers themselves."""
    model = timm.create_model(name).eval()
    t, h, w = model.min_input_size
    with torch.no_grad():
        model(torch.randn(1, 3, t, h, w))
        if (t, h, w) == (1, 1, 1):
            return
        for smaller in [(t - 1, h, w), (t, h - 1, w), (t, h, w - 1)]:
            x = torch.randn(1, 3, *smaller)
            with pytest.raises(RuntimeError):
                for modules in model._stages():  # bypass the validation on purpose
                    x = model._run_stage(modules, x)


def test_constructor_arguments_are_checked():
    with pytest.raises(ValueError, match='in_chans'):
        timm.create_model('test_r3d', in_chans=0)
    with pytest.raises(ValueError, match='num_classes'):
        timm.create_model('test_i3d', num_classes=-1)
    with pytest.raises(ValueError, match='features_only'):
        timm.create_model('test_i3d', out_indices=(1,))
    with pytest.raises(ValueError, match='feature_cls'):
        timm.create_model('test_i3d', features_only=True, feature_cls='nope')
    with pytest.raises(ValueError, match='conv kind'):
        resnet3d_mod.spatiotemporal_conv('4d', 3, 3, 3)


# --- I3D SAME padding --------------------------------------------------------------------------

def test_same_padding_hand_values():
    # (size, kernel, stride) -> (before, after), TensorFlow's rule
    assert same_padding(224, 7, 2) == (2, 3)
    assert same_padding(7, 7, 2) == (3, 3)
    assert same_padding(8, 3, 2) == (0, 1)
    assert same_padding(7, 3, 2) == (1, 1)
    assert same_padding(7, 2, 2) == (0, 1)
    assert same_padding(14, 2, 2) == (0, 0)
    assert same_padding(5, 3, 1) == (1, 1)
    assert same_padding(5, 1, 1) == (0, 0)
    assert same_pad_arg((16, 224, 112), (1, 3, 3), (1, 2, 2)) == [0, 1, 0, 1, 0, 0]


def test_static_padding_hand_values():
    # the FIMA authors' rule (fima_models/models/i3d.py docstring): total max(k - s, 0), smaller half before,
    # at every size
    assert static_padding(7, 2) == (2, 3)
    assert static_padding(3, 2) == (0, 1)
    assert static_padding(2, 2) == (0, 0)
    assert static_padding(3, 1) == (1, 1)
    assert static_padding(1, 1) == (0, 0)
    # odd sizes: the static rule ignores the size, TensorFlow's does not (pad arg is W, H, T pairs)
    assert same_pad_arg((5, 7, 9), (3, 3, 3), (2, 2, 2)) == [0, 1, 0, 1, 0, 1]
    assert same_pad_arg((5, 7, 9), (3, 3, 3), (2, 2, 2), 'static') == [0, 1, 0, 1, 0, 1]
    assert same_pad_arg((5, 7, 9), (3, 3, 3), (2, 2, 2), 'tf_same') == [1, 1, 1, 1, 1, 1]
    with pytest.raises(ValueError, match='tf_same'):
        same_pad_arg((5, 7, 9), (3, 3, 3), (2, 2, 2), 'valid')
    with pytest.raises(ValueError, match='static'):
        timm.create_model('test_i3d', padding='same')


@pytest.mark.parametrize('kernel, stride', [(7, 2), (3, 2), (2, 2), (3, 1), (1, 1)])
def test_same_padding_equals_static_formula_on_divisible_sizes(kernel, stride):
    """The static rule, total max(k - s, 0), smaller half before, equals TensorFlow's whenever size % stride == 0."""
    for size in range(stride, 64, stride):
        total = max(kernel - stride, 0)
        assert same_padding(size, kernel, stride) == (total // 2, total - total // 2)
        b, a = same_padding(size, kernel, stride)
        assert (size + b + a - kernel) // stride + 1 == math.ceil(size / stride)


def _strided_conv_reference(unit, x, befores, out_sizes):
    """A stride-2 7x7x7 conv as a stride-1 "same" conv (pad 3 before) sampled at the window starts."""
    dense = F.conv3d(x, unit.conv3d.weight, padding='same')
    idx = [torch.arange(m) * 2 - p + 3 for m, p in zip(out_sizes, befores)]
    ref = dense[:, :, idx[0]][:, :, :, idx[1]][:, :, :, :, idx[2]]
    return unit.relu(unit.batch3d(ref))


@pytest.mark.parametrize('size', [6, 7, 8, 9, 13, 16])
def test_same_strided_conv_matches_tensorflow_reference(size):
    """TF "SAME" with stride s equals a stride-1 "same" conv sampled at the window starts TF uses."""
    torch.manual_seed(0)
    unit = Unit3d(2, 3, kernel_size=7, stride=2, padding='tf_same').eval()
    x = torch.randn(1, 2, size, size + 1, size + 2)
    with torch.no_grad():
        out = unit(x)
        out_sizes = [math.ceil(n / 2) for n in x.shape[2:]]
        ref = _strided_conv_reference(unit, x, [same_padding(n, 7, 2)[0] for n in x.shape[2:]], out_sizes)
    assert out.shape[2:] == tuple(out_sizes)
    assert torch.allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize('size', [6, 7, 8, 9, 13, 16])
def test_static_strided_conv_matches_reference(size):
    """The authors' rule: pad 2 before and 3 after whatever the size, so (n + 5 - 7) // 2 + 1 outputs."""
    torch.manual_seed(0)
    unit = Unit3d(2, 3, kernel_size=7, stride=2).eval()
    x = torch.randn(1, 2, size, size + 1, size + 2)
    with torch.no_grad():
        out = unit(x)
        out_sizes = [(n - 2) // 2 + 1 for n in x.shape[2:]]
        ref = _strided_conv_reference(unit, x, [2, 2, 2], out_sizes)
    assert out.shape[2:] == tuple(out_sizes)
    assert torch.allclose(out, ref, atol=1e-5)


def _brute_force_pool(x, kernel, stride, befores, afters):
    """Zero padding then ceil-mode windows, written out: a window starts at j * s - before, the last one
    must start inside the padded input, windows are cut at its end."""
    n = x.shape[2:]
    padded = [m + b + a for m, b, a in zip(n, befores, afters)]
    counts = []
    for size, k, s in zip(padded, kernel, stride):
        c = -(-(size - k) // s) + 1
        counts.append(c - 1 if (c - 1) * s >= size else c)
    xp = F.pad(x, [p for b, a in zip(reversed(befores), reversed(afters)) for p in (b, a)])
    out = torch.empty(*x.shape[:2], *counts)
    for i, j, l in itertools.product(*(range(c) for c in counts)):
        t0, h0, w0 = i * stride[0], j * stride[1], l * stride[2]
        out[:, :, i, j, l] = xp[:, :, t0:t0 + kernel[0], h0:h0 + kernel[1], w0:w0 + kernel[2]].amax(dim=(2, 3, 4))
    return out


@pytest.mark.parametrize('mode', ['static', 'tf_same'])
@pytest.mark.parametrize('kernel, stride', [((1, 3, 3), (1, 2, 2)), (3, 2), (2, 2), (3, 1)])
def test_pool_fast_path_equals_zero_padding(kernel, stride, mode):
    torch.manual_seed(0)
    fast = MaxPool3dSame(kernel, stride, nonnegative_input=True, padding=mode)
    plain = MaxPool3dSame(kernel, stride, padding=mode)
    for n in range(1, 9):
        x = torch.rand(1, 2, n, n + 1, n + 2)
        a, b = fast(x), plain(x)
        k, s = fast.kernel_size, fast.stride
        if mode == 'static':
            pads = [static_padding(kk, ss) for kk, ss in zip(k, s)]
        else:
            pads = [same_padding(m, kk, ss) for m, kk, ss in zip(x.shape[2:], k, s)]
        ref = _brute_force_pool(x, k, s, [p[0] for p in pads], [p[1] for p in pads])
        assert torch.equal(a, b) and torch.equal(b, ref), n


def _i3d_static_reference(model, x):
    """The tiny I3D's forward written with explicit zero pads of the authors' static rule (eval mode)."""
    def unit(u, v):
        k, s = u.conv3d.kernel_size, u.conv3d.stride
        pad = [p for kk, ss in zip(reversed(k), reversed(s)) for p in static_padding(kk, ss)]
        v = F.conv3d(F.pad(v, pad), u.conv3d.weight, stride=s)
        return F.relu(F.batch_norm(v, u.batch3d.running_mean, u.batch3d.running_var, u.batch3d.weight,
                                   u.batch3d.bias, False, 0.0, u.batch3d.eps))

    def pool(p, v):
        pads = [static_padding(kk, ss) for kk, ss in zip(p.kernel_size, p.stride)]
        return F.max_pool3d(F.pad(v, [q for b, a in reversed(pads) for q in (b, a)]), p.kernel_size, p.stride,
                            ceil_mode=True)

    def mixed(m, v):
        return torch.cat([unit(m.branch_0, v), unit(m.branch_1[1], unit(m.branch_1[0], v)),
                          unit(m.branch_2[1], unit(m.branch_2[0], v)), unit(m.branch_3[1], pool(m.branch_3[0], v))], 1)

    for name, module in model.named_children():
        if isinstance(module, Unit3d):
            x = unit(module, x)
        elif isinstance(module, MaxPool3dSame):
            x = pool(module, x)
        elif isinstance(module, i3d_mod.MixedBlock):
            x = mixed(module, x)
    return x


def test_i3d_static_padding_at_odd_size_matches_reference():
    """12x150x190: every strided layer sees sizes not divisible by its stride. The default (the authors'
    static rule) equals the explicit reference; TensorFlow's rule gives other features. Running the
    authors' backbone/i3d.py on the full i3d with the same seeded weights gave a max abs difference of
    0.0 at 12x150x190 and 16x224x224 (static) and 2.5e-5 at 12x150x190 (tf_same)."""
    torch.manual_seed(0)
    model = timm.create_model('test_i3d', num_classes=0).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            torch.nn.init.uniform_(m.running_mean, -0.1, 0.1)
            torch.nn.init.uniform_(m.running_var, 0.5, 1.5)
    tf_model = timm.create_model('test_i3d', num_classes=0, padding='tf_same').eval()
    tf_model.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 12, 150, 190)
    with torch.no_grad():
        out, ref, tf_out = model.forward_features(x), _i3d_static_reference(model, x), tf_model.forward_features(x)
    assert model.padding == 'static' and out.shape == ref.shape == (1, model.num_features, 2, 5, 6)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4)
    assert tf_out.shape != out.shape or not torch.allclose(tf_out, out, atol=1e-3)
    x = torch.randn(1, 3, 16, 64, 64)  # sizes divisible by every stride: both rules agree
    with torch.no_grad():
        assert torch.allclose(model.forward_features(x), tf_model.forward_features(x), atol=1e-6)


def test_i3d_padding_is_one_pad_per_strided_conv():
    """Only the strided stem conv pads with F.pad; all other layers pad inside conv / pool."""
    model = timm.create_model('test_i3d').eval()
    calls = []
    orig = F.pad

    def counting_pad(*args, **kwargs):
        calls.append(args[0].shape)
        return orig(*args, **kwargs)

    F.pad = counting_pad
    try:
        with torch.no_grad():
            model(_clip((1, 3, 16, 32, 32)))
    finally:
        F.pad = orig
    assert len(calls) == 1 and calls[0][1] == 3


def test_i3d_key_layout():
    keys = timm.create_model('test_i3d', num_classes=0).state_dict().keys()
    for prefix in ['conv3d_1a_7x7.conv3d.weight', 'conv3d_1a_7x7.batch3d.running_var', 'conv3d_2b_1x1.conv3d',
                   'conv3d_2c_3x3.batch3d', 'mixed_3b.branch_0.conv3d', 'mixed_3c.branch_1.1.batch3d',
                   'mixed_4f.branch_2.0.conv3d', 'mixed_5c.branch_3.1.conv3d.weight']:
        assert any(k.startswith(prefix) for k in keys), prefix
    assert not any(k.endswith('conv3d.bias') for k in keys)
    tops = {k.split('.')[0] for k in keys}
    assert tops == {'conv3d_1a_7x7', 'conv3d_2b_1x1', 'conv3d_2c_3x3'} | {
        f'mixed_{b}' for b in ('3b', '3c', '4b', '4c', '4d', '4e', '4f', '5b', '5c')}
    bn = timm.create_model('test_i3d').conv3d_1a_7x7.batch3d
    assert (bn.eps, bn.momentum) == (1e-5, 0.1)


# --- checkpoint filters ------------------------------------------------------------------------

def test_i3d_filter_maps_reference_head_to_fc():
    model = timm.create_model('test_i3d', num_classes=6)
    sd = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith('fc.')}
    sd['conv3d_0c_1x1.conv3d.weight'] = torch.randn(6, model.num_features, 1, 1, 1)
    sd['conv3d_0c_1x1.conv3d.bias'] = torch.randn(6)
    model.load_state_dict(i3d_mod.checkpoint_filter_fn(sd, model), strict=True)
    assert torch.equal(model.fc.weight, sd['conv3d_0c_1x1.conv3d.weight'].flatten(1))


def test_s3d_filter_maps_linear_head_to_conv():
    model = timm.create_model('test_s3d', num_classes=6)
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith('classifier.')}
    sd['fc.weight'], sd['fc.bias'] = torch.randn(6, model.num_features), torch.randn(6)
    model.load_state_dict(s3d_mod.checkpoint_filter_fn(sd, model), strict=True)
    assert torch.equal(model.classifier[1].weight.flatten(1), sd['fc.weight'])


def test_keys_under_matches_modules_not_name_prefixes():
    keys = ['fc.weight', 'fc2.weight', 'fc', 'layer.fc.bias', 'classifier.1.bias']
    assert keys_under(keys, ['fc']) == ['fc.weight', 'fc']
    assert keys_under(keys, ['classifier.1', 'fc2']) == ['fc2.weight', 'classifier.1.bias']
    assert keys_under(keys, []) == []


def test_remap_classifier_renames_reshapes_and_keeps_order():
    w5, w2, b = torch.randn(4, 6, 1, 1, 1), torch.randn(4, 6), torch.randn(4)
    sd = {'stem.weight': torch.randn(2), 'head.conv.weight': w5, 'head.conv.bias': b, 'head.conv2.weight': w5}
    out = remap_classifier(sd, 'head.conv', 'fc', target_ndim=2)
    assert list(out) == ['stem.weight', 'fc.weight', 'fc.bias', 'head.conv2.weight']
    assert torch.equal(out['fc.weight'], w5.flatten(1)) and out['fc.bias'] is b
    assert out['head.conv2.weight'] is w5  # a module whose name only starts like the source is untouched
    back = remap_classifier({'fc.weight': w2, 'fc.bias': b}, 'fc', 'classifier.1', target_ndim=5)
    assert back['classifier.1.weight'].shape == (4, 6, 1, 1, 1) and torch.equal(back['classifier.1.weight'].flatten(1), w2)
    with pytest.raises(ValueError, match='target_ndim'):
        remap_classifier(sd, 'fc', 'fc', target_ndim=3)


def test_resnet_filter_flattens_conv_head():
    model = timm.create_model('test_r3d', num_classes=6)
    sd = dict(model.state_dict())
    sd['fc.weight'] = torch.randn(6, model.num_features, 1, 1, 1)
    model.load_state_dict(resnet3d_mod.checkpoint_filter_fn(sd, model), strict=True)


# --- builder ---------------------------------------------------------------------------------

def test_pretrained_features_only_loads_weights_before_the_feature_wrap(tmp_path):
    """pretrained=True with features_only=True: the checkpoint goes through the model file's filter
    into the plain model, then the wrapper is built on it and keeps the tag's pretrained config."""
    widths = dict(stem_widths=(8, 8, 8), mixed_widths=[(4,) * 6] * 9)
    src = timm.create_model('i3d', num_classes=6, **widths)
    sd = {k: v for k, v in src.state_dict().items() if not k.startswith('fc.')}
    sd['conv3d_0c_1x1.conv3d.weight'] = src.fc.weight[:, :, None, None, None].clone()  # reference-style head
    sd['conv3d_0c_1x1.conv3d.bias'] = src.fc.bias.clone()
    path = tmp_path / 'i3d.pth'
    torch.save({'state_dict': sd}, path)
    model = timm.create_model('i3d.fima_ucf101', pretrained=True, features_only=True, out_indices=(4,),
                              pretrained_cfg_overlay=dict(file=str(path)), **widths)
    assert type(model).__name__ == 'FeatureGetterNet'
    assert model.pretrained_cfg['tag'] == 'fima_ucf101' and model.pretrained_cfg['metrics']['ucf101_finetune'] == 84.2
    src.eval(), model.eval()
    x = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x)[0], src.forward_features(x))


def test_pretrained_file_loads_through_filter_and_input_adaptation(tmp_path):
    """End to end with the real loader: a reference-style I3D checkpoint (conv head) from a local file."""
    src = timm.create_model('test_i3d', num_classes=6)
    sd = {k: v for k, v in src.state_dict().items() if not k.startswith('fc.')}
    sd['conv3d_0c_1x1.conv3d.weight'] = src.fc.weight[:, :, None, None, None].clone()
    sd['conv3d_0c_1x1.conv3d.bias'] = src.fc.bias.clone()
    path = tmp_path / 'i3d.pth'
    torch.save({'state_dict': sd}, path)
    model = fima_models.create_model('test_i3d', pretrained=True, num_classes=6,
                                     pretrained_cfg_overlay=dict(file=str(path)))
    for (k, a), b in zip(model.state_dict().items(), src.state_dict().values()):
        assert torch.equal(a, b), k
    grey = fima_models.create_model('test_i3d', pretrained=True, num_classes=6, in_chans=1,
                                    pretrained_cfg_overlay=dict(file=str(path)))
    w = grey.conv3d_1a_7x7.conv3d.weight
    assert torch.allclose(w, src.conv3d_1a_7x7.conv3d.weight.sum(1, keepdim=True))


def test_build_video_model_cfg_resolution():
    model = build_video_model(i3d_mod.I3D, 'test_i3d', stem_widths=(8, 8, 12),
                              mixed_widths=[(4,) * 6] * 9, pretrained_cfg=dict(num_classes=5, input_size=(2, 8, 32, 32)))
    assert model.num_classes == 5 and model.in_chans == 2
    model = timm.create_model('test_r3d', pretrained_cfg_overlay=dict(num_classes=3))
    assert model.num_classes == 3 and model.pretrained_cfg['architecture'] == 'test_r3d'
    tv = _meta_model('r3d_18.tv_k400')
    assert tv.num_classes == 400 and tv.pretrained_cfg['url'].endswith('r3d_18-b3b3357e.pth')
    default = _meta_model('r3d_18')  # default tag: the published torchvision weights, with their classifier
    assert default.pretrained_cfg['tag'] == 'tv_k400' and default.num_classes == 400
    ssl = _meta_model('r3d_18.fima_k400')  # a self-supervised backbone has no classifier
    assert ssl.pretrained_cfg['tag'] == 'fima_k400' and ssl.num_classes == 0
    assert _meta_model('r3d_18', num_classes=9).num_classes == 9


# --- adapt_input_conv3d -----------------------------------------------------------------------

def test_adapt_input_conv3d_single_channel_sums():
    w = torch.randn(4, 3, 3, 5, 5)
    x = torch.randn(1, 1, 4, 8, 8)
    assert torch.allclose(F.conv3d(x, adapt_input_conv3d(w, 1)), F.conv3d(x.expand(-1, 3, -1, -1, -1), w), atol=1e-5)


def test_adapt_input_conv3d_repeat_rescales():
    w = torch.randn(4, 3, 1, 3, 3)
    w6 = adapt_input_conv3d(w, 6)
    x = torch.randn(1, 3, 2, 6, 6)
    assert torch.allclose(F.conv3d(torch.cat([x, x], 1), w6), F.conv3d(x, w), atol=1e-5)
    w2 = adapt_input_conv3d(w, 2)
    assert torch.allclose(w2, w[:, :2] * 1.5)
    assert adapt_input_conv3d(w, 3) is w
    assert adapt_input_conv3d(w.half(), 4).dtype == torch.float16


def test_adapt_input_conv3d_errors():
    with pytest.raises(ValueError, match='5-D'):
        adapt_input_conv3d(torch.randn(4, 3, 3, 3), 1)
    with pytest.raises(ValueError, match='in_chans'):
        adapt_input_conv3d(torch.randn(4, 3, 1, 3, 3), 0)


# --- pretrained configs ------------------------------------------------------------------------

def _tags(arch):
    return list(timm.models._registry._model_default_cfgs[arch].tags)


def test_default_tags_and_tag_sets():
    for arch in ('r2plus1d_18', 'r3d_18', 's3d', 'i3d'):
        assert {'fima_k400', 'fima_ucf101', 'moco_ucf101'} <= set(_tags(arch))
    for arch in ('r3d_18', 'mc3_18', 'r2plus1d_18', 's3d'):  # the published weights are the default
        assert _tags(arch)[0] == 'tv_k400'
    assert _tags('i3d')[0] == 'fima_k400' and _tags('i3d_tf')[0] == 'deepmind_k400'


@pytest.mark.parametrize('arch', ['r2plus1d_18', 'r3d_18', 's3d', 'i3d'])
def test_self_supervised_cfgs(arch):
    for tag, method, dataset in [('fima_k400', 'fima', 'kinetics400'), ('fima_ucf101', 'fima', 'ucf101'),
                                 ('moco_ucf101', 'moco', 'ucf101')]:
        cfg = get_pretrained_cfg(f'{arch}.{tag}')
        assert (cfg.method, cfg.dataset, cfg.num_classes, cfg.published) == (method, dataset, 0, False)
        assert cfg.hf_hub_id.endswith(f'/{arch}.{tag}') and cfg.num_frames == 16
        assert cfg.input_size[:2] == (3, 16) and cfg.description and cfg.paper_ids == 'arXiv:2309.00297'
        size = 224 if arch in ('s3d', 'i3d') else 112
        assert cfg.input_size[2:] == (size, size)


def test_i3d_paper_metrics():
    assert get_pretrained_cfg('i3d.fima_ucf101').metrics == {
        'ucf101_finetune': 84.2, 'hmdb51_finetune': 57.8, 'ucf101_linear': 75.3, 'hmdb51_linear': 42.8}
    assert get_pretrained_cfg('i3d.moco_ucf101').metrics == {
        'ucf101_finetune': 76.7, 'hmdb51_finetune': 48.8, 'ucf101_linear': 58.1, 'hmdb51_linear': 26.7}


@pytest.mark.parametrize('arch', ['r3d_18', 'mc3_18', 'r2plus1d_18', 's3d'])
def test_tv_cfgs(arch):
    cfg = get_pretrained_cfg(f'{arch}.tv_k400')
    assert cfg.published and cfg.method == 'supervised' and cfg.dataset == 'kinetics400'
    assert cfg.num_classes == 400 and cfg.url.startswith('https://download.pytorch.org/models/')
    assert cfg.mean == (0.43216, 0.394666, 0.37645) and cfg.std == (0.22803, 0.22145, 0.216989)
    assert set(cfg.metrics) == {'kinetics400_acc1', 'kinetics400_acc5'}


def test_pretrained_cfg_dict_reads_models_configs_and_mappings():
    from timm.models import PretrainedCfg
    from torch import nn

    from fima_models.models import pretrained_cfg_dict

    model = fima_models.create_model('test_r2plus1d')
    assert pretrained_cfg_dict(model)['architecture'] == 'test_r2plus1d'
    assert pretrained_cfg_dict(PretrainedCfg(url='u'))['url'] == 'u'
    given = {'mean': (0.5,)}
    copy = pretrained_cfg_dict(given)
    assert copy == given and copy is not given
    assert pretrained_cfg_dict(None) == {}
    assert pretrained_cfg_dict(nn.Sequential()) == {}
