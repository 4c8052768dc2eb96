"""Shared set-up of the downstream recipes: run context, models, transforms, data sets and loaders.

Every recipe (``finetune``, ``linear``, ``retrieval``, ``test``) starts from a
:class:`RunContext` (device, ranks, precision, output folder, logger) and builds
its model and data through the functions here, so the four commands read data,
normalise clips and load weights identically.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from torch.utils.data import Dataset

import fima_models
from fima_models._utils import KINETICS_MEAN, KINETICS_STD
from fima_models.data import RandomClipSampler, UniformClipSampler, build_dataset
from fima_models.models import pretrained_cfg_dict
from fima_models.transforms import EvalTransform, TrainTransform
from train.common.config import ConfigError, save_config
from train.common.distributed import DistInfo, init_distributed
from train.common.precision import resolve_precision
from train.common.run_log import setup_console_logging
from train.common.seed import seed_everything

from .results import weights_provenance

__all__ = [
    "RunContext",
    "start_run",
    "backbone_name",
    "build_model",
    "load_classifier_checkpoint",
    "model_norm",
    "dataset_classes",
    "train_transform",
    "eval_transform",
    "train_dataset",
    "multiclip_dataset",
    "unwrap",
]

_logger = logging.getLogger(__name__)

_LOCAL = "local-dir:"
#: ``data`` keys that set an augmentation probability of :func:`train_transform`.
_AUGMENT_PROBABILITIES = ("flip_p", "jitter_p", "grayscale_p")


@dataclass
class RunContext:
    """Everything a recipe needs besides its config section.

    Attributes:
        cfg: the resolved configuration.
        out_dir: run folder.
        dist: rank information and device.
        precision: resolved precision (``fp32`` / ``bf16`` / ``fp16``).
        started: ``time.perf_counter()`` at the start of the run.
    """

    cfg: dict[str, Any]
    out_dir: Path
    dist: DistInfo
    precision: str
    started: float = field(default_factory=time.perf_counter)

    @property
    def device(self) -> torch.device:
        """The compute device of this process."""
        return self.dist.device

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that writes files)."""
        return self.dist.is_main

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.perf_counter() - self.started


def start_run(cfg: dict[str, Any]) -> RunContext:
    """Initialise distributed state, logging, seeding and the output folder for ``cfg``.

    Args:
        cfg: resolved config with ``out``, ``seed``, ``device`` and ``precision``.

    Returns:
        The run context; ``config.yaml`` is written to the output folder on rank 0.

    Raises:
        ValueError: when ``out`` is missing.
    """
    if not cfg.get("out"):
        raise ValueError("no output folder; pass --out DIR (or set out: in the config)")
    out_dir = Path(cfg["out"]).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} exists and is not a folder; choose a run folder")
    checkpoint = cfg.get("init_checkpoint")
    if checkpoint and not Path(checkpoint).expanduser().is_file():
        raise ConfigError(f"--checkpoint {checkpoint} is not a file; pass a checkpoint file")
    if not Path(cfg["root"]).expanduser().exists():
        raise ConfigError(f"--root {cfg['root']} does not exist; pass the folder that holds the data set")
    dist = init_distributed(str(cfg.get("device", "auto")))
    setup_console_logging(rank=dist.rank)
    seed_everything(int(cfg.get("seed", 0)) + dist.rank)
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    precision = resolve_precision(str(cfg.get("precision", "auto")), dist.device)
    _logger.info(
        "%s on %s (%d process%s, precision %s) -> %s",
        cfg.get("command"),
        dist.device,
        dist.world_size,
        "" if dist.world_size == 1 else "es",
        precision,
        out_dir,
    )
    return RunContext(cfg=cfg, out_dir=out_dir, dist=dist, precision=precision)


def backbone_name(model: str) -> str:
    """Architecture name behind a model argument (``local-dir:DIR`` reads its config.json)."""
    if model.startswith(("local-dir:", "hf-hub:")):
        from fima_models.models import resolve_model_source

        return resolve_model_source(model)[0]
    return model.split(".", 1)[0]


def build_model(cfg: Mapping[str, Any], num_classes: int, drop_rate: float = 0.0) -> tuple[nn.Module, dict[str, Any]]:
    """Create the run's model and describe where its weights came from.

    ``cfg["model"]`` is a registered name (random init, or zoo weights with
    ``pretrained: true``) or ``local-dir:DIR``; ``cfg["init_checkpoint"]`` (``--checkpoint``)
    loads a backbone from any checkpoint format ``fima_models`` understands (a ``train/``
    pretraining checkpoint, a FIMA ``.pth.tar``, safetensors ...). The classifier is new
    unless the weights hold one of the same size.

    Args:
        cfg: resolved config.
        num_classes: classifier size (0: no classifier, the model returns pooled features).
        drop_rate: dropout before the classifier.

    Returns:
        ``(model, weights)`` where ``weights`` is the provenance recorded in ``results.json``.
    """
    name = str(cfg["model"])
    checkpoint = cfg.get("init_checkpoint")
    kwargs: dict[str, Any] = {"num_classes": num_classes, "drop_rate": drop_rate}
    if checkpoint:
        if name.startswith(_LOCAL):
            raise ValueError("pass either --checkpoint FILE with an architecture name or --model local-dir:DIR, not both")
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--checkpoint {path} does not exist; pass a checkpoint file")
        model = fima_models.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    else:
        model = fima_models.create_model(name, pretrained=bool(cfg.get("pretrained", False)), **kwargs)
    weights = weights_provenance(name, bool(cfg.get("pretrained", False)) or name.startswith(_LOCAL), checkpoint)
    if weights["source"] != "random" and not weights.get("method"):
        weights["method"] = pretrained_cfg_dict(model).get("method")
    _logger.info("model %s (%s weights, %d classes, %.1fM parameters)", name, weights["source"], num_classes,
             sum(p.numel() for p in model.parameters()) / 1e6)
    return model, weights


