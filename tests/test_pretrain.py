"""Pretraining end to end on tiny synthetic data, exact resume, NaN stop, checkpoint conversion,
every backbone through FIMA and MoCo, plus the train.common utilities it is built on."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import fima_models
from train.common import checkpoint as ckpt
from train.common.config import ConfigError, load_config
from train.common.optim import lr_factor_fn
from train.common.run_log import RunLogger, read_csv
from train.common.sampling import ResumableBatchSampler
from train.common.seed import SeededDataset
from train.fima.model import FimaPretrainer
from train.pretrain import NonFiniteLossError, main, resolve_config, run_pretrain

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "train" / "configs"
LOSS_COLUMNS = ["loss", "loss_global", "loss_dense", "loss_frame"]
TINY_HEADS = {
    "proj_hidden": 16,
    "embed_dim": 8,
    "queue_size": 10,
    "motion_queue_size": 10,
    "dense_queue_size": 12,
    "dense_queue_keys_per_clip": 2,
    "decoder": {"dim": 16, "heads": 2, "ffn_dim": 16, "layers": 1, "dropout": 0.1},
}


@pytest.fixture(scope="module")
def motion_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic motion data set in the UCF101 layout (4 classes x 3 videos, 16 frames of 32x32)."""
    from fima_models.data.synthetic import write_motion_dataset

    root = tmp_path_factory.mktemp("motion")
    return write_motion_dataset(
        root, classes=["MoveLeft", "MoveRight", "ZoomIn", "Static"], videos_per_class=3, num_frames=16, size=32, progress=False
    )


def tiny_config(root: Path, **train: object) -> dict:
    """FIMA on test_r3d, 8-frame clips of 32x32 (4-frame views), batch 4 -> 2 steps per epoch."""
    return {
        "method": "fima",
        "seed": 3,
        "device": "cpu",
        "precision": "fp32",
        "channels_last": False,
        "model": {"arch": "test_r3d"},
        "data": {"root": str(root), "clip_len": 8, "size": 32, "num_workers": 0},
        "train": {"epochs": 2, "batch_size": 4, "tensorboard": True, "progress": False, "print_every": 0, **train},
        "optim": {"lr": 0.05},
        "schedule": {"name": "cosine", "warmup_epochs": 0.5},
        "fima": dict(TINY_HEADS),
    }


def losses_of(run_dir: Path) -> list[list[float]]:
    return [[float(r[c]) for c in LOSS_COLUMNS] for r in read_csv(run_dir / "metrics.csv")]


