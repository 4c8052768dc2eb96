"""Hand-computed checks of FIMA's losses, foreground mask, crop geometry, queue, momentum helpers and
decoder, each derived from the description of the authors' step in docs/pretraining.md ("What one step computes"); plus reference numbers
obtained by running the authors' code (github.com/ZMHH-H/FIMA, moco/loss.py and moco/builder.py)
on the same seeded inputs in a scratch folder (their code is not part of this repository)."""

from __future__ import annotations

import math

import pytest
import torch

import torch.nn.functional as F

from train.fima.heads import CrossAttentionLayer, MotionDecoder, Projector, sinusoidal_position_encoding
from train.fima.losses import (
    cell_centers,
    cell_diagonals,
    dense_motion_loss,
    dense_positive_mask,
    foreground_mask,
    frame_motion_loss,
    global_instance_loss,
    info_nce,
)
from train.fima.momentum import FeatureQueue, momentum_update, shuffled_forward

FULL = [0.0, 0.0, 1.0, 1.0]
FLIPPED = [1.0, 0.0, 0.0, 1.0]


# ----------------------------------------------------------------------------- InfoNCE
def test_info_nce_single_negative_hand_value() -> None:
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[1.0, 0.0]])
    neg = torch.tensor([[0.0, 1.0]])
    # tau 0.5 -> logits: positive 1/tau = 2, negative 0 -> -log(e^2 / (e^2 + 1)) = log(1 + e^-2)
    assert info_nce(q, k, neg, 0.5).item() == pytest.approx(math.log1p(math.exp(-2.0)), rel=1e-6)
    # tau = 1 and two negatives with similarities 0 and -1
    neg2 = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    expected = -1.0 + math.log(math.e + 1.0 + math.exp(-1.0))
    assert info_nce(q, k, neg2, 1.0).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_without_negatives_is_zero() -> None:
    q = torch.tensor([[0.6, 0.8]])
    assert info_nce(q, q, None, 0.1).item() == pytest.approx(0.0, abs=1e-7)


def test_global_loss_enqueues_n_keys_between_the_two_directions() -> None:
    """Authors' step (docs/pretraining.md): InfoNCE(q_m, k_n, queue); enqueue k_n; InfoNCE(q_n, k_m, queue now holding k_n); enqueue k_m."""
    g = torch.Generator().manual_seed(0)
    q_m, q_n, k_m, k_n = (F.normalize(torch.randn(2, 4, generator=g), dim=1) for _ in range(4))
    queue = FeatureQueue(3, 4)
    start = queue.queue.clone()
    got = global_instance_loss(q_m, q_n, k_m, k_n, queue, 0.1)
    second = start.clone()
    second[0:2] = k_n  # slots 0, 1 now hold this batch's n keys
    want = 0.5 * (info_nce(q_m, k_n, start, 0.1) + info_nce(q_n, k_m, second, 0.1))
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    # the old order (both directions against the untouched queue) gives another number
    assert got.item() != pytest.approx(0.5 * (info_nce(q_m, k_n, start, 0.1) + info_nce(q_n, k_m, start, 0.1)).item())
    # afterwards: k_n in slots 0, 1, then k_m wrapped around into slots 2, 0
    assert torch.allclose(queue.queue, torch.stack([k_m[1], k_n[1], k_m[0]]))
    assert int(queue.ptr) == 1


# ----------------------------------------------------------------------------- foreground mask
def test_foreground_mask_median_even_grid() -> None:
    rgb = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 1, 2, 2)
    diff = torch.tensor([[0.0, 0.0], [0.0, 1.0]]).reshape(1, 1, 1, 2, 2)
    # scores 1, 2, 3, 5; torch's median of 4 values is the lower middle (2): cells above it are 3, 5
    assert foreground_mask(rgb, diff).tolist() == [[[False, False], [True, True]]]


