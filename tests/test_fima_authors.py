"""Continuing from the FIMA authors' code: their MoCo state dict converts and loads strictly.

The state dicts here are built by hand in the layout of the authors' ``moco.builder.MoCo`` (names and
shapes read from github.com/ZMHH-H/FIMA: ``Projection_Head_Conv`` = Conv2d 1x1 layers ``net.0`` /
``net.2``, ``embedding1/2`` Conv2d 1x1, ``transformer_decoder.layers.i.{multihead_attn, linear1,
linear2, norm2, norm3}``, ``cls_token`` (1, 1, d), queues stored ``(dim, K)`` with ``(1,)`` long
pointers). Running their code on seeded weights and converting its state dict gave the same losses,
gradients and post-step state as ours (docs/pretraining.md, "Fidelity").
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import fima_models
from train.fima import AuthorsCheckpointError, FimaPretrainer, convert_authors_state_dict, load_authors_checkpoint
from train.fima.authors import authors_fima_config

HIDDEN, DIM, D, FFN, LAYERS, K = 16, 8, 12, 10, 2, 24
TINY = {
    "proj_hidden": HIDDEN,
    "embed_dim": DIM,
    "queue_size": K,
    "motion_queue_size": K,
    "decoder": {"dim": D, "heads": 2, "ffn_dim": FFN, "layers": LAYERS},
}


def authors_state_dict(
    encoder_state: dict[str, torch.Tensor],
    channels: int,
    hidden: int = HIDDEN,
    dim: int = DIM,
    d: int = D,
    ffn: int = FFN,
    layers: int = LAYERS,
    queue: int = K,
    dense_queue: int = 0,
    prefix: str = "module.",
    make=torch.randn,
) -> dict[str, torch.Tensor]:
    """A state dict in the authors' key layout (their widths: hidden 1024, dim 128, d 512, ffn 512)."""
    sd: dict[str, torch.Tensor] = {}
    for side in ("encoder_q", "encoder_k"):
        for k, v in encoder_state.items():
            sd[f"{side}.{k}"] = v.clone()
    for name in ("projector_dense", "projector_dense_k"):
        sd[f"{name}.net.0.weight"] = make(hidden, channels, 1, 1)
        sd[f"{name}.net.0.bias"] = make(hidden)
        sd[f"{name}.net.2.weight"] = make(dim, hidden, 1, 1)
        sd[f"{name}.net.2.bias"] = make(dim)
    sd["embedding1.weight"], sd["embedding1.bias"] = make(d, channels, 1, 1), make(d)
    sd["embedding2.weight"], sd["embedding2.bias"] = make(channels, d, 1, 1), make(channels)
    for i in range(layers):
        p = f"transformer_decoder.layers.{i}."
        sd[p + "multihead_attn.in_proj_weight"], sd[p + "multihead_attn.in_proj_bias"] = make(3 * d, d), make(3 * d)
        sd[p + "multihead_attn.out_proj.weight"], sd[p + "multihead_attn.out_proj.bias"] = make(d, d), make(d)
        sd[p + "linear1.weight"], sd[p + "linear1.bias"] = make(ffn, d), make(ffn)
        sd[p + "linear2.weight"], sd[p + "linear2.bias"] = make(d, ffn), make(d)
        for norm in ("norm2", "norm3"):
            sd[p + f"{norm}.weight"], sd[p + f"{norm}.bias"] = make(d), make(d)
    sd["cls_token"] = make(1, 1, d)
    sd["queue"], sd["queue_ptr"] = make(dim, queue), torch.tensor([queue // 2])
    sd["motion_queue"], sd["motion_queue_ptr"] = make(dim, queue), torch.tensor([queue // 4])
    if dense_queue:
        sd["queue_dense"], sd["queue_dense_ptr"] = make(dim, dense_queue), torch.tensor([3])
    return {prefix + k: v for k, v in sd.items()}


@pytest.fixture(scope="module")
def backbone_state() -> dict[str, torch.Tensor]:
    return fima_models.create_model("test_r2plus1d", num_classes=0).state_dict()


@pytest.mark.parametrize("prefix", ["module.", ""])
def test_converted_state_loads_strictly_and_lands_in_place(backbone_state, prefix: str) -> None:
    torch.manual_seed(0)
    c = fima_models.create_model("test_r2plus1d", num_classes=0).num_features
    theirs = authors_state_dict(backbone_state, c, prefix=prefix)
    model = FimaPretrainer(fima_models.create_model("test_r2plus1d", num_classes=0), "fima", TINY)
    model.load_state_dict(convert_authors_state_dict(theirs), strict=True)
    p = prefix
    assert torch.equal(model.projector.fc1.weight[..., 0], theirs[p + "projector_dense.net.0.weight"])
    assert torch.equal(model.projector_k.fc2.bias, theirs[p + "projector_dense_k.net.2.bias"])
    assert torch.equal(model.decoder.embed_in.weight, theirs[p + "embedding1.weight"])
    assert torch.equal(model.decoder.embed_out.bias, theirs[p + "embedding2.bias"])
    assert torch.equal(model.decoder.cls_token, theirs[p + "cls_token"])
    layer = model.decoder.layers[1]
    assert torch.equal(layer.cross_attn.in_proj_weight, theirs[p + "transformer_decoder.layers.1.multihead_attn.in_proj_weight"])
    assert torch.equal(layer.attn_norm.weight, theirs[p + "transformer_decoder.layers.1.norm2.weight"])
    assert torch.equal(layer.ffn_norm.bias, theirs[p + "transformer_decoder.layers.1.norm3.bias"])
    assert torch.equal(layer.ffn_in.weight, theirs[p + "transformer_decoder.layers.1.linear1.weight"])
    assert torch.equal(layer.ffn_out.weight, theirs[p + "transformer_decoder.layers.1.linear2.weight"])
    assert torch.equal(model.queue.queue, theirs[p + "queue"].t())
    assert torch.equal(model.motion_queue.queue, theirs[p + "motion_queue"].t())
    assert int(model.queue.ptr) == K // 2 and int(model.motion_queue.ptr) == K // 4
    assert torch.equal(model.encoder_k.state_dict()["stem.0.weight"], theirs[p + "encoder_k.stem.0.weight"])
    batch = {
        "rgb_global": torch.randn(2, 2, 3, 8, 32, 32),
        "diff_global": torch.randn(2, 2, 3, 8, 32, 32),
        "diff_local": torch.randn(2, 2, 2, 3, 8, 32, 32),
        "boxes": torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.9, 0.1, 0.1, 0.9]]).expand(2, 2, 4).clone(),
    }
    assert torch.isfinite(model(batch)["loss"])


def test_kinetics_checkpoint_with_dense_queue(backbone_state) -> None:
    c = fima_models.create_model("test_r2plus1d", num_classes=0).num_features
    theirs = authors_state_dict(backbone_state, c, dense_queue=40)
    cfg = authors_fima_config(theirs)
    assert cfg == {"embed_dim": DIM, "queue_size": K, "motion_queue_size": K, "dense_queue_size": 40}
    assert authors_fima_config(convert_authors_state_dict(theirs)) == cfg  # the converted layout works too
    model = FimaPretrainer(fima_models.create_model("test_r2plus1d", num_classes=0), "fima", {**TINY, **cfg})
    model.load_state_dict(convert_authors_state_dict(theirs), strict=True)
    assert torch.equal(model.dense_queue.queue, theirs["module.queue_dense"].t()) and int(model.dense_queue.ptr) == 3


@pytest.mark.parametrize("arch", ["r2plus1d_18", "i3d"])
def test_full_size_layout_of_the_authors_module(arch: str) -> None:
    """Their real widths (projector 1024 -> 128, decoder 512, FFN 512, 2 layers, queue 2240) against our
    defaults, shapes and names only (meta tensors)."""
    with torch.device("meta"):
        model = FimaPretrainer(fima_models.create_model(arch, num_classes=0), "fima")
    theirs = authors_state_dict(
        model.encoder_q.state_dict(), model.encoder_q.num_features, 1024, 128, 512, 512, 2, 2240,
        make=lambda *shape: torch.empty(shape, device="meta"),
    )
    model.load_state_dict(convert_authors_state_dict(theirs), strict=True, assign=True)


def test_bad_state_dict_names_missing_and_unexpected_keys(backbone_state) -> None:
    theirs = authors_state_dict(backbone_state, 8)
    del theirs["module.cls_token"]
    theirs["module.predictor.weight"] = torch.zeros(1)
    with pytest.raises(AuthorsCheckpointError, match=r"missing keys \['cls_token'\].*unexpected keys \['module.predictor.weight'\]"):
        convert_authors_state_dict(theirs)
    with pytest.raises(AuthorsCheckpointError, match=r"encoder_q\.\*"):
        convert_authors_state_dict(backbone_state)  # a bare backbone is not their MoCo
    # the helpers' augmentation constants are dropped, not reported
    ok = authors_state_dict(backbone_state, 8)
    ok["module.aug_gpu.3.mean"] = torch.zeros(3)
    assert "aug_gpu.3.mean" not in convert_authors_state_dict(ok)


def test_load_authors_checkpoint_file(tmp_path: Path, backbone_state) -> None:
    theirs = authors_state_dict(backbone_state, 8)
    path = tmp_path / "checkpoint_0009.pth.tar"
    torch.save({"epoch": 10, "arch": "r2plus1d_18", "state_dict": theirs, "optimizer": {"state": {}, "param_groups": []}}, path)
    state, epoch = load_authors_checkpoint(path)
    assert epoch == 10
    assert state.keys() == convert_authors_state_dict(theirs).keys()
    assert torch.equal(state["queue.queue"], theirs["module.queue"].t())

    with pytest.raises(FileNotFoundError, match="not found"):
        load_authors_checkpoint(tmp_path / "missing.pth.tar")
    garbage = tmp_path / "garbage.pth.tar"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(AuthorsCheckpointError, match="cannot read"):
        load_authors_checkpoint(garbage)
    wrong = tmp_path / "weights.pth"
    torch.save(theirs, wrong)  # a bare state dict, not their {epoch, arch, state_dict, optimizer}
    with pytest.raises(AuthorsCheckpointError, match="expected a dict with 'epoch' and 'state_dict'"):
        load_authors_checkpoint(wrong)
    unsafe = tmp_path / "unsafe.pth.tar"
    torch.save({"epoch": 1, "state_dict": theirs, "extra": Path("x")}, unsafe)  # weights_only refuses objects
    with pytest.raises(AuthorsCheckpointError, match="cannot read"):
        load_authors_checkpoint(unsafe)
