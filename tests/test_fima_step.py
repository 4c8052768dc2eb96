"""One FIMA step as docs/pretraining.md ("What one step computes") describes the authors' step: which views each encoder call sees (the
BatchNorm batches), the keys and the order they enter the queues, the global loss order, the
initialisation, and the generalisations for backbone maps with T' != 2.

The whole step was also compared with the authors' code (moco/builder.py + train.py, R(2+1)D-18,
16x64x64, batch 2, seeded weights, dropout off): losses, gradients and the post-step state agree to
float32 precision (docs/pretraining.md, "Fidelity")."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fima_models
from train.fima import FimaPretrainer
from train.fima.losses import info_nce

N = 3
TINY = {
    "proj_hidden": 16,
    "embed_dim": 8,
    "decoder": {"dim": 16, "heads": 2, "ffn_dim": 16, "layers": 2, "dropout": 0.0},
}


def _batch(n: int = N, t: int = 16, s: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "rgb_global": torch.randn(n, 2, 3, t, s, s, generator=g),
        "diff_global": torch.randn(n, 2, 3, t, s, s, generator=g),
        "diff_local": torch.randn(n, 2, 2, 3, t, s, s, generator=g),
        "boxes": torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.9, 0.1, 0.1, 0.9]]).expand(n, 2, 4).clone(),
    }


def _same_rows(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Equal up to the order of the batch rows (the key encoder's shuffle)."""
    return got.shape == want.shape and all(any(torch.equal(r, w) for w in want) for r in got)


@pytest.mark.parametrize("method", ["fima", "moco"])
def test_every_encoder_call_is_one_view_type(method: str) -> None:
    """docs/pretraining.md, BatchNorm batches: f_k per clip on RGB global, diff global, diff local 1, diff local 2 (m, then
    n), then f_q(m) and f_q(n); never two view types in one call."""
    torch.manual_seed(0)
    model = FimaPretrainer(fima_models.create_model("test_r3d", num_classes=0), method, TINY)
    calls: list[tuple[str, torch.Tensor]] = []
    for side in ("encoder_q", "encoder_k"):
        encoder = getattr(model, side)
        original = encoder.forward_features

        def record(x: torch.Tensor, _side: str = side, _fn=original) -> torch.Tensor:
            calls.append((_side, x.detach().clone()))
            return _fn(x)

        encoder.forward_features = record
    b = _batch()
    model(b)
    if method == "fima":
        per_clip = [lambda c: b["rgb_global"][:, c], lambda c: b["diff_global"][:, c],
                    lambda c: b["diff_local"][:, c, 0], lambda c: b["diff_local"][:, c, 1]]
        expected = [("encoder_k", view(c)) for c in range(2) for view in per_clip]
    else:
        expected = [("encoder_k", b["rgb_global"][:, c]) for c in range(2)]
    expected += [("encoder_q", b["rgb_global"][:, 0]), ("encoder_q", b["rgb_global"][:, 1])]
    assert [side for side, _ in calls] == [side for side, _ in expected]
    assert all(_same_rows(x, want) for (_, x), (_, want) in zip(calls, expected))


def test_fused_encoder_passes_option() -> None:
    """The speed option: f_k on both clips' RGB views in one call, on all six difference views in one, f_q on
    both clips in one; same loss terms computed from other BatchNorm statistics."""
    b = _batch()
    results = {}
    for fused in (False, True):
        torch.manual_seed(0)
        model = FimaPretrainer(fima_models.create_model("test_r3d", num_classes=0), "fima",
                               {**TINY, "fused_encoder_passes": fused})
        sizes = []
        for side in ("encoder_q", "encoder_k"):
            encoder = getattr(model, side)
            original = encoder.forward_features
            encoder.forward_features = lambda x, _s=side, _fn=original: (sizes.append((_s, x.shape[0])), _fn(x))[1]
        out = model(b)
        results[fused] = out["loss"].item()
        if fused:
            assert sizes == [("encoder_k", 2 * N), ("encoder_k", 6 * N), ("encoder_q", 2 * N)]
        else:
            assert sizes == [("encoder_k", N)] * 8 + [("encoder_q", N)] * 2
    assert results[True] != pytest.approx(results[False], rel=1e-4)