# ----------------------------------------------------------------------------- train.common
def test_config_inheritance_overrides_and_typos(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("optim: {lr: 0.1, momentum: 0.9}\ntrain: {epochs: 3}\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\noptim: {lr: 0.2}\n")
    cfg = load_config(tmp_path / "child.yaml", ["train.epochs=5", "+extra.flag=true", "optim.lr=1e-3"])
    assert cfg == {"optim": {"lr": 1e-3, "momentum": 0.9}, "train": {"epochs": 5}, "extra": {"flag": True}}
    with pytest.raises(ConfigError, match="did you mean 'momentum'"):
        load_config(tmp_path / "child.yaml", ["optim.momentun=0.5"])
    with pytest.raises(ConfigError, match="no '='"):
        load_config(tmp_path / "child.yaml", ["optim.lr"])


def test_all_shipped_pretrain_configs_resolve() -> None:
    paths = sorted((CONFIGS / "pretrain").glob("[!_]*.yaml")) + [CONFIGS / "smoke_fima.yaml", CONFIGS / "smoke_moco.yaml"]
    assert len(paths) >= 10
    for path in paths:
        cfg = resolve_config(load_config(path))
        assert cfg["method"] in ("fima", "moco")
        assert cfg["optim"]["momentum"] == 0.9 and cfg["optim"]["weight_decay"] == 1e-4
    k400 = resolve_config(load_config(CONFIGS / "pretrain" / "fima_i3d_k400.yaml"))
    assert (k400["train"]["batch_size"], k400["optim"]["lr"], k400["train"]["epochs"]) == (64, 0.01, 100)
    assert k400["fima"]["queue_size"] == 65536 and k400["fima"]["dense_queue_size"] > 0
    assert (k400["data"]["clip_len"], k400["data"]["size"]) == (32, 224)
    ucf = resolve_config(load_config(CONFIGS / "pretrain" / "fima_r2plus1d_ucf101.yaml"))
    assert (ucf["train"]["batch_size"], ucf["optim"]["lr"], ucf["train"]["epochs"]) == (24, 0.00375, 200)
    assert ucf["fima"]["queue_size"] == 2240 and ucf["fima"]["dense_queue_size"] == 0


def test_checkpoint_rotation_and_latest(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint({"step": step}, tmp_path, step, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint_00000003.pt", "checkpoint_00000004.pt"]
    assert ckpt.load_checkpoint(ckpt.find_latest(tmp_path))["step"] == 4
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind
    with pytest.raises(ValueError, match="keep_last"):
        ckpt.save_checkpoint({}, tmp_path, 5, keep_last=0)


def test_cosine_schedule_with_warmup_and_step_schedule() -> None:
    f = lr_factor_fn({"name": "cosine", "warmup_epochs": 1}, steps_per_epoch=2, epochs=3)
    assert [round(f(s), 6) for s in range(6)] == [0.5, 1.0, 1.0, round(0.5 * (1 + math.cos(math.pi / 4)), 6), 0.5,
                                                   round(0.5 * (1 + math.cos(3 * math.pi / 4)), 6)]
    g = lr_factor_fn({"name": "step", "milestones": [1, 2], "gamma": 0.1}, steps_per_epoch=2, epochs=3)
    assert [round(g(s), 6) for s in range(6)] == [1.0, 1.0, 0.1, 0.1, 0.01, 0.01]


def test_sampler_resumes_mid_epoch_and_splits_ranks() -> None:
    s = ResumableBatchSampler(10, 2, seed=5)
    s.set_epoch(1)
    full = list(s)
    s.set_epoch(1, start_batch=3)
    assert list(s) == full[3:] and len(s) == 2
    s.set_epoch(2)
    assert list(s) != full  # a new permutation each epoch
    ranks = [ResumableBatchSampler(10, 2, rank=r, world_size=2, seed=5) for r in range(2)]
    seen = [i for r in ranks for b in r for _, i in b]
    assert len(seen) == len(set(seen)) == 8 and all(len(r) == 2 for r in ranks)


def test_seeded_dataset_is_repeatable_and_leaves_global_rng_alone() -> None:
    class Noise(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.rand(3)

    ds = SeededDataset(Noise(), seed=1)
    torch.manual_seed(0)
    expected_next = torch.rand(1)
    torch.manual_seed(0)
    a, b, c = ds[(0, 2)], ds[(0, 2)], ds[(1, 2)]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.rand(1), expected_next)


def test_run_logger_truncates_to_checkpoint_position(tmp_path: Path) -> None:
    log = RunLogger(tmp_path, tensorboard=False)
    log.log(1, {"loss": 1.0})
    state = log.state_dict()
    log.log(2, {"loss": 0.5, "loss_dense": 0.1})  # new column widens the header
    assert [r["loss_dense"] for r in read_csv(tmp_path / "metrics.csv")] == ["", "0.1"]
    RunLogger(tmp_path, tensorboard=False).load_state_dict(state)
    assert [r["step"] for r in read_csv(tmp_path / "metrics.csv")] == ["1"]


# ----------------------------------------------------------------------------- models
class _ToyEncoder(nn.Module):
    """A stand-in backbone whose temporal output length is chosen by the test (T' = T / t_stride)."""

    def __init__(self, t_stride: int) -> None:
        super().__init__()
        self.num_features = 6
        self.conv = nn.Conv3d(3, 6, kernel_size=(t_stride, 4, 4), stride=(t_stride, 4, 4))
        self.bn = nn.BatchNorm3d(6)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


def _random_batch(n: int, t: int, s: int) -> dict[str, torch.Tensor]:
    return {
        "rgb_global": torch.randn(n, 2, 3, t, s, s),
        "diff_global": torch.randn(n, 2, 3, t, s, s),
        "diff_local": torch.randn(n, 2, 2, 3, t, s, s),
        "boxes": torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.9, 0.1, 0.1, 0.9]]).expand(n, 2, 4).clone(),
    }