def test_foreground_mask_averages_channels_and_time() -> None:
    # channel/time averages: cell values (0+2)/2 ... -> scores 1..9 on a 3x3 grid; median 5
    base = torch.arange(1.0, 10.0).reshape(3, 3)
    rgb = torch.stack([base * 0, base * 2]).reshape(1, 2, 1, 3, 3).repeat(1, 1, 2, 1, 1)  # mean over C = base
    diff = torch.zeros(1, 3, 2, 3, 3)
    mask = foreground_mask(rgb, diff)
    assert mask.sum().item() == 4
    assert mask[0].flatten().tolist() == [False] * 5 + [True] * 4


def test_foreground_mask_rejects_mismatched_grids() -> None:
    with pytest.raises(ValueError, match="share batch and grid"):
        foreground_mask(torch.zeros(1, 1, 1, 2, 2), torch.zeros(1, 1, 1, 3, 3))


# ----------------------------------------------------------------------------- geometry
def test_cell_centers_full_and_flipped_box() -> None:
    boxes = torch.tensor([FULL, FLIPPED])
    c = cell_centers(boxes, 2, 2)
    assert c[0].tolist() == [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]
    assert c[1].tolist() == [[0.75, 0.25], [0.25, 0.25], [0.75, 0.75], [0.25, 0.75]]
    diag = cell_diagonals(boxes, 2, 2)
    assert diag.tolist() == pytest.approx([math.sqrt(0.5), math.sqrt(0.5)])


def test_dense_positives_identical_crops_are_identity() -> None:
    b = torch.tensor([FULL])
    pos = dense_positive_mask(b, b, None, None, 2, 2)
    # neighbours are 0.5 apart, threshold 0.7 * 0.707 = 0.495: only the same cell
    assert torch.equal(pos[0], torch.eye(4, dtype=torch.bool))


def test_dense_positives_flip_mirrors_columns() -> None:
    pos = dense_positive_mask(torch.tensor([FULL]), torch.tensor([FLIPPED]), None, None, 2, 2)
    expected = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=torch.bool)
    assert torch.equal(pos[0], expected)


def test_dense_positives_zoomed_crop_and_foreground() -> None:
    q_box = torch.tensor([[0.0, 0.0, 0.5, 0.5]])  # top-left quarter: cell centres at 0.125 / 0.375
    k_box = torch.tensor([FULL])  # cell centres at 0.25 / 0.75; larger diagonal 0.707 -> threshold 0.495
    pos = dense_positive_mask(q_box, k_box, None, None, 2, 2)
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(pos[0], expected)
    fg_k = torch.tensor([[[False, True], [True, True]]])  # key cell 0 is background
    fg_q = torch.tensor([[[True, True], [True, False]]])  # query cell 3 is background
    pos_fg = dense_positive_mask(q_box, k_box, fg_q, fg_k, 2, 2)
    expected_fg = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(pos_fg[0], expected_fg)