def load_classifier_checkpoint(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a complete classifier (backbone and head) written by ``finetune`` / ``linear`` into ``model``.

    Args:
        model: a model built with the checkpoint's number of classes.
        path: checkpoint file (any format ``fima_models.checkpoint`` reads).

    Returns:
        The checkpoint's metadata (``model_name``, ``method``, ``num_classes`` ...).

    Raises:
        RuntimeError: when keys or shapes do not match, naming them.
    """
    from fima_models.checkpoint import load_backbone_state_dict

    extracted = load_backbone_state_dict(path)
    missing, unexpected = model.load_state_dict(extracted.state_dict, strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"{path} does not fit the model: missing {sorted(missing)[:6]}, unexpected {sorted(unexpected)[:6]}. "
            "`test --checkpoint` expects a classifier written by finetune/linear with the same --model and data set."
        )
    return dict(extracted.meta)


def model_norm(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation mean and std recorded in the model's pretrained config."""
    pcfg = pretrained_cfg_dict(model)
    return tuple(pcfg.get("mean") or KINETICS_MEAN), tuple(pcfg.get("std") or KINETICS_STD)


def train_transform(cfg: Mapping[str, Any], model: nn.Module) -> TrainTransform:
    """Fine-tuning augmentation: the pretraining augmentation minus blur (unless ``data.blur``).

    ``data.flip_p`` (horizontal flip), ``data.jitter_p`` (colour jitter) and ``data.grayscale_p``
    set the probabilities of those augmentations, ``data.crop_min_area`` the smallest crop (a share
    of the frame area); absent, :class:`TrainTransform`'s (the paper's) apply.
    """
    mean, std = model_norm(model)
    data = cfg["data"]
    options: dict[str, Any] = {key: float(data[key]) for key in _AUGMENT_PROBABILITIES if data.get(key) is not None}
    if data.get("crop_min_area") is not None:
        options["scale"] = (float(data["crop_min_area"]), 1.0)
    return TrainTransform(size=int(data["size"]), blur=bool(data.get("blur", False)), mean=mean, std=std,
                          **options)


def eval_transform(cfg: Mapping[str, Any], model: nn.Module) -> EvalTransform:
    """Test transform: short-side resize to ``size / crop_pct`` and a centre crop."""
    mean, std = model_norm(model)
    data = cfg["data"]
    return EvalTransform(size=int(data["size"]), crop_pct=float(data.get("crop_pct", 0.875)), mean=mean, std=std)


def _dataset(cfg: Mapping[str, Any], train: bool, sampler: Any, transform: Any) -> Dataset:
    if not cfg.get("root"):
        raise ValueError("no data root; pass --root PATH (the folder that holds the data set)")
    split = cfg.get("split")
    ds = build_dataset(
        str(cfg["dataset"]),
        str(Path(cfg["root"]).expanduser()),
        split=int(split) if split is not None else 1,
        train=train,
        sampler=sampler,
        transform=transform,
    )
    if len(ds) == 0:
        raise ValueError(f"the {'train' if train else 'test'} split of {cfg['dataset']} under {cfg['root']} is empty")
    return ds


def dataset_classes(cfg: Mapping[str, Any]) -> list[str]:
    """Class names of the configured data set (read from its annotations; no video is decoded)."""
    data = cfg["data"]
    ds = _dataset(cfg, True, RandomClipSampler(int(data["clip_len"]), step=int(data.get("step", 1))), None)
    return list(ds.classes)


def train_dataset(cfg: Mapping[str, Any], model: nn.Module) -> Dataset:
    """Train split, one random clip per video, augmented."""
    data = cfg["data"]
    sampler = RandomClipSampler(int(data["clip_len"]), step=int(data.get("step", 1)))
    return _dataset(cfg, True, sampler, train_transform(cfg, model))


def multiclip_dataset(cfg: Mapping[str, Any], model: nn.Module, train: bool, num_clips: int) -> Dataset:
    """A split with ``num_clips`` clips spread uniformly over each video, centre-cropped: ``[K, 3, T, S, S]``."""
    data = cfg["data"]
    sampler = UniformClipSampler(int(num_clips), int(data["clip_len"]), step=int(data.get("step", 1)))
    return _dataset(cfg, train, sampler, eval_transform(cfg, model))


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