@pytest.mark.parametrize("t_stride,t_out", [(8, 1), (4, 2), (2, 4)])
def test_any_temporal_length_maps_to_two_segments(t_stride: int, t_out: int) -> None:
    enc = _ToyEncoder(t_stride)
    assert enc.forward_features(torch.randn(2, 3, 8, 16, 16)).shape[2] == t_out
    # the segment embedding (an option, off by default) is what tells the two segments apart at T' = 1
    heads = {**TINY_HEADS, "decoder": {**TINY_HEADS["decoder"], "segment_embedding": True}}
    model = FimaPretrainer(enc, "fima", heads)
    out = model(_random_batch(3, 8, 16))
    assert all(torch.isfinite(v) for v in out.values())
    assert out["dense_valid_frac"] > 0 and out["fg_frac"] == 0.5
    out["loss"].backward()
    assert model.decoder.segment_embed.grad is not None


@pytest.mark.parametrize("arch", ["test_r2plus1d", "test_r3d", "test_s3d", "test_i3d"])
def test_every_backbone_trains_with_fima_and_moco(arch: str) -> None:
    batch = _random_batch(2, 8, 64)
    for method in ("fima", "moco"):
        model = FimaPretrainer(fima_models.create_model(arch, num_classes=0), method, {**TINY_HEADS, "key_bn_splits": 1})
        out = model(batch)
        assert torch.isfinite(out["loss"])
        assert ("loss_dense" in out) == (method == "fima")
        out["loss"].backward()
        grads = [p.grad for p in model.encoder_q.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert all(p.grad is None for p in model.encoder_k.parameters())
        assert model.backbone_state_dict().keys() == fima_models.create_model(arch, num_classes=0).state_dict().keys()


# ----------------------------------------------------------------------------- end to end
def test_pretrain_end_to_end_outputs_and_conversion(motion_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = tiny_config(motion_root, epochs=1, keep_last=1)
    cfg["channels_last"] = True  # channels_last_3d weights must still save and convert
    final = run_pretrain(cfg, out)
    rows = read_csv(out / "metrics.csv")
    assert len(rows) == 2 and final == out / "checkpoint_00000002.pt"
    for col in LOSS_COLUMNS + ["lr", "clips_per_s", "data_wait_frac", "dense_valid_frac", "epoch"]:
        assert col in rows[0] and math.isfinite(float(rows[0][col]))
    assert (out / "loss_curve.png").stat().st_size > 0
    assert list((out / "tensorboard").glob("events.*"))
    assert (out / "config.yaml").is_file()

    state = torch.load(final, weights_only=True)  # loads without unpickling any code
    assert state["format"] == "fima-models-train" and state["version"] == 1
    assert (state["model_name"], state["method"], state["num_classes"], state["step"], state["epoch"]) == (
        "test_r3d", "fima", 0, 2, 1
    )
    rest = state["state"]["pretrainer"]
    assert {"queue.queue", "motion_queue.queue", "dense_queue.queue"} <= set(rest)
    assert any(k.startswith("encoder_k.") for k in rest) and not any(k.startswith("encoder_q.") for k in rest)
    assert len(state["state"]["rng"]) == 1 and state["state"]["position"] == {"epoch": 1, "step_in_epoch": 0, "steps_per_epoch": 2}
    backbone = fima_models.create_model("test_r3d", num_classes=0)
    backbone.load_state_dict(state["model"], strict=True)

    from fima_models.convert import convert_checkpoint

    convert_checkpoint(final, "test_r3d", tmp_path / "zoo")
    loaded = fima_models.create_model(f"local-dir:{tmp_path / 'zoo'}", pretrained=True, num_classes=0)
    for k, v in state["model"].items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_resume_reproduces_uninterrupted_losses(motion_root: Path, tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    resumed = tmp_path / "resumed"
    run_pretrain(tiny_config(motion_root), straight)  # 2 epochs x 2 steps
    stopped = run_pretrain(tiny_config(motion_root, stop_after_steps=3), resumed)  # stops mid epoch 2
    assert stopped.name == "checkpoint_00000003.pt" and len(read_csv(resumed / "metrics.csv")) == 3
    # a stray row logged after the checkpoint (as if the process died later) must be dropped on resume
    RunLogger(resumed, tensorboard=False).log(99, {"loss": 123.0})
    run_pretrain(tiny_config(motion_root), resumed)
    a, b = losses_of(straight), losses_of(resumed)
    assert len(a) == len(b) == 4
    assert torch.allclose(torch.tensor(a), torch.tensor(b), rtol=0, atol=1e-6), (a, b)
    sa = torch.load(straight / "checkpoint_00000004.pt", weights_only=True)
    sb = torch.load(resumed / "checkpoint_00000004.pt", weights_only=True)
    for k, v in sa["model"].items():
        assert torch.allclose(v.float(), sb["model"][k].float(), atol=1e-6), k


def test_gradient_accumulation_counts_optimizer_steps(motion_root: Path, tmp_path: Path) -> None:
    # batch 4 = 2 micro-batches of 2; 9 training videos -> 4 micro-batches -> 2 optimizer steps per epoch
    run_pretrain(tiny_config(motion_root, epochs=1, accum_steps=2, tensorboard=False), tmp_path / "acc")
    rows = read_csv(tmp_path / "acc" / "metrics.csv")
    assert [r["step"] for r in rows] == ["1", "2"]
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    with pytest.raises(ConfigError, match="not divisible"):
        run_pretrain(tiny_config(motion_root, batch_size=5, accum_steps=2), tmp_path / "bad")


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(motion_root: Path, tmp_path: Path) -> None:
    import yaml

    cfg = tiny_config(motion_root, checkpoint_every_steps=1, keep_last=5)
    cfg["debug"] = {"inject_nan_at_step": 2}
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 2.*checkpoint_00000001.pt"):
        run_pretrain(copy.deepcopy(cfg), tmp_path / "api")
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "api")] == ["checkpoint_00000001.pt"]
    assert len(read_csv(tmp_path / "api" / "metrics.csv")) == 1
    # the command line reports it with exit status 3
    (tmp_path / "nan.yaml").write_text(yaml.safe_dump(cfg))
    # train.stop_after_steps is absent from the YAML: overrides reach every key of the defaults
    assert main(["--config", str(tmp_path / "nan.yaml"), "--out", str(tmp_path / "cli"), "train.stop_after_steps=3"]) == 3
    assert ckpt.find_latest(tmp_path / "cli").name == "checkpoint_00000001.pt"


def test_cli_rejects_bad_overrides(tmp_path: Path) -> None:
    assert main(["--config", str(CONFIGS / "smoke_fima.yaml"), "--out", str(tmp_path), "optim.lrr=1"]) == 2


@pytest.mark.parametrize("name", ["smoke_fima", "smoke_moco"])
def test_smoke_configs_run(name: str, motion_root: Path, tmp_path: Path) -> None:
    """The shipped smoke configs, shortened to two steps on the tiny data set."""
    rc = main(
        [
            "--config", str(CONFIGS / f"{name}.yaml"), "--out", str(tmp_path / name),
            f"data.root={motion_root}", "data.synthetic=null", "data.num_workers=0", "train.batch_size=4",
            "train.stop_after_steps=2", "train.progress=false",
        ]
    )
    assert rc == 0
    assert len(read_csv(tmp_path / name / "metrics.csv")) == 2


# ----------------------------------------------------------------------------- the authors' checkpoints
def write_authors_checkpoint(path: Path, epoch: int, queue: int = 10) -> dict[str, torch.Tensor]:
    """A ``checkpoint_XXXX.pth.tar`` of the authors' train.py for test_r3d with the sizes of TINY_HEADS."""
    from tests.test_fima_authors import authors_state_dict

    torch.manual_seed(5)
    backbone = fima_models.create_model("test_r3d", num_classes=0)
    theirs = authors_state_dict(
        backbone.state_dict(), backbone.num_features, hidden=16, dim=8, d=16, ffn=16, layers=1, queue=queue, dense_queue=12,
        make=lambda *shape: 0.1 * torch.randn(*shape),
    )
    torch.save({"epoch": epoch, "arch": "test_r3d", "state_dict": theirs, "optimizer": {"state": {}, "param_groups": []}}, path)
    return theirs


def test_init_from_authors_continues_their_run(motion_root: Path, tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_0000.pth.tar"
    theirs = write_authors_checkpoint(path, epoch=1)
    # with lr 0 the query encoder's parameters stay the authors' ones: the weights really came from their file
    frozen = tiny_config(motion_root)
    frozen["optim"]["lr"] = 0.0
    final = run_pretrain(frozen, tmp_path / "frozen", init_from_authors=path)
    assert final.name == "checkpoint_00000004.pt"  # epoch 1 finished there: steps 3 and 4 remain
    state = torch.load(final, weights_only=True)
    params = [name for name, _ in fima_models.create_model("test_r3d", num_classes=0).named_parameters()]
    for name in params:
        assert torch.equal(state["model"][name], theirs[f"module.encoder_q.{name}"]), name
    # the schedule continues where theirs stood: the same learning rates as steps 3-4 of a run from scratch
    straight = tmp_path / "straight"
    run_pretrain(tiny_config(motion_root), straight)
    run_pretrain(tiny_config(motion_root), tmp_path / "continued", init_from_authors=path)
    rows = read_csv(tmp_path / "continued" / "metrics.csv")
    assert [r["step"] for r in rows] == ["3", "4"]
    assert [r["lr"] for r in rows] == [r["lr"] for r in read_csv(straight / "metrics.csv")[2:]]
    # a finished run folder is resumed, not re-initialised
    assert run_pretrain(tiny_config(motion_root), tmp_path / "continued", init_from_authors=path).name == "checkpoint_00000004.pt"


def test_init_from_authors_errors_name_the_fix(motion_root: Path, tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_0000.pth.tar"
    write_authors_checkpoint(path, epoch=1, queue=6)
    with pytest.raises(ConfigError, match=r"fima\.queue_size=6 \(this run has 10\)"):
        run_pretrain(tiny_config(motion_root), tmp_path / "sizes", init_from_authors=path)
    assert not (tmp_path / "sizes").exists()  # refused before anything was written
    write_authors_checkpoint(path, epoch=2)
    with pytest.raises(ConfigError, match="finished 2 epochs; set train.epochs above 2"):
        run_pretrain(tiny_config(motion_root), tmp_path / "done", init_from_authors=path)
    assert not (tmp_path / "done").exists()
    moco = tiny_config(motion_root)
    moco["method"] = "moco"
    with pytest.raises(ConfigError, match="needs method=fima"):
        run_pretrain(moco, tmp_path / "moco", init_from_authors=path)
    garbage = tmp_path / "garbage.pth.tar"
    garbage.write_bytes(b"not a checkpoint")
    argv = ["--config", str(CONFIGS / "smoke_fima.yaml"), "--out", str(tmp_path / "cli"), f"data.root={motion_root}",
            "data.synthetic=null", "--init-from-authors", str(garbage)]
    assert main(argv) == 2
    assert not (tmp_path / "cli").exists()