# ----------------------------------------------------------------------------- dense / frame losses
def _dense_hand_case() -> tuple[torch.Tensor, torch.Tensor]:
    """N=2 samples, D=2, a 1x2 grid, two time indices: predictions and keys with simple similarities."""
    pred = torch.tensor([
        [[1.0, 0.0], [0.0, 1.0]],  # sample 0: cell 0 = (1, 0), cell 1 = (0, 1)
        [[1.0, 0.0], [0.0, 1.0]],  # sample 1: the same
    ]).transpose(1, 2).reshape(2, 2, 1, 2)  # (N, D, H, W)
    keys = torch.tensor([
        [[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]],  # sample 0: t0 cells (1,0) (0,1); t1 (0,1) (0,1)
        [[[0.0, 1.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]],  # sample 1: t0 (0,1) (0,1); t1 (1,0) (1,0)
    ]).transpose(2, 3).reshape(2, 2, 2, 1, 2)  # (N, T, D, H, W)
    return pred, keys


def test_dense_motion_loss_sum_of_positives_over_all_candidates() -> None:
    """Authors' step (docs/pretraining.md): cell loss -log(sum_{j in P(i)} e^{s_ij/tau} / sum_{all candidates} e^{s_ic/tau}); candidates are
    the keys of every sample at both time indices, positives included. tau = 1."""
    pred, keys = _dense_hand_case()
    pos = torch.zeros(2, 2, 2, dtype=torch.bool)
    pos[0, 0, 0] = pos[0, 0, 1] = True  # sample 0, cell 0: both key cells at t0 are positives
    # cell (1,0) against the 8 candidate cells [s0t0: 1, 0 | s0t1: 0, 0 | s1t0: 0, 0 | s1t1: 1, 1]
    numerator = math.e + 1.0
    denominator = 3 * math.e + 5.0
    expected = -math.log(numerator / denominator)
    assert dense_motion_loss(pred, keys, 0, pos, None, 1.0).item() == pytest.approx(expected, rel=1e-6)
    # a queue key (0, 1) adds e^0 to the denominator
    queue = torch.tensor([[0.0, 1.0]])
    expected_q = -math.log(numerator / (denominator + 1.0))
    assert dense_motion_loss(pred, keys, 0, pos, queue, 1.0).item() == pytest.approx(expected_q, rel=1e-6)
    # the other time index: positives are the t1 cells of sample 0, (0, 1) (0, 1), similarity 0 each
    expected_t1 = -math.log(2.0 / denominator)
    assert dense_motion_loss(pred, keys, 1, pos, None, 1.0).item() == pytest.approx(expected_t1, rel=1e-6)


def test_dense_motion_loss_means_over_cells_then_samples() -> None:
    """A sample's loss is the mean over its cells with a positive; the term the mean over samples with one."""
    pred, keys = _dense_hand_case()
    pos = torch.zeros(2, 2, 2, dtype=torch.bool)
    pos[0, 0, 0] = True  # sample 0 cell 0 -> key (1,0): e^1
    pos[0, 1, 1] = True  # sample 0 cell 1 (0,1) -> key (0,1): e^1
    pos[1, 1, 0] = True  # sample 1 cell 1 (0,1) -> key (0,1): e^1; sample 1 cell 0 has none
    den_c0 = 3 * math.e + 5.0  # (1,0): [1, 0 | 0, 0 | 0, 0 | 1, 1]
    den_c1 = 5 * math.e + 3.0  # (0,1): [0, 1 | 1, 1 | 1, 1 | 0, 0]
    l00, l01, l11 = -math.log(math.e / den_c0), -math.log(math.e / den_c1), -math.log(math.e / den_c1)
    expected = 0.5 * ((l00 + l01) / 2 + l11)
    assert dense_motion_loss(pred, keys, 0, pos, None, 1.0).item() == pytest.approx(expected, rel=1e-6)
    pooled_over_cells = (l00 + l01 + l11) / 3  # what pooling all cells of the batch would give
    assert expected != pytest.approx(pooled_over_cells)


def test_dense_motion_loss_without_any_positive_is_the_authors_near_zero() -> None:
    """No positive anywhere: mean over samples of -log(S / (S + 1e-3)), S = sum of e^{s_ij/tau} over the own
    sample's query x key cells at t (the authors' fallback; almost 0)."""
    pred, keys = _dense_hand_case()
    pos = torch.zeros(2, 2, 2, dtype=torch.bool)
    s0 = 2 * math.e + 2.0  # sample 0 at t0: (1,0).(1,0)=1, (1,0).(0,1)=0, (0,1).(1,0)=0, (0,1).(0,1)=1
    s1 = 2 * math.e + 2.0  # sample 1 at t0: keys (0,1) (0,1): cell 0 -> 0, 0; cell 1 -> 1, 1
    expected = 0.5 * (math.log1p(1e-3 / s0) + math.log1p(1e-3 / s1))
    got = dense_motion_loss(pred, keys, 0, pos, None, 1.0)
    assert got.item() == pytest.approx(expected, rel=1e-5) and 0 < got.item() < 1e-3


# (seed, queue) -> the authors' Dense_Contrastive_Loss (tau 0.1, ratio 0.7) on _seeded_dense_case, run in a
# scratch folder with their moco/loss.py
AUTHORS_DENSE = {
    (0, False): 15.48674, (0, True): 15.48691, (1, False): 11.01007, (1, True): 11.01012,
    (2, False): 14.20121, (2, True): 14.2016, (3, False): 15.53189, (3, True): 15.53209,
    (4, False): 11.71527, (4, True): 11.71603,
}


def _seeded_dense_case(seed: int):
    """N=3 samples, D=8, 3x3 grid, two time indices, boxes (sample 0's key view flipped), random
    foreground, a queue of 5."""
    g = torch.Generator().manual_seed(seed)
    n, d, h, w = 3, 8, 3, 3
    pred = F.normalize(torch.randn(n, d, h, w, generator=g), dim=1)
    keys = F.normalize(torch.randn(n, 2, d, h, w, generator=g), dim=1)
    lo = torch.rand(n, 2, 2, generator=g) * 0.4
    hi = lo + 0.4 + torch.rand(n, 2, 2, generator=g) * 0.2
    boxes = torch.cat([lo, hi], dim=2)  # (N, view, 4): x1, y1, x2, y2
    boxes[0, 1] = boxes[0, 1, [2, 1, 0, 3]]
    fg = torch.rand(n, 2, h, w, generator=g) > 0.3
    queue = F.normalize(torch.randn(5, d, generator=g), dim=1)
    return pred, keys, boxes, fg, queue


@pytest.mark.parametrize("seed, with_queue", sorted(AUTHORS_DENSE))
def test_dense_motion_loss_equals_the_authors_code(seed: int, with_queue: bool) -> None:
    pred, keys, boxes, fg, queue = _seeded_dense_case(seed)
    pos = dense_positive_mask(boxes[:, 0], boxes[:, 1], fg[:, 0], fg[:, 1], 3, 3, 0.7)
    got = dense_motion_loss(pred, keys, 0, pos, queue if with_queue else None, 0.1)
    assert got.item() == pytest.approx(AUTHORS_DENSE[(seed, with_queue)], rel=2e-6)


def test_frame_motion_loss_hand_value() -> None:
    """Authors' step (docs/pretraining.md): for n's segment s of sample b the candidates are l_s of n for b (positive), n's other segment of
    every sample, m's segments of every sample and the queue; l_s of n for the other samples is not one."""
    pred = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])  # N=2, S=2, D=2
    target = pred.clone()
    source = torch.tensor([[[-1.0, 0.0], [0.0, -1.0]], [[0.0, -1.0], [-1.0, 0.0]]])
    # query (b0, s0) = (1,0): positive target[0,0] -> 1; other segment of every sample: target[0,1] (0,1) -> 0,
    # target[1,1] (1,0) -> 1; m: (-1,0) -> -1, (0,-1) -> 0, (0,-1) -> 0, (-1,0) -> -1
    # (target[1,0] = (0,1) is left out). Every query sees the same multiset by symmetry.
    expected = -1.0 + math.log(2 * math.e + 3.0 + 2 * math.exp(-1.0))
    assert frame_motion_loss(pred, target, source, None, 1.0).item() == pytest.approx(expected, rel=1e-6)
    with_target_of_others = -1.0 + math.log(2 * math.e + 4.0 + 2 * math.exp(-1.0))  # the old candidate set
    assert frame_motion_loss(pred, target, source, None, 1.0).item() != pytest.approx(with_target_of_others)
    queue = torch.tensor([[1.0, 0.0]])  # adds e^1 for queries (1,0), e^0 for queries (0,1)
    e_a = -1.0 + math.log(3 * math.e + 3.0 + 2 * math.exp(-1.0))
    e_b = -1.0 + math.log(2 * math.e + 4.0 + 2 * math.exp(-1.0))
    assert frame_motion_loss(pred, target, source, queue, 1.0).item() == pytest.approx(0.5 * (e_a + e_b), rel=1e-6)


