"""Optimiser and learning-rate schedules shared by pretraining and downstream recipes.

The schedules are per optimizer step (:class:`torch.optim.lr_scheduler.LambdaLR`), so they resume
exactly from a state dict and behave the same with any number of steps per epoch.

Config (``optim`` section)::

    optim:
      name: sgd
      lr: 0.00375          # base learning rate
      momentum: 0.9
      weight_decay: 1.0e-4
      nesterov: false
      no_decay_norm_bias: false   # true: no weight decay on BatchNorm/LayerNorm weights and biases
    schedule:
      name: cosine         # cosine | step | constant
      warmup_epochs: 0     # linear warm-up from warmup_start_factor * lr
      warmup_start_factor: 0.0
      min_lr_factor: 0.0   # cosine floor, as a fraction of lr
      milestones: [60, 120]   # step schedule: epochs where lr is multiplied by gamma
      gamma: 0.1
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

__all__ = ["build_optimizer", "build_scheduler", "lr_factor_fn", "param_groups"]


def param_groups(
    modules_or_params: nn.Module | Iterable[nn.Parameter], weight_decay: float, no_decay_norm_bias: bool
) -> list[dict[str, Any]]:
    """Split trainable parameters into decay / no-decay groups.

    Args:
        modules_or_params: a module (names are inspected) or an iterable of parameters.
        weight_decay: decay for the decayed group.
        no_decay_norm_bias: when True, 1-D parameters (norm weights, biases) get no decay.

    Returns:
        Parameter groups for a torch optimiser (frozen parameters excluded).
    """
    if isinstance(modules_or_params, nn.Module):
        params = [p for p in modules_or_params.parameters() if p.requires_grad]
    else:
        params = [p for p in modules_or_params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters were given to the optimiser; check which modules are frozen")
    if not no_decay_norm_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(params: nn.Module | Iterable[nn.Parameter], cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """Build the optimiser from an ``optim`` config section.

    Args:
        params: module or parameters to optimise.
        cfg: the ``optim`` section (``name``, ``lr``, ``momentum``, ``weight_decay``, ...).

    Returns:
        The optimiser (SGD by default; ``adamw`` is also accepted).

    Raises:
        ValueError: for an unknown optimiser name.
    """
    name = str(cfg.get("name", "sgd")).lower()
    lr = float(cfg["lr"])
    wd = float(cfg.get("weight_decay", 1e-4))
    groups = param_groups(params, wd, bool(cfg.get("no_decay_norm_bias", False)))
    if name == "sgd":
        return torch.optim.SGD(
            groups, lr=lr, momentum=float(cfg.get("momentum", 0.9)), nesterov=bool(cfg.get("nesterov", False))
        )
    if name == "adamw":
        betas = tuple(cfg.get("betas", (0.9, 0.999)))
        return torch.optim.AdamW(groups, lr=lr, betas=betas)  # type: ignore[arg-type]
    raise ValueError(f"unknown optimiser {name!r}; set optim.name to 'sgd' or 'adamw'")


def lr_factor_fn(cfg: Mapping[str, Any], steps_per_epoch: int, epochs: int) -> Callable[[int], float]:
    """Return step -> multiplier of the base learning rate for a ``schedule`` config section.

    Args:
        cfg: ``schedule`` section (``name``: cosine | step | constant, ``warmup_epochs`` ...).
        steps_per_epoch: optimizer steps per epoch (>= 1).
        epochs: total epochs of the run.

    Returns:
        A function of the optimizer step (0-based) giving the learning-rate factor.

    Raises:
        ValueError: for an unknown schedule or non-positive lengths.
    """
    if steps_per_epoch < 1 or epochs < 1:
        raise ValueError(f"schedule needs steps_per_epoch >= 1 and epochs >= 1 (got {steps_per_epoch}, {epochs})")
    name = str(cfg.get("name", "cosine")).lower()
    total = steps_per_epoch * epochs
    warmup = int(round(float(cfg.get("warmup_epochs", 0)) * steps_per_epoch))
    warmup = min(warmup, total)
    start = float(cfg.get("warmup_start_factor", 0.0))
    floor = float(cfg.get("min_lr_factor", 0.0))
    gamma = float(cfg.get("gamma", 0.1))
    milestones = sorted(int(round(float(m) * steps_per_epoch)) for m in cfg.get("milestones", []))
    if name not in ("cosine", "step", "constant"):
        raise ValueError(f"unknown schedule {name!r}; set schedule.name to cosine, step or constant")

    def factor(step: int) -> float:
        if step < warmup:
            return start + (1.0 - start) * (step + 1) / warmup
        if name == "cosine":
            span = max(total - warmup, 1)
            progress = min(max(step - warmup, 0) / span, 1.0)
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if name == "step":
            return gamma ** sum(1 for m in milestones if step >= m)
        return 1.0

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any], steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step scheduler for the ``schedule`` section; call ``scheduler.step()`` after every optimizer step.

    Args:
        optimizer: the optimiser.
        cfg: ``schedule`` section.
        steps_per_epoch: optimizer steps per epoch.
        epochs: total epochs.

    Returns:
        A LambdaLR whose state dict resumes exactly.
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor_fn(cfg, steps_per_epoch, epochs))
