"""Two CPU processes (gloo): shuffled BatchNorm across ranks, gradient sync and queue sync of FIMA.

Each test spawns two ranks with ``torch.multiprocessing``; the ranks write what they observed to
files, the test process compares them.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fima_models
from train.fima.model import FimaPretrainer
from train.fima.momentum import shuffled_forward

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)

WORLD = 2
TINY_FIMA = {
    "queue_size": 12,
    "motion_queue_size": 12,
    "dense_queue_size": 16,
    "dense_queue_keys_per_clip": 2,
    "proj_hidden": 16,
    "embed_dim": 8,
    "decoder": {"dim": 16, "heads": 2, "ffn_dim": 16, "layers": 1, "dropout": 0.0},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _setup(rank: int, port: int) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)


def _worker(rank: int, port: int, out_dir: str) -> None:
    _setup(rank, port)
    try:
        _shuffle_check(rank, out_dir)
        _step_check(rank, out_dir)
    finally:
        dist.destroy_process_group()


def _shuffle_check(rank: int, out_dir: str) -> None:
    x = torch.arange(4.0).reshape(4, 1) + 10.0 * rank  # rank 0: 0..3, rank 1: 10..13
    torch.manual_seed(123)  # the permutation is drawn on rank 0 and broadcast

    def centre(v: torch.Tensor) -> torch.Tensor:
        return v - v.mean(dim=0, keepdim=True)

    out = shuffled_forward(centre, x, splits=1)
    torch.save({"x": x, "out": out}, Path(out_dir) / f"shuffle{rank}.pt")


def _batch(rank: int, n: int = 2, t: int = 8, s: int = 32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)  # different data on each rank
    return {
        "rgb_global": torch.randn(n, 2, 3, t, s, s, generator=g),
        "diff_global": torch.randn(n, 2, 3, t, s, s, generator=g),
        "diff_local": torch.randn(n, 2, 2, 3, t, s, s, generator=g),
        "boxes": torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 0.2, 0.8]]).expand(n, 2, 4).clone(),
    }


def _step_check(rank: int, out_dir: str) -> None:
    torch.manual_seed(0)  # identical initialisation on both ranks (DDP also broadcasts rank 0's)
    model = FimaPretrainer(fima_models.create_model("test_r3d", num_classes=0), "fima", TINY_FIMA)
    ddp = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    before = {k: v.detach().clone() for k, v in model.encoder_q.state_dict().items()}
    torch.manual_seed(1 + rank)
    model.momentum_update()
    out = ddp(_batch(rank))
    out["loss"].backward()
    local_grad = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    opt.step()
    torch.save(
        {
            "params": {n: p.detach().clone() for n, p in model.named_parameters()},
            "before": before,
            "grads": local_grad,
            "queue": model.queue.queue.clone(),
            "motion_queue": model.motion_queue.queue.clone(),
            "dense_queue": model.dense_queue.queue.clone(),
            "loss": out["loss"].detach(),
        },
        Path(out_dir) / f"step{rank}.pt",
    )


@pytest.fixture(scope="module")
def ddp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run both checks in one spawn of two ranks (process start-up dominates the cost)."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return out


def test_shuffled_bn_across_ranks_matches_global_permutation(ddp_dir: Path) -> None:
    res = [torch.load(ddp_dir / f"shuffle{r}.pt") for r in range(WORLD)]
    x_all = torch.cat([r["x"] for r in res])
    out_all = torch.cat([r["out"] for r in res])
    torch.manual_seed(123)
    perm = torch.randperm(2 * 4)
    expected = torch.empty_like(x_all)
    for r in range(WORLD):
        group = perm[r * 4 : (r + 1) * 4]  # the samples rank r encoded together
        expected[group] = x_all[group] - x_all[group].mean(dim=0, keepdim=True)
    assert torch.allclose(out_all, expected)
    # the groups really mix the ranks' samples, so the result differs from per-rank statistics
    per_rank = torch.cat([r["x"] - r["x"].mean(dim=0, keepdim=True) for r in res])
    assert not torch.allclose(out_all, per_rank)


def test_ddp_step_keeps_parameters_and_queues_identical(ddp_dir: Path) -> None:
    r0, r1 = (torch.load(ddp_dir / f"step{r}.pt") for r in range(WORLD))
    assert r0["loss"].item() != pytest.approx(r1["loss"].item())  # the ranks saw different data
    for name, p0 in r0["params"].items():
        assert torch.equal(p0, r1["params"][name]), f"parameter {name} differs across ranks after the step"
    # gradients were averaged: every trainable parameter has the same gradient on both ranks
    assert r0["grads"].keys() == r1["grads"].keys() and r0["grads"]
    for name in r0["grads"]:
        assert torch.allclose(r0["grads"][name], r1["grads"][name], atol=1e-7), name
    changed = [k for k, v in r0["before"].items() if v.is_floating_point() and "weight" in k and not torch.equal(v, r0["params"]["encoder_q." + k])]
    assert changed, "the optimizer step did not change the backbone"
    for key in ("queue", "motion_queue", "dense_queue"):
        assert torch.equal(r0[key], r1[key]), f"{key} differs across ranks"


def test_torchrun_pretrain_two_processes(tmp_path: Path) -> None:
    """The real entry point under torchrun: 2 CPU ranks with gradient accumulation, gathered RNG states."""
    import subprocess
    import sys

    import yaml

    from fima_models.data.synthetic import write_motion_dataset

    root = write_motion_dataset(tmp_path / "data", classes=["MoveLeft", "ZoomIn", "Static"], videos_per_class=4,
                                num_frames=16, size=32, progress=False)
    cfg = {
        "device": "cpu", "precision": "fp32", "channels_last": False, "model": {"arch": "test_r3d"},
        "data": {"root": str(root), "clip_len": 8, "size": 32, "num_workers": 0},
        # global batch 8 = 2 ranks x 2 accumulation steps x 2 videos: exercises DDP no_sync
        "train": {"epochs": 1, "batch_size": 8, "accum_steps": 2, "progress": False, "tensorboard": False},
        "fima": {**TINY_FIMA, "key_bn_splits": 1},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "train",
           "pretrain", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "run")]
    proc = subprocess.run(cmd, env=env, cwd=repo, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    from train.common.checkpoint import find_latest
    from train.common.run_log import read_csv

    state = torch.load(find_latest(tmp_path / "run"), weights_only=True)
    assert state["state"]["world_size"] == 2 and len(state["state"]["rng"]) == 2
    assert len(read_csv(tmp_path / "run" / "metrics.csv")) == state["step"] >= 1
    fima_models.create_model("test_r3d", num_classes=0).load_state_dict(state["model"], strict=True)