# seed -> the authors' compute_logits_local + cross-entropy, averaged over the two segments (tau 0.1)
AUTHORS_FRAME = {0: 6.081542, 1: 7.769484, 2: 5.304855}


@pytest.mark.parametrize("seed", sorted(AUTHORS_FRAME))
def test_frame_motion_loss_equals_the_authors_code(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    pred, target, source = (F.normalize(torch.randn(3, 2, 8, generator=g), dim=2) for _ in range(3))
    queue = F.normalize(torch.randn(6, 8, generator=g), dim=1)
    assert frame_motion_loss(pred, target, source, queue, 0.1).item() == pytest.approx(AUTHORS_FRAME[seed], rel=2e-6)


# ----------------------------------------------------------------------------- queue, momentum, shuffle
def test_queue_wraps_around() -> None:
    queue = FeatureQueue(5, 2)
    queue.enqueue(torch.full((3, 2), 1.0))
    assert int(queue.ptr) == 3
    queue.enqueue(torch.arange(8.0).reshape(4, 2))  # rows go to slots 3, 4, 0, 1
    assert int(queue.ptr) == 2
    assert queue.queue[:, 0].tolist() == [4.0, 6.0, 1.0, 0.0, 2.0]
    snapshot = queue.keys
    queue.enqueue(torch.full((7, 2), 9.0))  # more than the size: the last 5 fill every slot
    assert torch.equal(queue.queue, torch.full((5, 2), 9.0))
    assert int(queue.ptr) == (2 + 7) % 5
    assert snapshot[0, 0].item() == 4.0  # keys is a copy, unaffected by later writes


def test_momentum_update_hand_value() -> None:
    online = torch.nn.Linear(1, 1, bias=False)
    target = torch.nn.Linear(1, 1, bias=False)
    online.weight.data.fill_(1.0)
    target.weight.data.fill_(0.0)
    momentum_update(online, target, 0.9)
    assert target.weight.item() == pytest.approx(0.1)
    momentum_update(online, target, 0.9)
    assert target.weight.item() == pytest.approx(0.19)


def test_momentum_update_rounds_like_the_authors() -> None:
    """Their EMA is ``k * m + q * (1 - m)``, each product rounded to float32 before the sum; bit for bit."""
    g = torch.Generator().manual_seed(0)
    online, target = torch.nn.Linear(100, 100), torch.nn.Linear(100, 100)
    with torch.no_grad():
        for p in list(online.parameters()) + list(target.parameters()):
            p.copy_(torch.randn(p.shape, generator=g))
    expected = [t.detach() * 0.999 + o.detach() * (1.0 - 0.999) for o, t in zip(online.parameters(), target.parameters())]
    momentum_update(online, target, 0.999)
    assert all(torch.equal(t, e) for t, e in zip(target.parameters(), expected))


def test_shuffled_forward_split_bn_and_order() -> None:
    def centre(x: torch.Tensor) -> torch.Tensor:  # batch-statistics dependent, like BatchNorm
        return x - x.mean(dim=0, keepdim=True)

    x = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    # one group: identical to the un-shuffled forward
    torch.manual_seed(0)
    assert torch.allclose(shuffled_forward(centre, x, splits=1), centre(x))
    # two groups: each sample is centred within the group the shared permutation put it in
    torch.manual_seed(1)
    out = shuffled_forward(centre, x, splits=2)
    torch.manual_seed(1)
    perm = torch.randperm(4)
    groups = [perm[:2], perm[2:]]
    expected = torch.empty_like(x)
    for g in groups:
        expected[g] = x[g] - x[g].mean(dim=0, keepdim=True)
    assert torch.allclose(out, expected)


# ----------------------------------------------------------------------------- heads
def test_sinusoidal_position_encoding_hand_value() -> None:
    # docs/pretraining.md: token p, channel 2i: sin(p / 10000^(2i/d)), channel 2i+1: cos of the same; d = 4
    pe = sinusoidal_position_encoding(3, 4)
    for p in range(3):
        assert pe[p].tolist() == pytest.approx([math.sin(p), math.cos(p), math.sin(p / 100), math.cos(p / 100)], abs=1e-6)
    with pytest.raises(ValueError, match="even"):
        sinusoidal_position_encoding(2, 5)


def test_projector_pooled_equals_dense_of_mean() -> None:
    proj = Projector(6, 10, 4)
    fmap = torch.randn(2, 6, 2, 3, 3)
    assert proj.dense(fmap).shape == (2, 4, 2, 3, 3)
    pooled = proj.pooled(fmap)
    assert torch.allclose(pooled, proj.dense(fmap.mean(dim=(2, 3, 4), keepdim=True)).flatten(1), atol=1e-6)
    assert torch.allclose(proj.pooled(fmap.mean(dim=(2, 3, 4))), pooled, atol=1e-6)


def _reference_decoder(dec: MotionDecoder, source: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """The decoder of docs/pretraining.md written out with plain tensor algebra (eval mode, no dropout): 1x1 conv in, 1-D sine
    encoding of the cell index, target [cls; m tokens], memory n tokens, per layer x + CrossAttn(LN(x), mem)
    and x + FFN(LN(x)), no self-attention, no final norm, 1x1 conv out. Returns (B, C, 1 + HW)."""
    b, c, h, w = source.shape
    d = dec.dim
    pe = torch.zeros(h * w, d)
    for p in range(h * w):
        for i in range(0, d, 2):
            angle = p / 10000 ** (i / d)
            pe[p, i], pe[p, i + 1] = math.sin(angle), math.cos(angle)

    def tokens(fmap: torch.Tensor) -> torch.Tensor:
        x = torch.einsum("oc,bcp->bpo", dec.embed_in.weight[:, :, 0, 0], fmap.flatten(2)) + dec.embed_in.bias
        return x + pe

    x = torch.cat([dec.cls_token.expand(b, 1, d), tokens(source)], dim=1)
    mem = tokens(memory)
    for layer in dec.layers:
        attn = layer.cross_attn
        heads = attn.num_heads
        wq, wk, wv = attn.in_proj_weight.chunk(3)
        bq, bk, bv = attn.in_proj_bias.chunk(3)
        y = F.layer_norm(x, (d,), layer.attn_norm.weight, layer.attn_norm.bias)
        q = (y @ wq.t() + bq).reshape(b, -1, heads, d // heads).transpose(1, 2)
        k = (mem @ wk.t() + bk).reshape(b, -1, heads, d // heads).transpose(1, 2)
        v = (mem @ wv.t() + bv).reshape(b, -1, heads, d // heads).transpose(1, 2)
        att = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(d // heads), dim=-1) @ v
        x = x + att.transpose(1, 2).reshape(b, -1, d) @ attn.out_proj.weight.t() + attn.out_proj.bias
        y = F.layer_norm(x, (d,), layer.ffn_norm.weight, layer.ffn_norm.bias)
        x = x + layer.ffn_out(torch.relu(layer.ffn_in(y)))
    return torch.einsum("oc,bpc->bop", dec.embed_out.weight[:, :, 0, 0], x) + dec.embed_out.bias[:, None]


def test_motion_decoder_equals_the_written_out_formula() -> None:
    torch.manual_seed(0)
    dec = MotionDecoder(in_dim=6, dim=8, heads=2, ffn_dim=16, layers=2, dropout=0.1).eval()
    with torch.no_grad():
        dec.cls_token.normal_()  # a non-zero cls, so its path is checked too
        for layer in dec.layers:  # distinct layers and non-trivial norms
            for p in layer.parameters():
                p.add_(0.1 * torch.randn_like(p))
        src, mem = torch.randn(2, 6, 2, 3), torch.randn(2, 6, 2, 3)
        cls, cells = dec(src, mem)
        ref = _reference_decoder(dec, src, mem)
    assert cls.shape == (2, 6) and cells.shape == (2, 6, 2, 3)
    assert torch.allclose(cls, ref[:, :, 0], atol=1e-5)
    assert torch.allclose(cells, ref[:, :, 1:].reshape(2, 6, 2, 3), atol=1e-5)


def test_motion_decoder_has_no_self_attention_and_the_authors_init() -> None:
    """Without self-attention the cls output depends on n only and each predicted cell on its own m cell and
    n; cls starts at zero; the layers start as copies of one layer (the authors' _get_clones); no final norm."""
    torch.manual_seed(0)
    dec = MotionDecoder(in_dim=6, dim=8, heads=2, ffn_dim=16, layers=2, dropout=0.0).eval()
    assert torch.count_nonzero(dec.cls_token) == 0 and dec.segment_embed is None
    assert all(isinstance(layer, CrossAttentionLayer) for layer in dec.layers)
    first, second = (dict(layer.named_parameters()) for layer in dec.layers)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in dec.modules()) == 2 * len(dec.layers)
    assert sum(isinstance(m, torch.nn.MultiheadAttention) for m in dec.modules()) == len(dec.layers)
    src, mem = torch.randn(1, 6, 2, 2), torch.randn(1, 6, 2, 2)
    with torch.no_grad():
        cls, cells = dec(src, mem)
        changed = src.clone()
        changed[:, :, 0, 1] += 1.0  # change m's cell 1
        cls2, cells2 = dec(changed, mem)
    assert torch.allclose(cls, cls2)
    moved = (cells2 - cells).abs().amax(dim=1).flatten() > 1e-6
    assert moved.tolist() == [False, True, False, False]


def test_motion_decoder_segment_embedding_option() -> None:
    torch.manual_seed(0)
    dec = MotionDecoder(in_dim=6, dim=8, heads=2, ffn_dim=16, layers=1, dropout=0.0, segment_embedding=True).eval()
    src, mem = torch.randn(2, 6, 3, 3), torch.randn(2, 6, 3, 3)
    with torch.no_grad():
        cls0, _ = dec(src, mem, torch.tensor([0, 0]))
        cls1, _ = dec(src, mem, torch.tensor([1, 1]))
    assert not torch.allclose(cls0, cls1)  # same inputs, different segment -> different prediction
    with pytest.raises(ValueError, match="segment"):
        dec(src, mem)


def test_losses_keep_float32_inside_bf16_autocast() -> None:
    """Under bf16 autocast the losses give their float32 values (their logits need float32's range)."""
    gen = torch.Generator().manual_seed(0)
    pred = F.normalize(torch.randn(2, 8, 2, 2, generator=gen), dim=1)
    keys = F.normalize(torch.randn(2, 2, 8, 2, 2, generator=gen), dim=2)  # (N, T, D, H, W)
    pos = torch.rand(2, 4, 4, generator=gen) > 0.5
    queue = F.normalize(torch.randn(5, 8, generator=gen), dim=1)
    q, k = F.normalize(torch.randn(3, 8, generator=gen), dim=1), F.normalize(torch.randn(3, 8, generator=gen), dim=1)
    plain = (dense_motion_loss(pred, keys, 1, pos, queue, 0.07), info_nce(q, k, queue, 0.07))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = (dense_motion_loss(pred, keys, 1, pos, queue, 0.07), info_nce(q, k, queue, 0.07))
    for a, b in zip(plain, mixed):
        assert b.dtype == torch.float32 and torch.equal(a, b)
