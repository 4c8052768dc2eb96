"""``python -m train demo --out DIR``: the whole pipeline, offline, on two CPU cores in minutes.

Steps (all through the real code paths):

1. **Data** -- :func:`fima_models.data.synthetic.write_motion_dataset` renders two disjoint
   sets of procedural motion videos in the UCF101 layout, where the label is the motion and the
   appearance is random per video: a *pretraining* set over some motion classes (used without
   labels) and a *probe* set over the **other**, held-out motion classes, with a train / test
   split. A backbone therefore scores on the probe only through motion features that transfer
   to motions it never saw.
2. **Pretraining** -- :func:`train.pretrain.run_pretrain` trains FIMA and the MoCo baseline with
   the same backbone, data, schedule and number of steps (configs derived from
   ``train/configs/smoke_{fima,moco}.yaml``).
3. **Export** -- :func:`fima_models.convert.convert_checkpoint` turns each final checkpoint into a
   zoo entry (``model.safetensors`` + ``config.json`` + model card) and
   ``fima_models.create_model("local-dir:...")`` loads it back; the loaded weights are checked
   against the checkpoint tensor by tensor.
4. **Evaluation** -- the downstream recipes (``python -m train linear`` / ``retrieval``, run
   in-process) evaluate the FIMA and MoCo zoo entries and a randomly initialised backbone on the
   held-out probe set: a linear probe (10-clip-style multi-clip test) and retrieval Recall@k.
5. **Report** -- ``DIR/results.json`` (``{"fima": {"linear_top1", "retrieval_r1", ...}, "moco":
   {...}, "random": {...}, "setup": {...}}``), ``DIR/results.md`` and ``DIR/demo.png`` (pretraining
   loss curves and the accuracy comparison).

Every setting is in :data:`DEMO_CONFIG`; change any with dotted ``key=value`` overrides
(``pretrain.epochs=10 probe.linear_epochs=100``); ``--tiny`` shrinks everything for tests.
Re-running on the same ``--out`` reuses the generated data and resumes finished steps.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

import fima_models
from fima_models.checkpoint import load_backbone_state_dict
from fima_models.convert import convert_checkpoint
from fima_models.data.synthetic import write_motion_dataset
from train.common.checkpoint import atomic_write, atomic_write_text
from train.common.config import ConfigError, apply_overrides, load_yaml, merge
from train.common.run_log import read_csv, setup_console_logging
from train.downstream import resolve_config
from train.downstream import run as run_downstream
from train.pretrain import run_pretrain

__all__ = ["DEMO_CONFIG", "TINY_OVERRIDES", "binomial_se", "demo_config", "run_demo", "main"]

log = logging.getLogger(__name__)

_CONFIGS = Path(__file__).resolve().parent / "configs"

#: Everything the demo does, in one place (dotted key=value overrides apply to it).
DEMO_CONFIG: dict[str, Any] = {
    "seed": 0,
    # one compute thread: on two cores the other one decodes and augments (pretrain data.num_workers=1);
    # more threads than free cores makes OpenMP spin and runs many times slower
    "threads": 1,
    "data": {
        # pretraining motions (labels unused) and held-out probe motions: disjoint sets
        "pretrain_classes": [
            "MoveLeft", "MoveUp", "MoveDownRight", "CircleClockwise", "ZoomIn", "ShakeHorizontal", "Static",
        ],
        "probe_classes": [
            "MoveRight", "MoveDown", "MoveUpLeft", "MoveRightFast", "CircleCounterClockwise", "ZoomOut",
            "ShakeVertical",
        ],
        "pretrain_videos_per_class": 16,
        # 30 per class, half of them test: 105 test videos (binomial SE about 3.5 points near chance)
        "probe_videos_per_class": 30,
        "probe_test_fraction": 0.5,
        "num_frames": 32,
        # 32x32 frames: 4x cheaper than 64x64 to decode and to train on, so 3x more steps fit the budget
        "size": 32,
    },
    "pretrain": {
        "fima_config": str(_CONFIGS / "smoke_fima.yaml"),
        "moco_config": str(_CONFIGS / "smoke_moco.yaml"),
        # merged over both smoke configs, so both methods get the same backbone, data and budget
        "overrides": {
            "device": "cpu",
            "model": {"arch": "test_r2plus1d"},
            "data": {
                "clip_len": 16, "size": 32, "num_workers": 1, "synthetic": None,
                # FIMA's full augmentation (crops of 20-100 %, jitter p=0.8, grayscale, blur) keeps every
                # loss at chance level for this backbone and budget (docs/demo.md); without it the
                # losses fall within the budget. Same for both methods.
                "transform": {"scale": [0.9, 1.0], "flip_p": 0.0, "jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0},
            },
            "train": {"epochs": 18, "batch_size": 8, "checkpoint_every_epochs": 6, "print_every": 10},
            # a run of ~250 steps: a slower-moving key encoder (0.999) would barely leave its random init
            "fima": {"momentum": 0.99},
        },
    },
    "probe": {
        "clip_len": 8,  # = the pretraining global view: 8 frames ...
        "step": 2,  # ... taken every 2nd frame
        "size": 32,
        "test_clips": 4,
        "linear_train_clips": 4,
        "linear_epochs": 60,
        "linear_batch_size": 64,
        "linear_lr": 0.1,
        "retrieval_clips": 4,
        "random_baseline": True,
    },
}

#: ``--tiny``: the same steps at toy size (for tests; the numbers mean nothing).
TINY_OVERRIDES: list[str] = [
    "data.pretrain_classes=[MoveLeft, MoveUp, ZoomIn]",
    "data.probe_classes=[MoveRight, MoveDown]",
    "data.pretrain_videos_per_class=2",
    "data.probe_videos_per_class=3",
    "data.probe_test_fraction=0.34",
    "data.num_frames=16",
    "data.size=32",
    "pretrain.overrides.data.clip_len=8",
    "pretrain.overrides.data.size=32",
    "pretrain.overrides.train.epochs=1",
    "pretrain.overrides.train.batch_size=2",
    "pretrain.overrides.train.checkpoint_every_epochs=1",
    "pretrain.overrides.data.num_workers=0",
    "probe.clip_len=4",
    "probe.size=32",
    "probe.test_clips=2",
    "probe.linear_train_clips=2",
    "probe.linear_epochs=2",
    "probe.retrieval_clips=2",
]

METHODS = ("fima", "moco")


def demo_config(overrides: Sequence[str] = (), tiny: bool = False) -> dict[str, Any]:
    """The demo configuration: :data:`DEMO_CONFIG`, then ``--tiny``, then ``key=value`` overrides."""
    cfg = copy.deepcopy(DEMO_CONFIG)
    if tiny:
        cfg = apply_overrides(cfg, TINY_OVERRIDES)
    cfg = apply_overrides(cfg, overrides)
    overlap = set(cfg["data"]["pretrain_classes"]) & set(cfg["data"]["probe_classes"])
    if overlap:
        raise ConfigError(f"probe classes must be held out from pretraining; both lists contain {sorted(overlap)}")
    return cfg


def _prepare_data(cfg: Mapping[str, Any], out: Path) -> tuple[Path, Path]:
    data = cfg["data"]
    common = {"num_frames": int(data["num_frames"]), "size": int(data["size"]), "progress": False}
    pre = write_motion_dataset(
        out / "data" / "pretrain",
        classes=list(data["pretrain_classes"]),
        videos_per_class=int(data["pretrain_videos_per_class"]),
        seed=int(cfg["seed"]),
        test_fraction=0.0,  # every pretraining video is in trainlist01 (labels are never used)
        **common,
    )
    probe = write_motion_dataset(
        out / "data" / "probe",
        classes=list(data["probe_classes"]),
        videos_per_class=int(data["probe_videos_per_class"]),
        seed=int(cfg["seed"]) + 1,
        test_fraction=float(data["probe_test_fraction"]),
        **common,
    )
    return pre, probe


def _pretrain(cfg: Mapping[str, Any], method: str, data_root: Path, out: Path) -> tuple[Path, dict[str, Any]]:
    section = cfg["pretrain"]
    base = load_yaml(section[f"{method}_config"])
    pcfg = merge(base, section["overrides"])
    pcfg = merge(pcfg, {"method": method, "seed": int(cfg["seed"]), "data": {"root": str(data_root)}})
    run_dir = out / f"pretrain_{method}"
    t0 = time.perf_counter()
    final = run_pretrain(pcfg, run_dir)
    rows = read_csv(run_dir / "metrics.csv")
    info = {
        "checkpoint": str(final),
        "steps": int(float(rows[-1]["step"])) if rows else 0,
        "final_loss": float(rows[-1]["loss"]) if rows else math.nan,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    log.info("%s pretraining: %d steps, final loss %.3f, %.0f s", method, info["steps"], info["final_loss"],
             info["wall_s"])
    return final, info


def _export(checkpoint: Path, arch: str, method: str, out: Path) -> tuple[Path, str]:
    """Convert a checkpoint into a zoo entry and check ``create_model('local-dir:...')`` returns its weights."""
    zoo_dir = out / "zoo" / f"{arch}_{method}_demo"
    convert_checkpoint(
        checkpoint, arch, zoo_dir, overwrite=True,
        pretrained_cfg={"method": method, "dataset": "synthetic-motion"},
    )
    model = fima_models.create_model(f"local-dir:{zoo_dir}", num_classes=0)
    expected = load_backbone_state_dict(checkpoint).state_dict
    loaded = model.state_dict()
    mismatched = [k for k, v in expected.items() if k not in loaded or not torch.equal(loaded[k], v)]
    if mismatched:
        raise RuntimeError(f"local-dir:{zoo_dir} does not reproduce {checkpoint}: {mismatched[:5]} differ")
    log.info("exported %s -> local-dir:%s (%d tensors identical after reload)", checkpoint.name, zoo_dir, len(expected))
    return zoo_dir, f"local-dir:{zoo_dir}"


def _probe(cfg: Mapping[str, Any], model: str, probe_root: Path, out: Path) -> dict[str, float]:
    """Linear probe and retrieval of one backbone on the held-out probe set."""
    p = cfg["probe"]
    common = [
        f"data.clip_len={p['clip_len']}", f"data.step={p['step']}", f"data.size={p['size']}",
        f"data.test_clips={p['test_clips']}", "data.workers=0", "device=cpu", f"seed={cfg['seed']}",
        "log.tensorboard=false", "log.print_every=0",
    ]
    flags = {"dataset": "ucf101", "root": str(probe_root), "split": 1, "model": model}
    linear = run_downstream(resolve_config("linear", None, {**flags, "out": str(out / "linear")}, common + [
        f"linear.train_clips={p['linear_train_clips']}", f"linear.epochs={p['linear_epochs']}",
        f"linear.batch_size={p['linear_batch_size']}", f"linear.optim.lr={p['linear_lr']}",
        f"linear.save_every={p['linear_epochs']}",
    ]))
    retrieval = run_downstream(resolve_config("retrieval", None, {**flags, "out": str(out / "retrieval")}, common + [
        f"retrieval.clips={p['retrieval_clips']}",
    ]))
    n_test = int(linear.get("num_videos") or 0)
    return {
        "linear_top1": round(linear["top1"], 2),
        "linear_top5": round(linear["top5"], 2),
        "retrieval_r1": round(retrieval["R@1"], 2),
        "retrieval_r5": round(retrieval["R@5"], 2),
        "retrieval_r10": round(retrieval["R@10"], 2),
        "test_videos": n_test,
        "linear_top1_se": round(binomial_se(linear["top1"], n_test), 2),
        "retrieval_r1_se": round(binomial_se(retrieval["R@1"], n_test), 2),
    }


def binomial_se(percent: float, n: int) -> float:
    """Standard error (in points) of an accuracy of ``percent`` % measured on ``n`` independent test videos."""
    if n <= 0:
        return math.nan
    p = min(max(percent / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(p * (1.0 - p) / n)


def _pm(r: Mapping[str, Any], key: str) -> str:
    se = r.get(f"{key}_se")
    return f"{r[key]:.1f}" if se is None or math.isnan(se) else f"{r[key]:.1f} ± {se:.1f}"


def _table(results: Mapping[str, Any], chance: float) -> str:
    lines = [
        "| backbone | linear top-1 | linear top-5 | retrieval R@1 | R@5 | R@10 | pretrain steps | final loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("fima", "moco", "random"):
        if name not in results:
            continue
        r = results[name]
        steps = r.get("pretrain_steps", "-")
        loss = r.get("pretrain_final_loss")
        lines.append(
            f"| {name} | {_pm(r, 'linear_top1')} | {r['linear_top5']:.1f} | {_pm(r, 'retrieval_r1')} | "
            f"{r['retrieval_r5']:.1f} | {r['retrieval_r10']:.1f} | {steps} | "
            f"{'-' if loss is None else f'{loss:.3f}'} |"
        )
    lines.append("")
    n_test = next((results[k].get("test_videos") for k in ("fima", "moco", "random") if k in results), None)
    lines.append(f"Chance: {chance:.1f} % top-1 ({results['setup']['probe_classes']} held-out motion classes, "
                 f"{n_test} test videos). ± is the binomial standard error over the test videos (one pretraining "
                 "seed; it does not include the spread between pretraining seeds).")
    return "\n".join(lines)


def _plot(out: Path, results: Mapping[str, Any], chance: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = {"fima": "tab:red", "moco": "tab:blue", "random": "tab:gray"}
    for method in METHODS:
        rows = read_csv(out / f"pretrain_{method}" / "metrics.csv")
        steps = [int(float(r["step"])) for r in rows]
        ax_loss.plot(steps, [float(r["loss"]) for r in rows], color=colours[method], label=f"{method}: total loss")
        if method == "fima" and rows and "loss_global" in rows[0]:
            ax_loss.plot(steps, [float(r["loss_global"]) for r in rows], color=colours[method], linestyle="--",
                         label="fima: global (MoCo) term")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("InfoNCE loss")
    ax_loss.set_title("pretraining")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    names = [n for n in ("fima", "moco", "random") if n in results]
    metrics = [("linear_top1", "linear top-1"), ("retrieval_r1", "retrieval R@1"), ("retrieval_r5", "retrieval R@5")]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(metrics))]
        vals = [results[name][m] for m, _ in metrics]
        bars = ax_acc.bar(xs, vals, width, color=colours[name], label=name)
        ax_acc.bar_label(bars, fmt="%.0f", fontsize=8)
    ax_acc.axhline(chance, color="black", linestyle=":", linewidth=1, label=f"chance ({chance:.0f} %)")
    ax_acc.set_xticks(range(len(metrics)), [label for _, label in metrics])
    ax_acc.set_ylabel("% (held-out motion classes)")
    ax_acc.set_ylim(0, 105)
    ax_acc.set_title("motion probe")
    ax_acc.legend()
    fig.tight_layout()
    path = out / "demo.png"
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=100), mode="wb")
    plt.close(fig)
    return path


def run_demo(out: str | Path, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Run the demo into ``out`` and return what ``results.json`` holds."""
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(int(cfg["threads"]))
    try:
        return _run_demo(out, cfg)
    finally:
        torch.set_num_threads(threads)