def test_keys_enter_the_queues_in_the_authors_order() -> None:
    """Global queue: n's keys, then m's; motion queue: [n seg 1, n seg 2, m seg 1, m seg 2]; dense queue:
    n at t=0, n at t=1, m at t=0, m at t=1, cells (sample, row, column). Each key recomputed here from its
    own encoder call (same batch, hence the same BatchNorm statistics)."""
    torch.manual_seed(0)
    t_index, cells = 2, 4  # test_r3d, 16 x 32 x 32 views -> map T' = 2, 2 x 2
    cfg = {**TINY, "queue_size": 2 * N, "motion_queue_size": 4 * N, "dense_queue_size": 2 * t_index * N * cells}
    model = FimaPretrainer(fima_models.create_model("test_r3d", num_classes=0), "fima", cfg)
    b = _batch()
    queue_before = model.queue.queue.clone()
    with torch.no_grad():
        def key(x: torch.Tensor) -> torch.Tensor:
            return F.normalize(model.projector_k.pooled(model.encoder_k.forward_features(x)), dim=1)

        k_m, k_n = key(b["rgb_global"][:, 0]), key(b["rgb_global"][:, 1])
        local = {(c, s): key(b["diff_local"][:, c, s]) for c in range(2) for s in range(2)}
        dense = {c: F.normalize(model.projector_k.dense(model.encoder_k.forward_features(b["diff_global"][:, c])), dim=1)
                 for c in range(2)}
        q_m, q_n = (F.normalize(model.projector.pooled(model.encoder_q.forward_features(b["rgb_global"][:, c])), dim=1)
                    for c in range(2))
    out = model(b)
    atol = 1e-5
    assert torch.allclose(model.queue.queue, torch.cat([k_n, k_m]), atol=atol)
    assert torch.allclose(model.motion_queue.queue, torch.cat([local[1, 0], local[1, 1], local[0, 0], local[0, 1]]), atol=atol)
    want_dense = torch.cat([dense[c][:, :, t].permute(0, 2, 3, 1).reshape(-1, 8) for c in (1, 0) for t in range(t_index)])
    assert torch.allclose(model.dense_queue.queue, want_dense, atol=atol)
    # global loss: q_m against k_n and the old queue, q_n against k_m and the queue after n's keys went in
    after_n = torch.cat([k_n, queue_before[N:]])
    want = 0.5 * (info_nce(q_m, k_n, queue_before, 0.1) + info_nce(q_n, k_m, after_n, 0.1))
    assert out["loss_global"].item() == pytest.approx(want.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx((out["loss_global"] + out["loss_dense"] + out["loss_frame"]).item(), rel=1e-6)


def test_initialisation_matches_the_authors() -> None:
    torch.manual_seed(0)
    model = FimaPretrainer(fima_models.create_model("test_r3d", num_classes=0), "fima", TINY)
    assert torch.count_nonzero(model.decoder.cls_token) == 0 and model.decoder.segment_embed is None
    for q, k in ((model.encoder_q, model.encoder_k), (model.projector, model.projector_k)):
        assert all(torch.equal(a, b) for a, b in zip(q.state_dict().values(), k.state_dict().values()))
        assert not any(p.requires_grad for p in k.parameters())
    for queue in (model.queue, model.motion_queue):
        assert torch.allclose(queue.queue.norm(dim=1), torch.ones(queue.size)) and int(queue.ptr) == 0
    assert model.dense_queue is None and model.key_bn_splits == 1


class _TimeEncoder(nn.Module):
    """A backbone with a chosen temporal output length T'; ``pool_to`` average-pools its map over time."""

    def __init__(self, t_stride: int, pool_to: int | None = None) -> None:
        super().__init__()
        self.num_features = 6
        self.conv = nn.Conv3d(3, 6, kernel_size=(t_stride, 8, 8), stride=(t_stride, 8, 8))
        self.bn = nn.BatchNorm3d(6)
        self.pool_to = pool_to

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        return F.adaptive_avg_pool3d(y, (self.pool_to, *y.shape[3:])) if self.pool_to else y


def test_longer_maps_reduce_to_the_two_index_case() -> None:
    """T' = 4 is average-pooled to 2 indices: the same losses as a backbone whose map is already pooled."""
    losses = []
    for pool_to in (None, 2):
        torch.manual_seed(0)
        model = FimaPretrainer(_TimeEncoder(2, pool_to), "fima", TINY)  # 8 frames -> T' = 4
        out = model(_batch(t=8))
        losses.append([out[k].item() for k in ("loss_global", "loss_dense", "loss_frame")])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_single_index_maps_decode_both_segments_from_it() -> None:
    """T' = 1: both segments use index 0, so without the segment embedding their predictions coincide; with
    the option they differ and the embedding trains."""
    torch.manual_seed(0)
    model = FimaPretrainer(_TimeEncoder(8), "fima", TINY)  # 8 frames -> T' = 1
    captured = {}
    model.decoder.register_forward_hook(lambda mod, args, out: captured.update(cls=out[0]))
    out = model(_batch(t=8))
    cls = captured["cls"].reshape(2, 2, N, -1)  # (direction, segment, sample, C)
    assert torch.allclose(cls[:, 0], cls[:, 1]) and torch.isfinite(out["loss"])
    torch.manual_seed(0)
    option = FimaPretrainer(_TimeEncoder(8), "fima", {**TINY, "decoder": {**TINY["decoder"], "segment_embedding": True}})
    option.decoder.register_forward_hook(lambda mod, args, out: captured.update(cls=out[0]))
    option(_batch(t=8))["loss"].backward()
    cls = captured["cls"].reshape(2, 2, N, -1)
    assert not torch.allclose(cls[:, 0], cls[:, 1])
    assert option.decoder.segment_embed.grad is not None


def test_dense_queue_sampling_option_and_bad_value() -> None:
    torch.manual_seed(0)
    model = FimaPretrainer(fima_models.create_model("test_r3d", num_classes=0), "fima",
                           {**TINY, "dense_queue_size": 50, "dense_queue_keys_per_clip": 2})
    model(_batch())
    assert int(model.dense_queue.ptr) == 2 * N * 2  # 2 random cells of each of the 2N clips
    with pytest.raises(ValueError, match="dense_queue_keys_per_clip"):
        FimaPretrainer(fima_models.create_model("test_r3d", num_classes=0), "fima", {"dense_queue_keys_per_clip": -1})


def seeded_authors_case() -> tuple[FimaPretrainer, dict[str, torch.Tensor], list[torch.Tensor]]:
    """R(2+1)D-18 with the paper's heads, seeded, key side perturbed, dropout 0; two videos of 16x64x64 views
    (map 2 x 4 x 4) built from raw clips the way the authors' forward builds them."""
    torch.manual_seed(0)
    model = FimaPretrainer(fima_models.create_model("r2plus1d_18", num_classes=0), "fima", {"decoder": {"dropout": 0.0}})
    with torch.no_grad():
        for p in list(model.encoder_k.parameters()) + list(model.projector_k.parameters()):
            p.add_(0.01 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    raw = [torch.rand(2, 3, 16, 64, 64, generator=g) for _ in range(6)]  # m, m local 1, m local 2, n, ...

    def diff(x: torch.Tensor) -> torch.Tensor:
        return (x - torch.roll(x, 1, 2) + 1) / 2

    batch = {
        "rgb_global": torch.stack([raw[0], raw[3]], 1),
        "diff_global": torch.stack([diff(raw[0]), diff(raw[3])], 1),
        "diff_local": torch.stack([torch.stack([diff(raw[1]), diff(raw[2])], 1), torch.stack([diff(raw[4]), diff(raw[5])], 1)], 1),
        "boxes": torch.tensor([[[0.0, 0.0, 1.0, 1.0], [0.1, 0.05, 0.9, 0.85]], [[0.9, 0.1, 0.2, 0.8], [0.3, 0.2, 0.8, 0.9]]]),
    }
    return model, batch, raw


# The authors' moco.builder.MoCo + train.py loss arithmetic on seeded_authors_case (their module loaded with
# these weights, the inverse of convert_authors_state_dict; colour augmentation replaced by identity), run
# in a scratch folder.
AUTHORS_STEP = {"loss_global": 0.9707744, "loss_dense": 3.334022, "loss_frame": 4.198201, "loss": 8.502997}


@pytest.mark.slow
def test_full_step_equals_the_authors_numbers() -> None:
    model, batch, _ = seeded_authors_case()
    model.train()
    model.momentum_update()
    out = model(batch)
    for key, want in AUTHORS_STEP.items():
        assert out[key].item() == pytest.approx(want, rel=1e-5), key
