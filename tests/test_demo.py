"""The demo end to end at toy size (``--tiny``), its mask score and the pooling of seeds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from train.common.config import ConfigError
from train.demo import ROWS, binomial_se, compare_runs, demo_config, main, mask_overlap, register


def test_demo_tiny_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert main(["--out", str(out), "--tiny"]) == 0
    results = json.loads((out / "results.json").read_text())
    for name in ROWS:
        assert 0.0 <= results[name]["top1"] <= 100.0 and 0.0 <= results[name]["top5"] <= 100.0, name
        assert results[name]["test_videos"] == 2  # 2 classes x 1 test video
        assert results[name]["top1_se"] == pytest.approx(binomial_se(results[name]["top1"], 2), abs=0.01)
    for name in ("fima", "moco", "random"):
        for key in ("retrieval_r1", "retrieval_r5", "retrieval_r10"):
            assert 0.0 <= results[name][key] <= 100.0, (name, key)
    for method in ("fima", "moco"):
        assert results[method]["pretrain_steps"] == 3  # 6 training videos, batch 2, one epoch
        zoo = Path(results[method]["zoo_entry"])
        assert {"model.safetensors", "config.json", "README.md"} <= {p.name for p in zoo.iterdir()}
        linear = json.loads((out / f"probe_{method}" / "linear" / "results.json").read_text())
        assert linear["model"] == f"local-dir:{zoo}" and linear["weights"]["method"] == method
        assert len(linear["weights"]["sha256"]) == 64
    # the supervised controls train for as many steps as pretraining (6 videos / batch 2 = 3 a epoch)
    assert results["supervised"]["train_steps"] == 3 and results["appearance"]["train_steps"] == 3
    appearance = json.loads((out / "appearance" / "results.json").read_text())
    assert appearance["config"]["data"]["clip_len"] == 1  # single frames
    for control in ("supervised", "appearance"):  # crops and flips, no colour jitter or grayscale
        data = json.loads((out / control / "results.json").read_text())["config"]["data"]
        assert (data["flip_p"], data["jitter_p"], data["grayscale_p"], data["crop_min_area"]) == (0.5, 0.0, 0.0, 0.5), control
    stages = results["stages"]
    assert list(stages) == ["data", "pretrain_fima", "probe_fima", "pretrain_moco", "probe_moco", "probe_random",
                            "supervised", "appearance", "mask", "report"]
    assert all(t["wall_s"] >= 0 and t["cpu_s"] >= 0 for t in stages.values())
    assert sum(t["wall_s"] for t in stages.values()) == pytest.approx(results["wall_time_s"], abs=1.0)
    mask = results["mask"]
    assert mask["videos"] == 2
    for name in ("fima", "moco", "random"):
        assert 0.0 <= mask[name]["object_recall"] <= 1.0 and 0.0 < mask[name]["fg_frac"] <= 0.5
    setup = results["setup"]
    assert setup["classes"] == 2 and setup["chance_top1"] == 50.0 and setup["backbone"] == "test_r2plus1d"
    assert setup["train_videos"] == 6 and setup["test_videos"] == 2
    assert results["cpu_time_s"] > 0 and results["wall_time_s"] > 0
    assert (out / "demo.png").stat().st_size > 20_000
    table = (out / "results.md").read_text()
    for row in ("FIMA", "MoCo", "floor", "ceiling", "appearance only", "object pixels inside the mask"):
        assert row in table


def test_demo_config_checks() -> None:
    with pytest.raises(ConfigError, match="at least two"):
        demo_config(["data.classes=[MoveUp]"])
    with pytest.raises(ConfigError, match="test_fraction"):
        demo_config(["data.test_fraction=0.0"])
    cfg = demo_config(["probe.linear_epochs=5"], tiny=True)
    assert cfg["probe"]["linear_epochs"] == 5 and cfg["data"]["size"] == 32
    assert demo_config()["data"]["size"] == 64  # the default run: a 4x4 map for the demo backbone


def test_train_transform_reads_the_augmentation_probabilities() -> None:
    from fima_models._utils import KINETICS_MEAN, KINETICS_STD
    from train.downstream.build import train_transform

    model = torch.nn.Identity()  # no pretrained_cfg: the default normalisation
    plain = {"jitter_p": 0.0, "grayscale_p": 0.0}
    kept = train_transform({"data": {"size": 16, "flip_p": 0.0, **plain}}, model)
    flipped = train_transform({"data": {"size": 16, "flip_p": 1.0, **plain}}, model)
    g = torch.Generator().manual_seed(0)
    # columns brighten to the right: any crop keeps that order, a flip reverses it
    ramp = (torch.arange(16, dtype=torch.uint8) * 15).view(1, 1, 16, 1).expand(4, 16, 16, 3).contiguous()
    for _ in range(5):
        right, left = kept(ramp, g)[0, 0], flipped(ramp, g)[0, 0]
        assert bool((right[:, -1] > right[:, 0]).all()) and bool((left[:, 0] > left[:, -1]).all())
    # a uniform clip keeps its exact colour without jitter and grayscale; the paper's probabilities change it
    colour = torch.tensor([200, 30, 60], dtype=torch.uint8)
    clip = colour.expand(4, 16, 16, 3).contiguous()
    expected = ((colour / 255.0 - torch.tensor(KINETICS_MEAN)) / torch.tensor(KINETICS_STD)).view(3, 1, 1, 1)
    assert torch.allclose(kept(clip, g), expected.expand(3, 4, 16, 16), atol=1e-4)
    paper = train_transform({"data": {"size": 16, "jitter_p": None}}, model)  # None: the default applies
    assert any(not torch.allclose(paper(clip, g), expected.expand(3, 4, 16, 16), atol=1e-3) for _ in range(5))


def test_train_transform_reads_the_smallest_crop() -> None:
    from fima_models._utils import KINETICS_STD
    from train.downstream.build import train_transform

    model = torch.nn.Identity()
    span = 225 / 255 / KINETICS_STD[0]  # darkest to brightest column, normalised (red channel)
    plain = {"size": 16, "flip_p": 0.0, "jitter_p": 0.0, "grayscale_p": 0.0}
    whole = train_transform({"data": {**plain, "crop_min_area": 1.0}}, model)
    paper = train_transform({"data": plain}, model)
    g = torch.Generator().manual_seed(0)
    ramp = (torch.arange(16, dtype=torch.uint8) * 15).view(1, 1, 16, 1).expand(4, 16, 16, 3).contiguous()
    # crops of the whole frame keep the darkest and brightest columns; smaller crops lose them
    for _ in range(5):
        row = whole(ramp, g)[0, 0, 0]
        assert float(row[-1] - row[0]) == pytest.approx(span, rel=1e-4)
    spans = [float(v[0, 0, 0, -1] - v[0, 0, 0, 0]) for v in (paper(ramp, g) for _ in range(20))]
    assert min(spans) < 0.6 * span


def test_register_adds_the_demo_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m train")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["demo", "--out", str(tmp_path), "--tiny", "seed=1"])
    assert (args.out, args.tiny, args.overrides) == (str(tmp_path), True, ["seed=1"])
    run = _fake_run(tmp_path / "s0", 0, fima=60.0, moco=40.0, n=100)
    assert args.func(parser.parse_args(["demo", "--compare", str(run)])) == 0
    assert "| 60.0 ± 4.9 |" in capsys.readouterr().out


def test_binomial_se() -> None:
    assert binomial_se(50.0, 100) == pytest.approx(5.0)
    assert binomial_se(0.0, 10) == 0.0
    assert math.isnan(binomial_se(30.0, 0))


def test_mask_overlap_by_hand() -> None:
    # 2x2 cells over a 4x4 image; the object covers the top-left cell fully (4 px) and 2 px of the top-right one
    obj = torch.zeros(1, 4, 4, dtype=torch.bool)
    obj[0, :2, :2] = True
    obj[0, 0, 2:] = True
    fg = torch.tensor([[[True, False], [False, False]]])
    scores = mask_overlap(fg, obj)
    assert scores["object_recall"] == pytest.approx(4 / 6)
    assert scores["fg_frac"] == pytest.approx(0.25)
    assert scores["iou"] == pytest.approx(1 / 2)  # fg = {TL}, touched = {TL, TR}
    with pytest.raises(ValueError, match="multiple"):
        mask_overlap(fg, torch.zeros(1, 5, 4, dtype=torch.bool))


def _fake_run(folder: Path, seed: int, fima: float, moco: float, n: int) -> Path:
    folder.mkdir()
    rows = {"fima": fima, "moco": moco}
    results = {name: {"top1": v, "test_videos": n} for name, v in rows.items()}
    results["setup"] = {"config": {"seed": seed}}
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_compare_runs_pools_test_videos(tmp_path: Path) -> None:
    a = _fake_run(tmp_path / "s0", 0, fima=60.0, moco=40.0, n=100)
    b = _fake_run(tmp_path / "s1", 1, fima=80.0, moco=50.0, n=100)
    table = compare_runs([a, b])
    # pooled: FIMA 140/200 = 70 %, MoCo 90/200 = 45 %; SE of the difference sqrt(.7*.3/200 + .45*.55/200)
    gap_se = 100 * math.sqrt(0.7 * 0.3 / 200 + 0.45 * 0.55 / 200)
    assert "| 70.0 ± 3.2 |" in table and "| 45.0 ± 3.5 |" in table
    assert f"+25.0 ± {gap_se:.1f} ({25 / gap_se:+.1f} SE)" in table
    assert "seeds 0, 1" in table
    with pytest.raises(FileNotFoundError, match="python -m train demo"):
        compare_runs([tmp_path / "missing"])


def test_demo_backbone_keeps_two_time_steps() -> None:
    import fima_models

    model = fima_models.create_model("test_r2plus1d_mc", num_classes=0)
    fmap = model.forward_features(torch.zeros(2, 3, 8, 64, 64))
    assert fmap.shape == (2, 32, 2, 4, 4)  # the demo's 8-frame, 64x64 views: FIMA's T' = 2 and 4x4 cells
    # layer4 convolves in space only (MC-style top), so it keeps time; the lower stages are (2+1)D
    assert [m.kernel_size for m in model.layer4.modules() if isinstance(m, torch.nn.Conv3d)][0] == (1, 3, 3)
    assert any(m.kernel_size == (3, 1, 1) for m in model.layer3.modules() if isinstance(m, torch.nn.Conv3d))
    assert "test_r2plus1d_mc" not in fima_models.list_models()  # test variants stay out of the model table
    assert "test_r2plus1d_mc" in fima_models.list_models(include_test=True)