def _run_demo(out: Path, cfg: Mapping[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    pre_root, probe_root = _prepare_data(cfg, out)
    log.info("data ready in %.0f s: pretraining %s, probe %s", time.perf_counter() - t0, pre_root, probe_root)
    arch = str(cfg["pretrain"]["overrides"]["model"]["arch"])
    results: dict[str, Any] = {}
    for method in METHODS:
        checkpoint, info = _pretrain(cfg, method, pre_root, out)
        zoo_dir, model_name = _export(checkpoint, arch, method, out)
        scores = _probe(cfg, model_name, probe_root, out / f"probe_{method}")
        results[method] = {**scores, "pretrain_steps": info["steps"], "pretrain_final_loss": round(info["final_loss"], 4),
                           "pretrain_wall_s": info["wall_s"], "zoo_entry": str(zoo_dir)}
        log.info("%s: %s", method, scores)
    if cfg["probe"].get("random_baseline", True):
        results["random"] = _probe(cfg, arch, probe_root, out / "probe_random")
    num_probe = len(cfg["data"]["probe_classes"])
    chance = 100.0 / num_probe
    results["setup"] = {
        "backbone": arch,
        "pretrain_classes": len(cfg["data"]["pretrain_classes"]),
        "pretrain_videos": len(cfg["data"]["pretrain_classes"]) * int(cfg["data"]["pretrain_videos_per_class"]),
        "probe_classes": num_probe,
        "probe_videos": num_probe * int(cfg["data"]["probe_videos_per_class"]),
        "chance_top1": round(chance, 2),
        "config": cfg,
    }
    results["wall_time_s"] = round(time.perf_counter() - t0, 1)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / "results.md", "# Demo: FIMA vs MoCo on held-out motions\n\n" + _table(results, chance) + "\n")
    _plot(out, results, chance)
    log.info("demo finished in %.0f s: %s", results["wall_time_s"], out / "results.md")
    return results


def main(argv: list[str] | None = None) -> int:
    """``python -m train demo --out DIR [--tiny] [key=value ...]``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m train demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (reused data and finished runs are kept)")
    parser.add_argument("--tiny", action="store_true", help="toy sizes for tests (the numbers mean nothing)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of DEMO_CONFIG, e.g. pretrain.overrides.train.epochs=10")
    args = parser.parse_args(argv)
    setup_console_logging()
    try:
        cfg = demo_config(args.overrides, tiny=args.tiny)
    except ConfigError as err:
        parser.error(str(err))
    results = run_demo(args.out, cfg)
    print(Path(args.out, "results.md").read_text())
    return 0 if all(k in results for k in METHODS) else 1
