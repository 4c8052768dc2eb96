"""Training throughput of FIMA vs the MoCo baseline on the same backbone and input.

Two measurements:

1. **model step** (no data loading): random view tensors already on the device; each method runs
   ``--warmup`` untimed and ``--steps`` timed optimizer steps (momentum update, forward with all
   key encodings, backward, SGD). Reports clips/s (2 clips per video sample) and the FIMA/MoCo
   step-time ratio.
2. **pipeline** (optional, ``--data-root``): ``train.pretrain.run_pretrain`` on a UCF101-layout data
   set (e.g. the synthetic motion data) for ``--pipeline-steps`` steps per method; reports clips/s
   and the fraction of step time spent waiting for data, both from the run's metrics.csv
   (first step excluded).

Usage::

    python benchmarks/pretrain_step.py --arch test_r2plus1d --frames 8 --size 48 --batch 8 --device cpu
    python benchmarks/pretrain_step.py --arch r2plus1d_18 --frames 16 --size 112 --batch 16 --device cuda \\
        --precision auto --channels-last --data-root runs/data/synthetic_motion --json bench.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import fima_models  # noqa: E402
from fima_models._utils import atomic_write_text, to_channels_last_3d  # noqa: E402
from train.common.distributed import resolve_device  # noqa: E402
from train.common.loop import LoopPosition, TrainLoop  # noqa: E402
from train.common.precision import make_grad_scaler, resolve_precision  # noqa: E402
from train.common.run_log import read_csv  # noqa: E402
from train.fima.model import FimaPretrainer  # noqa: E402



def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="test_r2plus1d", help="fima_models architecture")
    p.add_argument("--frames", type=int, default=8, help="frames per view (clip_len / 2)")
    p.add_argument("--size", type=int, default=48, help="crop size S")
    p.add_argument("--batch", type=int, default=8, help="video samples per step (each has 2 clips)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per method")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per method")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", help="auto | fp32 | bf16 | fp16")
    p.add_argument("--compare-precision", default=None,
                   help="also time the model step at this precision in the same process, alternating with "
                        "--precision (e.g. --precision fp32 --compare-precision bf16)")
    p.add_argument("--channels-last", action="store_true", help="channels_last_3d weights and inputs")
    p.add_argument("--paper-heads", action="store_true", help="paper head widths (1024/128, decoder 512) instead of small")
    p.add_argument("--fused-passes", action="store_true",
                   help="fima.fused_encoder_passes: fewer, larger encoder calls (not the authors' BatchNorm batches)")
    p.add_argument("--data-root", default=None, help="UCF101-layout data for the pipeline measurement")
    p.add_argument("--pipeline-steps", type=int, default=6)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the pipeline measurement")
    p.add_argument("--json", default=None, help="write the results here")
    return p.parse_args(argv)


def heads(args: argparse.Namespace) -> dict[str, Any]:
    """FIMA config: the paper's head widths or the smoke widths, plus the fused-passes option."""
    cfg: dict[str, Any] = {"fused_encoder_passes": bool(args.fused_passes)}
    if not args.paper_heads:
        cfg.update({"proj_hidden": 64, "embed_dim": 32, "queue_size": 256, "motion_queue_size": 256,
                    "decoder": {"dim": 64, "heads": 2, "ffn_dim": 64, "layers": 2, "dropout": 0.1}})
    return cfg


