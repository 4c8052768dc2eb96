"""Hand-computed checks of FIMA's losses, foreground mask, crop geometry, queue and momentum helpers."""

from __future__ import annotations

import math

import pytest
import torch

from train.fima.heads import MotionDecoder, Projector, sine_position_encoding
from train.fima.losses import (
    cell_centers,
    cell_diagonals,
    dense_motion_loss,
    dense_positive_mask,
    foreground_mask,
    frame_motion_loss,
    global_instance_loss,
    info_nce,
    info_nce_multi_positive,
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


def test_info_nce_multi_positive_hand_value() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [5.0, 5.0, 5.0]])
    pos = torch.tensor([[True, True, False], [False, False, False]])
    neg = torch.tensor([[False, False, True], [True, True, True]])
    loss_sum, count = info_nce_multi_positive(logits, pos, neg)
    # row 0: pairs (0,0) and (0,1) each against the single negative logit 0; row 1 has no positive
    expected = 0.5 * (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0)))
    assert count.item() == 1
    assert loss_sum.item() == pytest.approx(expected, rel=1e-6)


def test_global_instance_loss_is_symmetric_mean() -> None:
    g = torch.Generator().manual_seed(0)
    q_m, q_n, k_m, k_n = (torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=1) for _ in range(4))
    queue = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=1)
    got = global_instance_loss(q_m, q_n, k_m, k_n, queue, 0.1)
    want = 0.5 * (info_nce(q_m, k_n, queue, 0.1) + info_nce(q_n, k_m, queue, 0.1))
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    # swapping the roles of m and n gives the same value
    assert global_instance_loss(q_n, q_m, k_n, k_m, queue, 0.1).item() == pytest.approx(got.item(), rel=1e-6)


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
def test_dense_motion_loss_hand_value() -> None:
    pred = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).t().reshape(1, 2, 1, 2)  # cells (D=2, H=1, W=2)
    keys = pred.reshape(1, 1, 2, 1, 2)  # one time index, identical keys
    pos = torch.eye(2, dtype=torch.bool)[None]
    loss_sum, count = dense_motion_loss(pred, keys, 0, pos, None, 1.0)
    assert count.item() == 2
    # each cell: positive logit 1, one negative (the other cell) with logit 0
    assert (loss_sum / count).item() == pytest.approx(math.log1p(math.exp(-1.0)), rel=1e-6)
    # a queue key (-1, 0) adds exp(-1) to cell 0's denominator and exp(0) to cell 1's
    queue = torch.tensor([[-1.0, 0.0]])
    loss_sum_q, _ = dense_motion_loss(pred, keys, 0, pos, queue, 1.0)
    expected = (-1 + math.log(math.e + 1 + math.exp(-1))) + (-1 + math.log(math.e + 1 + 1))
    assert loss_sum_q.item() == pytest.approx(expected, rel=1e-6)


def test_dense_motion_loss_uses_other_time_index_as_negatives() -> None:
    pred = torch.tensor([[1.0], [0.0]]).reshape(1, 2, 1, 1)  # one cell, D=2
    keys = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).reshape(1, 2, 2, 1, 1)  # t=0: (0,1), t=1: (1,0)
    pos = torch.ones(1, 1, 1, dtype=torch.bool)
    s1, c1 = dense_motion_loss(pred, keys, 1, pos, None, 1.0)  # positive at t=1 (logit 1), negative t=0 (0)
    assert (s1 / c1).item() == pytest.approx(math.log1p(math.exp(-1.0)), rel=1e-6)
    s0, c0 = dense_motion_loss(pred, keys, 0, pos, None, 1.0)  # positive logit 0, negative 1
    assert (s0 / c0).item() == pytest.approx(math.log1p(math.exp(1.0)), rel=1e-6)


def test_dense_motion_loss_cells_without_positives_are_skipped() -> None:
    pred = torch.nn.functional.normalize(torch.randn(2, 4, 2, 2), dim=1)
    keys = torch.nn.functional.normalize(torch.randn(2, 2, 4, 2, 2), dim=1)
    pos = torch.zeros(2, 4, 4, dtype=torch.bool)
    loss_sum, count = dense_motion_loss(pred, keys, 0, pos, None, 0.1)
    assert count.item() == 0 and loss_sum.item() == 0.0


def test_frame_motion_loss_hand_value() -> None:
    pred = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # N=1, segments 2, D=2
    target = pred.clone()
    source = -pred
    # query 0 logits vs [n_seg0, n_seg1, m_seg0, m_seg1] = [1, 0, -1, 0]; query 1 symmetric
    expected = -1.0 + math.log(math.e + 1.0 + math.exp(-1.0) + 1.0)
    assert frame_motion_loss(pred, target, source, None, 1.0).item() == pytest.approx(expected, rel=1e-6)
    queue = torch.tensor([[1.0, 0.0]])  # adds e^1 for query 0, e^0 for query 1
    e0 = -1.0 + math.log(2 * math.e + 2.0 + math.exp(-1.0))
    e1 = -1.0 + math.log(math.e + 3.0 + math.exp(-1.0))
    assert frame_motion_loss(pred, target, source, queue, 1.0).item() == pytest.approx(0.5 * (e0 + e1), rel=1e-6)


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
def test_sine_position_encoding_hand_value() -> None:
    # one cell at normalised position 0.5 -> angle pi; quarter = 1, frequency 1
    pe = sine_position_encoding(1, 1, 4)
    assert pe.tolist()[0] == pytest.approx([0.0, -1.0, 0.0, -1.0], abs=1e-6)
    assert sine_position_encoding(3, 5, 8).shape == (15, 8)
    with pytest.raises(ValueError, match="divisible by 4"):
        sine_position_encoding(2, 2, 6)


def test_projector_pooled_equals_dense_of_mean() -> None:
    proj = Projector(6, 10, 4)
    fmap = torch.randn(2, 6, 2, 3, 3)
    assert proj.dense(fmap).shape == (2, 4, 2, 3, 3)
    pooled = proj.pooled(fmap)
    assert torch.allclose(pooled, proj.dense(fmap.mean(dim=(2, 3, 4), keepdim=True)).flatten(1), atol=1e-6)
    assert torch.allclose(proj.pooled(fmap.mean(dim=(2, 3, 4))), pooled, atol=1e-6)


def test_motion_decoder_shapes_and_segment_embedding() -> None:
    torch.manual_seed(0)
    dec = MotionDecoder(in_dim=6, dim=8, heads=2, ffn_dim=16, layers=2, dropout=0.0).eval()
    src = torch.randn(2, 6, 3, 3)
    mem = torch.randn(2, 6, 3, 3)
    cls0, cells0 = dec(src, mem, torch.tensor([0, 0]))
    cls1, _ = dec(src, mem, torch.tensor([1, 1]))
    assert cls0.shape == (2, 6) and cells0.shape == (2, 6, 3, 3)
    assert not torch.allclose(cls0, cls1)  # same inputs, different segment -> different prediction
