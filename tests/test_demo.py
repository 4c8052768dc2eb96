"""The demo end to end at toy size (``--tiny``): every step runs, results.json and files are complete."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from train.common.config import ConfigError
from train.demo import binomial_se, demo_config, main


def test_demo_tiny_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert main(["--out", str(out), "--tiny"]) == 0
    results = json.loads((out / "results.json").read_text())
    for name in ("fima", "moco", "random"):
        for key in ("linear_top1", "linear_top5", "retrieval_r1", "retrieval_r5", "retrieval_r10"):
            assert 0.0 <= results[name][key] <= 100.0, (name, key)
        assert results[name]["test_videos"] == 2  # 2 held-out classes x 1 test video
        assert results[name]["linear_top1_se"] == pytest.approx(binomial_se(results[name]["linear_top1"], 2), abs=0.01)
    for method in ("fima", "moco"):
        assert results[method]["pretrain_steps"] == 3  # 6 pretraining videos, batch 2, one epoch
        zoo = Path(results[method]["zoo_entry"])
        assert {"model.safetensors", "config.json", "README.md"} <= {p.name for p in zoo.iterdir()}
        linear = json.loads((out / f"probe_{method}" / "linear" / "results.json").read_text())
        assert linear["model"] == f"local-dir:{zoo}" and linear["weights"]["method"] == method
        assert len(linear["weights"]["sha256"]) == 64
    setup = results["setup"]
    assert setup["probe_classes"] == 2 and setup["chance_top1"] == 50.0 and setup["backbone"] == "test_r2plus1d"
    assert (out / "demo.png").stat().st_size > 10_000
    table = (out / "results.md").read_text()
    assert "| fima |" in table and "| moco |" in table and "| random |" in table


def test_demo_config_refuses_overlapping_classes() -> None:
    with pytest.raises(ConfigError, match="held out"):
        demo_config(["data.probe_classes=[MoveLeft, MoveRight]"])
    cfg = demo_config(["probe.linear_epochs=5"], tiny=True)
    assert cfg["probe"]["linear_epochs"] == 5 and cfg["data"]["size"] == 32


def test_binomial_se() -> None:
    assert binomial_se(50.0, 100) == pytest.approx(5.0)
    assert binomial_se(0.0, 10) == 0.0
    assert math.isnan(binomial_se(30.0, 0))
