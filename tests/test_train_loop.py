"""The training-loop core (train/common/loop.py) and the ``python -m train`` dispatcher.

The end-to-end behaviour of the loop (losses, checkpoints, exact resume) is tested through the
recipes in test_pretrain.py and test_downstream.py; these tests pin the core's own rules with
expected values computed here without it.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from train.__main__ import main as train_main
from train.common.loop import CheckpointCadence, LoopPosition, NonFiniteLossError, TrainLoop
from train.common.precision import make_grad_scaler
from train.common.sampling import ResumableBatchSampler

CPU = torch.device("cpu")


def _loop(model: nn.Module, lr: float = 0.1, **kwargs) -> TrainLoop:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    return TrainLoop(model, optimizer, scheduler, make_grad_scaler(CPU, "fp32"), CPU, "fp32",
                     failure_hint="Lower optim.lr", **kwargs)


def _mse(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    x, y = batch
    return {"loss": ((model(x) - y) ** 2).mean()}


def test_cadence_rules() -> None:
    cadence = CheckpointCadence(total_steps=12, every_steps=5, every_epochs=2)
    # every 5 steps, after epochs 2, 4, ... (epochs_done counts finished epochs), and the last step
    assert [s for s in range(1, 13) if cadence.due(s, epochs_done=0, epoch_end=False)] == [5, 10, 12]
    assert cadence.due(4, epochs_done=2, epoch_end=True) and not cadence.due(3, epochs_done=1, epoch_end=True)
    assert not cadence.due(4, epochs_done=2, epoch_end=False)
    assert not cadence.finished(11) and cadence.finished(12)
    stopping = CheckpointCadence(total_steps=12, stop_after_steps=7)
    assert stopping.stops_at(7) and not stopping.stops_at(6)
    assert stopping.due(7, epochs_done=0, epoch_end=False) and not stopping.due(6, epochs_done=0, epoch_end=False)
    assert stopping.finished(7) and not stopping.finished(6)


def test_accumulated_step_equals_one_full_batch_step() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    accumulated = nn.Linear(3, 2)
    reference = nn.Linear(3, 2)
    reference.load_state_dict(accumulated.state_dict())
    loop = _loop(accumulated, accum_steps=2)
    halves = iter([(x[:4], y[:4]), (x[4:], y[4:])])
    outputs, lr, _wait = loop.step(halves, lambda batch: batch, _mse, LoopPosition())
    # the same SGD step by hand on the whole batch: w -= lr * grad(mean loss over 8 samples)
    loss = ((reference(x) - y) ** 2).mean()
    grads = torch.autograd.grad(loss, list(reference.parameters()))
    with torch.no_grad():
        for p, g in zip(reference.parameters(), grads):
            p -= 0.1 * g
    for got, want in zip(accumulated.parameters(), reference.parameters()):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(outputs["loss"], loss.detach())  # halves of equal size: mean of the two means
    assert lr == 0.1 and loop.optimizer.param_groups[0]["lr"] == 0.05  # the step used 0.1, then the schedule stepped
    assert all(p.grad is None for p in accumulated.parameters())


def test_non_finite_loss_stops_before_the_weights_change() -> None:
    model = nn.Linear(3, 2)
    before = [p.detach().clone() for p in model.parameters()]
    loop = _loop(model, inject_nan_at_step=4)
    loop.last_checkpoint = Path("run/checkpoint_00000002.pt")
    batches = itertools.repeat((torch.ones(2, 3), torch.zeros(2, 2)))
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 4 \(epoch 1\): loss=.*"
                                                 r"checkpoint_00000002\.pt\. Lower optim\.lr, then rerun"):
        loop.step(batches, lambda batch: batch, _mse, LoopPosition(step=3, epoch=1))
    for got, want in zip(model.parameters(), before):
        assert torch.equal(got, want)


class _Indices(Dataset):
    """Item ``(epoch, index)`` -> the index as a one-element float tensor (and itself as target)."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        value = torch.tensor([float(key[1])])
        return value, value


def _record_run(position: LoopPosition, stop_after: int | None, seen: list[list[int]], saved: list[LoopPosition]) -> LoopPosition:
    model = nn.Linear(1, 1)
    loop = _loop(model, lr=0.0, accum_steps=2)
    sampler = ResumableBatchSampler(12, 2, seed=3, shuffle=True, drop_last=True)  # 6 micro-batches: 3 steps
    loader = DataLoader(_Indices(), batch_sampler=sampler)

    def forward(module: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        seen.append([int(v) for v in batch[0].flatten()])
        return _mse(module, batch)

    def save(pos: LoopPosition) -> Path:
        saved.append(pos)
        return Path(f"checkpoint_{pos.step:08d}.pt")

    cadence = CheckpointCadence(total_steps=6, every_epochs=1, stop_after_steps=stop_after)
    return loop.run(loader, sampler, position, 2, 3, lambda batch: batch, forward, cadence, save,
                    samples_per_step=4, progress=False)


def test_run_resumed_mid_epoch_sees_the_batches_of_an_uninterrupted_run() -> None:
    full, full_saves = [], []
    end = _record_run(LoopPosition(), None, full, full_saves)
    assert end == LoopPosition(step=6, epoch=2, step_in_epoch=0)
    assert len(full) == 12 and sorted(i for b in full[:6] for i in b) == list(range(12))  # one epoch = every sample
    assert [(p.step, p.epoch) for p in full_saves] == [(3, 1), (6, 2)]

    first, first_saves = [], []
    stopped = _record_run(LoopPosition(), 2, first, first_saves)
    assert stopped == LoopPosition(step=2, epoch=0, step_in_epoch=2) and first_saves == [stopped]
    rest, _ = [], []
    _record_run(stopped, None, rest, [])
    assert first + rest == full


def test_train_dispatcher(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_help:
        train_main(["pretrain", "--help"])
    assert exit_help.value.code == 0 and "--init-from-authors" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_unknown:
        train_main(["pretrian"])
    assert exit_unknown.value.code == 2 and "invalid choice: 'pretrian'" in capsys.readouterr().err
    assert train_main([]) == 2
    listed = capsys.readouterr().out
    assert all(command in listed for command in ("pretrain", "finetune", "linear", "retrieval", "test", "summarize", "demo"))
    # a downstream command runs through its own handler; demo gets its arguments as they are
    assert train_main(["test", "--dataset", "ucf101", "--root", str(tmp_path / "missing"), "--model", "test_r3d",
                       "--out", str(tmp_path / "out")]) == 2
    with pytest.raises(SystemExit) as exit_demo:
        train_main(["demo", "--compare", str(tmp_path / "no_run")])
    assert exit_demo.value.code == 2 and "python -m train demo" in capsys.readouterr().err
