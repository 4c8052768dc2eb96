"""End-to-end tests of the downstream recipes on tiny trees in each data set's real layout.

Every recipe runs in-process through ``train.downstream.main`` (the ``python -m train`` entry)
with the tiny ``test_r3d`` backbone, 4-frame 32x32 clips and one or two epochs.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from tests.media import make_frames, write_video
from train.common.config import ConfigError
from train.downstream import BASE_CONFIG, main, resolve_config
from train.downstream.linear import LinearHead
from train.downstream.results import load_results, paper_reference, sha256_file
from train.summarize import collect_results, split_means, summarize

TINY = [
    "data.clip_len=4",
    "data.step=1",
    "data.size=32",
    "data.test_clips=2",
    "data.workers=0",
    "log.tensorboard=false",
    "log.print_every=0",
    "precision=fp32",
    "device=cpu",
]
CLASSES = ["jump", "run"]


def _video(path: Path, seed: int, frames: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, make_frames(num_frames=frames, height=32, width=40, seed=seed), fps=25,
                codec="libx264" if path.suffix == ".mp4" else "mpeg4", gop=4)


def _ucf101(root: Path) -> Path:
    """UCF-101/<Class>/v_*.avi + ucfTrainTestlist/{classInd,trainlist01,testlist01}.txt."""
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(CLASSES)))
    train, test = [], []
    for ci, cls in enumerate(CLASSES):
        for g in range(3):
            rel = f"{cls}/v_{cls}_g{g + 1:02d}_c01.avi"
            _video(root / "UCF-101" / rel, seed=10 * ci + g)
            (test if g == 2 else train).append(rel)
    (lists / "trainlist01.txt").write_text("".join(f"{r} {CLASSES.index(r.split('/')[0]) + 1}\n" for r in train))
    (lists / "testlist01.txt").write_text("".join(f"{r}\n" for r in test))
    return root


def _hmdb51(root: Path) -> Path:
    """<class>/<name>.avi + testTrainMulti_7030_splits/<class>_test_split1.txt (1 train, 2 test)."""
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir(parents=True)
    for ci, cls in enumerate(CLASSES):
        lines = []
        for g in range(4):
            name = f"{cls}_clip_{g}.avi"
            _video(root / cls / name, seed=100 + 10 * ci + g)
            lines.append(f"{name} {2 if g == 3 else 1}\n")
        (splits / f"{cls}_test_split1.txt").write_text("".join(lines))
    return root


def _kinetics400(root: Path) -> Path:
    """annotations/{train,validate}.csv + {train,val}/<label>/<youtube_id>_<start>_<end>.mp4."""
    (root / "annotations").mkdir(parents=True)
    for subset, csv_name, per_class in (("train", "train.csv", 2), ("val", "validate.csv", 1)):
        with (root / "annotations" / csv_name).open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            for ci, cls in enumerate(CLASSES):
                for g in range(per_class):
                    yid = f"{subset}{cls}{g}xxxxx"[:11]
                    writer.writerow([cls, yid, 0, 10, subset])
                    _video(root / subset / cls / f"{yid}_000000_000010.mp4", seed=200 + 10 * ci + g)
    return root


def _diving48(root: Path) -> Path:
    """Diving48_V2_{train,test}.json + Diving48_vocab.json + rgb/<vid_name>.mp4."""
    vocab = [["Back", "15som", "05Twis", "FREE"], ["Forward", "25som", "NoTwis", "PIKE"]]
    (root / "rgb").mkdir(parents=True)
    (root / "Diving48_vocab.json").write_text(json.dumps(vocab))
    for subset, per_class in (("train", 3), ("test", 1)):
        items = []
        for label in range(len(vocab)):
            for g in range(per_class):
                vid = f"{subset}_{label}_{g}"
                _video(root / "rgb" / f"{vid}.mp4", seed=300 + 10 * label + g)
                items.append({"vid_name": vid, "label": label, "start_frame": 0, "end_frame": 11})
        (root / f"Diving48_V2_{subset}.json").write_text(json.dumps(items))
    return root


def _folder(root: Path) -> Path:
    """train/<class>/*.mp4 and val/<class>/*.mp4."""
    for ci, cls in enumerate(CLASSES):
        for g in range(3):
            _video(root / ("val" if g == 2 else "train") / cls / f"{g}.mp4", seed=400 + 10 * ci + g)
    return root


def _run(*argv: str) -> dict:
    assert main(list(argv) + TINY) == 0
    out = Path(argv[argv.index("--out") + 1])
    return load_results(out)


def test_finetune_ucf101_test_and_resume(tmp_path: Path) -> None:
    root = _ucf101(tmp_path / "ucf101")
    out = tmp_path / "ft"
    res = _run("finetune", "--dataset", "ucf101", "--root", str(root), "--split", "1", "--model", "test_r3d",
               "--out", str(out), "finetune.epochs=1", "finetune.batch_size=2")
    assert res["command"] == "finetune" and res["dataset"] == "ucf101" and res["split"] == 1
    assert res["weights"]["source"] == "random" and res["weights"]["sha256"] is None
    assert res["metrics"]["num_videos"] == 2 and res["metrics"]["num_clips"] == 2
    assert 0.0 <= res["metrics"]["top1"] <= 100.0 and res["metrics"]["top5"] == 100.0  # 2 classes
    assert res["config"]["finetune"]["dropout"] == 0.7 and res["config"]["finetune"]["schedule"]["milestones"] == [60, 120]
    for name in ("results.md", "config.yaml", "metrics.csv", "loss.png", "final.pt"):
        assert (out / name).is_file(), name
    assert "| ft | finetune | ucf101 | 1 | test_r3d | random init |" in (out / "results.md").read_text()
    steps_epoch1 = len((out / "metrics.csv").read_text().splitlines()) - 1
    assert steps_epoch1 == 2  # 4 training videos, batch 2

    # the saved classifier re-tests to the same accuracy through `test --checkpoint`
    tested = _run("test", "--dataset", "ucf101", "--root", str(root), "--model", "test_r3d",
                  "--checkpoint", str(out / "final.pt"), "--out", str(tmp_path / "test"))
    assert tested["metrics"]["top1"] == res["metrics"]["top1"]
    assert tested["weights"]["sha256"] == sha256_file(out / "final.pt")
    assert tested["weights"]["method"] == "finetune"

    # a longer run on the same folder resumes after epoch 1 instead of starting over
    resumed = _run("finetune", "--dataset", "ucf101", "--root", str(root), "--model", "test_r3d",
                   "--out", str(out), "finetune.epochs=2", "finetune.batch_size=2")
    rows = (out / "metrics.csv").read_text().splitlines()[1:]
    assert len(rows) == 2 * steps_epoch1
    assert [int(r.split(",")[0]) for r in rows] == [1, 2, 3, 4]
    assert resumed["metrics"]["epochs"] == 2

    # a finished run only re-tests, keeping the last epoch's training statistics
    again = _run("finetune", "--dataset", "ucf101", "--root", str(root), "--model", "test_r3d",
                 "--out", str(out), "finetune.epochs=2", "finetune.batch_size=2")
    assert len((out / "metrics.csv").read_text().splitlines()) == 5
    assert again["metrics"]["train_loss"] == resumed["metrics"]["train_loss"]
    assert again["metrics"]["top1"] == resumed["metrics"]["top1"]


def test_linear_hmdb51_cached_features(tmp_path: Path) -> None:
    root = _hmdb51(tmp_path / "hmdb51")
    out = tmp_path / "lin"
    res = _run("linear", "--dataset", "hmdb51", "--root", str(root), "--split", "1", "--model", "test_r3d",
               "--out", str(out), "linear.epochs=2", "linear.train_clips=2")
    assert res["metrics"]["num_videos"] == 2  # one test video per class
    cache = torch.load(out / "features_train.pt", weights_only=True)
    assert cache["features"].shape == (6 * 2, 32)  # 6 training videos x 2 clips, 32-d features
    assert cache["labels"].tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    final = torch.load(out / "final.pt", weights_only=False)
    assert final["format"] == "fima-models-train" and final["method"] == "linear" and final["num_classes"] == 2
    assert final["model"]["fc.weight"].shape == (2, 32)


def test_linear_diving48_with_augmentation(tmp_path: Path) -> None:
    root = _diving48(tmp_path / "diving48")
    res = _run("linear", "--dataset", "diving48", "--root", str(root), "--model", "test_r3d",
               "--out", str(tmp_path / "lin_aug"), "linear.augment=true", "linear.epochs=1", "linear.batch_size=3")
    assert res["dataset"] == "diving48" and res["metrics"]["num_videos"] == 2
    assert not (tmp_path / "lin_aug" / "features_train.pt").exists()
    assert res["metrics"]["steps"] == 2  # 6 videos, batch 3, one epoch


def test_retrieval_kinetics400_and_local_dir_provenance(tmp_path: Path) -> None:
    from fima_models.convert import convert_checkpoint

    # a pretraining-style checkpoint of this project's train/ format, exported as a zoo entry
    import fima_models

    backbone = fima_models.create_model("test_r3d", num_classes=0)
    ckpt = tmp_path / "pre.pt"
    torch.save({"format": "fima-models-train", "version": 1, "model_name": "test_r3d", "method": "fima",
                "epoch": 1, "step": 1, "model": backbone.state_dict(), "num_classes": 0, "config": {}, "state": {}},
               ckpt)
    zoo = tmp_path / "zoo"
    convert_checkpoint(ckpt, "test_r3d", zoo, pretrained_cfg={"method": "fima"})
    root = _kinetics400(tmp_path / "k400")
    res = _run("retrieval", "--dataset", "kinetics400", "--root", str(root), "--model", f"local-dir:{zoo}",
               "--out", str(tmp_path / "ret"), "retrieval.clips=2")
    assert set(res["metrics"]) >= {"R@1", "R@5", "R@10", "R@20", "R@50"}
    assert res["metrics"]["num_gallery"] == 4 and res["metrics"]["num_queries"] == 2
    assert res["metrics"]["R@5"] == 100.0  # the gallery holds every class
    assert res["backbone"] == "test_r3d"
    assert res["weights"] == {"source": "local-dir", "path": str((zoo / "model.safetensors").resolve()),
                              "sha256": sha256_file(zoo / "model.safetensors"), "method": "fima"}


def test_finetune_folder_from_pretraining_checkpoint(tmp_path: Path) -> None:
    import fima_models

    backbone = fima_models.create_model("test_r3d", num_classes=0)
    ckpt = tmp_path / "pre.pt"
    torch.save({"format": "fima-models-train", "version": 1, "model_name": "test_r3d", "method": "moco",
                "epoch": 1, "step": 1, "model": backbone.state_dict(), "num_classes": 0, "config": {}, "state": {}},
               ckpt)
    root = _folder(tmp_path / "videos")
    out = tmp_path / "ft"
    res = _run("finetune", "--dataset", "folder", "--root", str(root), "--model", "test_r3d", "--checkpoint",
               str(ckpt), "--out", str(out), "finetune.epochs=1", "finetune.batch_size=4", "finetune.optim.lr=0.0")
    assert res["weights"]["source"] == "checkpoint" and res["weights"]["sha256"] == sha256_file(ckpt)
    # lr 0: the backbone is still exactly the checkpoint after "training"
    final = torch.load(out / "final.pt", weights_only=False)["model"]
    for key, value in backbone.state_dict().items():
        if not key.endswith("num_batches_tracked") and "running" not in key:
            assert torch.equal(final[key], value), key


def test_linear_head_folds_into_one_linear_map() -> None:
    head = LinearHead(5, 3, "batchnorm")
    head.train()
    for _ in range(20):
        head(torch.randn(16, 5) * 3 + 2)
    head.eval()
    x = torch.randn(7, 5) * 3 + 2
    weight, bias = head.folded()
    assert torch.allclose(head(x), x @ weight.t() + bias, atol=1e-5)
    with pytest.raises(ValueError, match="feature_norm"):
        LinearHead(5, 3, "layernorm")


def test_resolve_config_layers_and_errors(tmp_path: Path) -> None:
    flags = {"root": str(tmp_path), "out": str(tmp_path / "o")}
    row = BASE_CONFIG.parent / "hmdb51_split2_finetune_i3d.yaml"
    cfg = resolve_config("finetune", row, flags, ["finetune.epochs=3"])
    assert (cfg["model"], cfg["dataset"], cfg["split"], cfg["data"]["size"]) == ("i3d", "hmdb51", 2, 224)
    assert cfg["finetune"]["dropout"] == 0.5 and cfg["finetune"]["epochs"] == 3
    with pytest.raises(ConfigError, match="finetune.epoch"):
        resolve_config("finetune", None, flags, ["finetune.epoch=3"])
    with pytest.raises(ConfigError, match="is a 'finetune' config"):
        resolve_config("linear", row, flags)
    with pytest.raises(ConfigError, match="--root"):
        resolve_config("linear", None, {"out": "x"})
    assert cfg["data"]["flip_p"] is None  # the paper's augmentation unless a recipe sets it
    assert resolve_config("finetune", row, flags, ["data.flip_p=0.25"])["data"]["flip_p"] == 0.25
    with pytest.raises(ConfigError, match="data.flip_p"):
        resolve_config("finetune", row, flags, ["data.flip_p=1.5"])
    assert main(["test", "--dataset", "ucf101", "--root", str(tmp_path / "missing"), "--model", "test_r3d",
                 "--out", str(tmp_path / "o")]) == 2


def test_every_row_config_resolves() -> None:
    rows = sorted(p for p in BASE_CONFIG.parent.glob("*.yaml") if not p.name.startswith(("_", "base")))
    assert len(rows) == 32
    for path in rows:
        command = next(c for c in ("finetune", "linear", "retrieval") if f"_{c}_" in path.stem)
        cfg = resolve_config(command, path, {"root": "r", "out": "o"})
        assert cfg["model"] in ("i3d", "r2plus1d_18") and cfg["model"] in path.stem
        assert cfg["data"]["size"] == (224 if cfg["model"] == "i3d" else 112)
        if command == "finetune" and cfg["dataset"] in ("ucf101", "hmdb51"):
            assert cfg["finetune"]["dropout"] == {"ucf101": 0.7, "hmdb51": 0.5}[cfg["dataset"]]


def test_summarize_tables_paper_numbers_and_split_means(tmp_path: Path) -> None:
    base = {"format": "fima-models-downstream", "version": 1, "command": "linear", "dataset": "ucf101",
            "model": "local-dir:z", "backbone": "i3d", "config": {},
            "weights": {"source": "local-dir", "sha256": "ab", "method": "fima"},
            "paper": paper_reference("i3d", "linear", "ucf101")}
    for split, top1 in ((1, 70.0), (2, 74.0), (3, 78.0)):
        run = tmp_path / "runs" / f"lin_s{split}"
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps({**base, "split": split, "metrics": {"top1": top1, "top5": 90.0}}))
    (tmp_path / "runs" / "other.json").write_text("{}")
    demo = tmp_path / "runs" / "demo"
    demo.mkdir()
    (demo / "results.json").write_text(json.dumps({"fima": {}}))  # not a downstream result: skipped
    records = collect_results([tmp_path / "runs"])
    assert [r["split"] for r in records] == [1, 2, 3]
    means = split_means(records)
    assert len(means) == 1 and means[0]["metrics"]["top1"] == pytest.approx(74.0)
    text = summarize([tmp_path / "runs"], out=tmp_path / "summary.md")
    assert "| lin_s2 | linear | ucf101 | 2 | i3d | local-dir (fima) | 74.0 | 90.0 | 75.3 | 58.1 |" in text
    assert "| mean of 3 runs | linear | ucf101 | mean 1,2,3 | i3d | local-dir (fima) | 74.0 | 90.0 | 75.3 | 58.1 |" in text
    assert (tmp_path / "summary.md").read_text() == text
    assert paper_reference("r2plus1d_18", "linear", "ucf101") is None
    assert paper_reference("i3d", "test", "hmdb51") == {"fima": 57.8, "moco": 48.8, "metric": "top1"}
    with pytest.raises(FileNotFoundError):
        collect_results([tmp_path / "nothing"])


def test_finetune_non_finite_loss_stops_with_exit_3(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _ucf101(tmp_path / "ucf101")
    # a learning rate of 1e38 makes the weights infinite after the first step: the second loss is not finite
    assert main(["finetune", "--dataset", "ucf101", "--root", str(root), "--model", "test_r3d", "--out",
                 str(tmp_path / "ft"), "finetune.epochs=1", "finetune.batch_size=2", "finetune.optim.lr=1e38"] + TINY) == 3
    assert "non-finite loss at step 2 (epoch 0)" in caplog.text and "Lower the learning rate (finetune.optim.lr)" in caplog.text
    assert not (tmp_path / "ft" / "final.pt").exists()


def test_cached_features_are_served_as_the_collated_items() -> None:
    from torch.utils.data import default_collate

    from train.downstream.linear import FeatureDataset

    features = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    dataset = FeatureDataset(features, torch.arange(10, dtype=torch.int32) % 3)
    indices = [7, 2, 2, 9]
    feats, labels = dataset.take(torch.tensor(indices))
    want_feats, want_labels = default_collate([dataset[i] for i in indices])
    assert torch.equal(feats, want_feats) and torch.equal(labels, want_labels) and labels.dtype == want_labels.dtype