def random_views(batch: int, frames: int, size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Random tensors shaped like a collated FimaViewTransform batch."""
    g = torch.Generator().manual_seed(0)
    views = {
        "rgb_global": torch.randn(batch, 2, 3, frames, size, size, generator=g),
        "diff_global": torch.randn(batch, 2, 3, frames, size, size, generator=g),
        "diff_local": torch.randn(batch, 2, 2, 3, frames, size, size, generator=g),
        "boxes": torch.tensor([[0.1, 0.0, 0.9, 0.8], [0.8, 0.2, 0.1, 1.0]]).expand(batch, 2, 4).clone(),
    }
    return {k: v.to(device) for k, v in views.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_step(args: argparse.Namespace, method: str, device: torch.device, precision: str) -> dict[str, float]:
    """Time optimizer steps of one method on random inputs."""
    torch.manual_seed(0)
    model = FimaPretrainer(fima_models.create_model(args.arch, num_classes=0), method, heads(args),
                           channels_last=args.channels_last).to(device)
    if args.channels_last:
        to_channels_last_3d(model)
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9, weight_decay=1e-4)
    # the optimizer step of pretraining itself (autocast, scaler, non-finite check), at a constant learning rate
    loop = TrainLoop(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0), make_grad_scaler(device, precision),
                     device, precision, failure_hint="Use --precision fp32")
    views = itertools.repeat(random_views(args.batch, args.frames, args.size, device))
    times, cpu_times = [], []
    for i in range(args.warmup + args.steps):
        _sync(device)
        t0 = time.perf_counter()
        c0 = time.process_time()
        model.momentum_update()
        loop.step(views, lambda batch: batch, lambda module, batch: module(batch), LoopPosition(step=i))
        _sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
    step = statistics.median(times)
    # CPU seconds of this process per step: on a shared CPU a fairer cost measure than wall time
    result = {"step_s": step, "clips_per_s": 2 * args.batch / step, "cpu_s": statistics.median(cpu_times)}
    if device.type == "cuda":
        result["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    return result


def pipeline(args: argparse.Namespace, method: str) -> dict[str, float]:
    """Run the real pretraining loop for a few steps and read clips/s and data-wait from its CSV."""
    from train.pretrain import run_pretrain

    cfg = {
        "method": method,
        "device": args.device,
        "precision": args.precision,
        "channels_last": bool(args.channels_last),
        "model": {"arch": args.arch},
        "data": {"root": args.data_root, "clip_len": 2 * args.frames, "size": args.size, "num_workers": args.workers},
        "train": {"epochs": 1000, "batch_size": args.batch, "stop_after_steps": args.pipeline_steps,
                  "tensorboard": False, "progress": False, "print_every": 0},
        "fima": heads(args),
    }
    with tempfile.TemporaryDirectory() as tmp:
        run_pretrain(cfg, Path(tmp) / method)
        rows = read_csv(Path(tmp) / method / "metrics.csv")[1:]
    return {
        "clips_per_s": statistics.mean(float(r["clips_per_s"]) for r in rows),
        "data_wait_frac": statistics.mean(float(r["data_wait_frac"]) for r in rows),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print (and optionally save) the results."""
    logging.basicConfig(level=logging.WARNING)
    args = parse_args(argv)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    res: dict[str, Any] = {
        "arch": args.arch, "frames": args.frames, "size": args.size, "batch": args.batch, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "precision": precision, "channels_last": bool(args.channels_last),
        "paper_heads": bool(args.paper_heads), "fused_passes": bool(args.fused_passes), "torch": torch.__version__, "model_step": {}, "pipeline": {},
    }
    compare = resolve_precision(args.compare_precision, device) if args.compare_precision else None
    if compare:
        res["compare_precision"], res["model_step_compare"], res["compare_speedup"] = compare, {}, {}
    for method in ("moco", "fima"):
        res["model_step"][method] = model_step(args, method, device, precision)
        if compare:
            res["model_step_compare"][method] = model_step(args, method, device, compare)
            res["compare_speedup"][method] = res["model_step"][method]["step_s"] / res["model_step_compare"][method]["step_s"]
    res["fima_over_moco_step_time"] = res["model_step"]["fima"]["step_s"] / res["model_step"]["moco"]["step_s"]
    if device.type == "cpu":
        res["fima_over_moco_cpu_time"] = res["model_step"]["fima"]["cpu_s"] / res["model_step"]["moco"]["cpu_s"]
    if args.data_root:
        for method in ("moco", "fima"):
            res["pipeline"][method] = pipeline(args, method)
    print(f"{args.arch} {args.frames}x{args.size} batch {args.batch} on {res['device_name']} ({precision})")
    for method, r in res["model_step"].items():
        print(f"  model step {method:5s}: {r['clips_per_s']:8.1f} clips/s  ({r['step_s'] * 1000:.0f} ms/step, "
              f"{r['cpu_s'] * 1000:.0f} ms CPU)")
    for method, r in res.get("model_step_compare", {}).items():
        print(f"  model step {method:5s} ({compare}): {r['clips_per_s']:8.1f} clips/s  ({r['step_s'] * 1000:.0f} ms/step), "
              f"{res['compare_speedup'][method]:.2f}x {precision}")
    print(f"  FIMA / MoCo step time: {res['fima_over_moco_step_time']:.2f}x")
    if "fima_over_moco_cpu_time" in res:
        print(f"  FIMA / MoCo CPU time per step: {res['fima_over_moco_cpu_time']:.2f}x")
    for method, r in res["pipeline"].items():
        print(f"  pipeline   {method:5s}: {r['clips_per_s']:8.1f} clips/s, data wait {100 * r['data_wait_frac']:.1f}% of step time")
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
