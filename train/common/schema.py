"""Typed schemas of every ``python -m train`` configuration: keys, types, ranges and defaults.

These dataclasses are OmegaConf structured-config schemas (see :mod:`train.common.config`): a
YAML file or ``key=value`` override with a wrong type (``train.batch_size=abc``), an unknown key
(``optim.lrr``) or a value outside its range (``train.batch_size=0``, ``optim.lr=-1``,
``data.split=4``) is refused with one message naming the key and what it accepts, before a run
writes anything. Range and choice rules live in each field's metadata (:func:`rule`) and are
checked by :func:`train.common.config.check_rules`; rules that span fields are the ``check``
functions below.

- :class:`PretrainConfig`: ``python -m train pretrain``; the dataclass defaults are the defaults of
  every pretraining run (YAML files override a subset). The ``fima`` section is checked against
  :data:`train.fima.model.DEFAULT_FIMA_CONFIG` (its keys, value types and defaults), so keys added
  there are accepted here without a change.
- :class:`DownstreamConfig`: ``python -m train {finetune,linear,retrieval,test}``; its values come
  from ``train/configs/downstream/base.yaml`` (``MISSING`` here), row configs and flags.
"""

import copy
import difflib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from omegaconf import MISSING

from fima_models._utils import TRAINING_PRECISIONS as PRECISIONS
from train.common.config import ConfigError

__all__ = [
    "rule", "OptimConfig", "ScheduleConfig", "PretrainConfig", "DownstreamConfig", "check_pretrain",
    "check_downstream", "check_fima_section", "check_model", "fima_defaults", "DEVICE_PATTERN",
    "DOWNSTREAM_DATASETS",
]

#: ``device`` values: auto, cpu, cuda or cuda:K.
DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"
DEVICE_VALUES = "auto, cpu, cuda or cuda:K"
#: Data set layouts of the downstream recipes.
DOWNSTREAM_DATASETS = ("ucf101", "hmdb51", "kinetics400", "diving48", "folder", "list")
#: Data sets with numbered train/test splits (1-3).
SPLIT_DATASETS = ("ucf101", "hmdb51")


def rule(default: Any = MISSING, *, factory: Any = None, **rules: Any) -> Any:
    """A dataclass field with a default (or ``factory``) and validation rules in its metadata.

    Rules: ``ge``, ``gt``, ``le``, ``lt`` (numeric bounds), ``choices`` (allowed values),
    ``pattern`` (a full-match regular expression for strings), ``each_ge`` (bound of every item of a
    list); ``accepted`` is the text messages show instead of one derived from the type and rules.
    """
    if factory is not None:
        return field(default_factory=factory, metadata=rules)
    return field(default=default, metadata=rules)


# --------------------------------------------------------------------------- shared sections
@dataclass
class OptimConfig:
    """``optim``: the optimiser (:func:`train.common.optim.build_optimizer`)."""

    name: str = rule("sgd", choices=("sgd", "adamw"))
    lr: float = rule(0.00375, ge=0)
    momentum: float = rule(0.9, ge=0, lt=1)
    weight_decay: float = rule(1.0e-4, ge=0)
    nesterov: bool = False
    no_decay_norm_bias: bool = False
    betas: List[float] = rule(factory=lambda: [0.9, 0.999], each_ge=0)


@dataclass
class ScheduleConfig:
    """``schedule``: learning-rate schedule per optimizer step (:func:`train.common.optim.lr_factor_fn`)."""

    name: str = rule("cosine", choices=("cosine", "step", "constant"))
    warmup_epochs: float = rule(0.0, ge=0)
    warmup_start_factor: float = rule(0.0, ge=0, le=1)
    min_lr_factor: float = rule(0.0, ge=0, le=1)
    milestones: List[float] = rule(factory=list, each_ge=0)
    gamma: float = rule(0.1, gt=0)


# --------------------------------------------------------------------------- pretraining
def fima_defaults() -> Dict[str, Any]:
    """A copy of :data:`train.fima.model.DEFAULT_FIMA_CONFIG` (imported when needed, never copied)."""
    from train.fima.model import DEFAULT_FIMA_CONFIG

    return copy.deepcopy(DEFAULT_FIMA_CONFIG)


@dataclass
class ModelSection:
    """``model``: the backbone, ``fima_models.create_model(arch, num_classes=0, **kwargs)``."""

    arch: str = "r2plus1d_18"
    kwargs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class PretrainData:
    """``data``: the pretraining videos and views."""

    dataset: str = "ucf101"
    root: str = "data/ucf101"
    split: int = rule(1, ge=1, le=3)
    clip_len: int = rule(32, ge=4)
    size: int = rule(112, ge=8)
    num_workers: int = rule(4, ge=0)
    transform: Dict[str, Any] = field(default_factory=dict)
    synthetic: Optional[Dict[str, Any]] = None


@dataclass
class PretrainTrain:
    """``train``: loop length, batch, checkpoints and logging."""

    epochs: int = rule(200, ge=1)
    batch_size: int = rule(24, ge=1)
    accum_steps: int = rule(1, ge=1)
    stop_after_steps: Optional[int] = rule(None, ge=1)
    grad_clip: Optional[float] = rule(None, gt=0)
    log_every: int = rule(1, ge=1)
    print_every: int = rule(10, ge=0)
    checkpoint_every_steps: int = rule(0, ge=0)
    checkpoint_every_epochs: int = rule(1, ge=0)
    keep_last: int = rule(3, ge=1)
    tensorboard: bool = True
    progress: bool = True


@dataclass
class DdpSection:
    """``ddp``: DistributedDataParallel options."""

    broadcast_buffers: bool = False


@dataclass
class DebugSection:
    """``debug``: fault injection for tests."""

    inject_nan_at_step: Optional[int] = rule(None, ge=1)


@dataclass
class PretrainConfig:
    """Every key of a pretraining config and its default."""

    method: str = rule("fima", choices=("fima", "moco"))
    seed: int = 0
    device: str = rule("auto", pattern=DEVICE_PATTERN, accepted=DEVICE_VALUES)
    precision: str = rule("auto", choices=PRECISIONS)
    channels_last: bool = True
    threads: Optional[int] = rule(None, ge=1)
    model: ModelSection = field(default_factory=ModelSection)
    data: PretrainData = field(default_factory=PretrainData)
    train: PretrainTrain = field(default_factory=PretrainTrain)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    fima: Dict[str, Any] = field(default_factory=fima_defaults)
    ddp: DdpSection = field(default_factory=DdpSection)
    debug: DebugSection = field(default_factory=DebugSection)


def check_pretrain(cfg: Mapping[str, Any]) -> None:
    """Rules across keys of a pretraining config (types and ranges are checked before).

    Raises:
        ConfigError: naming the keys and the accepted values.
    """
    clip_len = cfg["data"]["clip_len"]
    if clip_len % 4:
        raise ConfigError(
            f"data.clip_len must be a multiple of 4 (two segments, every 2nd frame), got {clip_len}; e.g. 16 or 32")
    batch, accum = cfg["train"]["batch_size"], cfg["train"]["accum_steps"]
    if batch % accum:
        raise ConfigError(f"train.batch_size {batch} is not divisible by train.accum_steps {accum}; pick a "
                          "batch size that is a multiple of it")
    check_fima_section(cfg["fima"], fima_defaults(), "fima")
    check_model("model.arch", cfg["model"]["arch"], {"num_classes": 0, **cfg["model"]["kwargs"]})


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__


def check_fima_section(values: Any, defaults: Mapping[str, Any], where: str) -> None:
    """Check a ``fima`` section against the defaults that define it: known keys, same value types, numbers >= 0.

    Args:
        values: the section (after merging over the defaults).
        defaults: :data:`train.fima.model.DEFAULT_FIMA_CONFIG` or one of its sub-mappings.
        where: dotted name of the section, for messages.

    Raises:
        ConfigError: an unknown key (with a suggestion), a value of another type, or a negative number.
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where} must be a mapping of {', '.join(defaults)}, got {values!r}")
    for key, value in values.items():
        name = f"{where}.{key}"
        if key not in defaults:
            close = difflib.get_close_matches(str(key), list(defaults), n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"valid keys: {', '.join(defaults)}"
            raise ConfigError(f"unknown config key {name}; {hint}")
        default = defaults[key]
        if default is None or value is None:
            continue
        if isinstance(default, Mapping):
            check_fima_section(value, default, name)
            continue
        numeric = isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool)
        sequence = isinstance(default, (list, tuple)) and isinstance(value, (list, tuple))  # YAML has lists only
        if type(value) is not type(default) and not (numeric or sequence):
            raise ConfigError(f"{name}={value!r} must be {_kind(default)} (default {default!r})")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise ConfigError(f"{name} must be >= 0, got {value}")


def check_model(key: str, name: str, kwargs: Mapping[str, Any]) -> None:
    """Check that ``create_model(name, **kwargs)`` would build, without allocating anything (meta device).

    ``local-dir:`` / ``hf-hub:`` sources are checked when the weights are loaded.

    Raises:
        ConfigError: an unknown model name (with close matches) or refused constructor arguments.
    """
    if name.startswith(("local-dir:", "hf-hub:")):
        return
    import torch

    import fima_models

    try:
        with torch.device("meta"):
            fima_models.create_model(name, **dict(kwargs))
    except (ValueError, TypeError, RuntimeError) as err:
        raise ConfigError(f"{key}={name!r}: {err}") from None


# --------------------------------------------------------------------------- downstream
@dataclass
class DownstreamData:
    """``data``: clips of the downstream recipes."""

    clip_len: int = rule(ge=1)
    step: int = rule(ge=1)
    size: int = rule(ge=8)
    crop_pct: float = rule(gt=0, le=1)
    test_clips: int = rule(ge=1)
    blur: bool = MISSING
    workers: int = rule(ge=0)
    # augmentation probabilities of fine-tuning; None keeps the paper's (flip 0.5, jitter 0.8, grayscale 0.2)
    flip_p: Optional[float] = rule(None, ge=0, le=1)
    jitter_p: Optional[float] = rule(None, ge=0, le=1)
    grayscale_p: Optional[float] = rule(None, ge=0, le=1)
    # smallest random-resized-crop area of fine-tuning, a share of the frame; None keeps the paper's 0.2
    crop_min_area: Optional[float] = rule(None, gt=0, le=1)


@dataclass
class TrainingSection:
    """Keys every training recipe has (``finetune``, ``linear``)."""

    epochs: int = rule(ge=1)
    batch_size: int = rule(ge=1)
    save_every: int = rule(ge=1)
    keep_last: int = rule(ge=1)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


@dataclass
class FinetuneSection(TrainingSection):
    """``finetune``: all layers trained, then the multi-clip test."""

    dropout: float = rule(ge=0, lt=1)


@dataclass
class LinearSection(TrainingSection):
    """``linear``: a linear layer on the frozen backbone."""

    augment: bool = MISSING
    train_clips: int = rule(ge=1)
    feature_norm: str = rule(choices=("batchnorm", "none"))


@dataclass
class RetrievalSection:
    """``retrieval``: nearest-neighbour retrieval, Recall@k."""

    clips: int = rule(ge=1)
    ks: List[int] = rule(factory=lambda: [1, 5, 10, 20, 50], each_ge=1)


@dataclass
class TestSection:
    """``test``: the multi-clip evaluation."""

    batch_size: int = rule(ge=1)
    optimize: bool = MISSING


@dataclass
class LogSection:
    """``log``: console and TensorBoard."""

    print_every: int = rule(ge=0)
    tensorboard: bool = MISSING


@dataclass
class DownstreamConfig:
    """Every key of a downstream run; the values come from ``train/configs/downstream/base.yaml``."""

    command: str = rule(choices=("finetune", "linear", "retrieval", "test"))
    dataset: str = rule(choices=DOWNSTREAM_DATASETS)
    root: Optional[str] = MISSING
    split: int = rule(ge=1)
    model: Optional[str] = MISSING
    pretrained: bool = MISSING
    init_checkpoint: Optional[str] = MISSING
    out: Optional[str] = MISSING
    seed: int = MISSING
    device: str = rule(pattern=DEVICE_PATTERN, accepted=DEVICE_VALUES)
    precision: str = rule(choices=PRECISIONS)
    channels_last: bool = MISSING
    data: DownstreamData = field(default_factory=DownstreamData)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    linear: LinearSection = field(default_factory=LinearSection)
    retrieval: RetrievalSection = field(default_factory=RetrievalSection)
    test: TestSection = field(default_factory=TestSection)
    log: LogSection = field(default_factory=LogSection)


def check_downstream(cfg: Mapping[str, Any]) -> None:
    """Rules across keys of a downstream config.

    Raises:
        ConfigError: naming the keys and the accepted values.
    """
    if cfg["dataset"] in SPLIT_DATASETS and not 1 <= cfg["split"] <= 3:
        raise ConfigError(f"split must be 1, 2 or 3 for {cfg['dataset']}, got {cfg['split']}")
    for key, flag in (("root", "--root PATH"), ("model", "--model NAME"), ("out", "--out DIR")):
        if not cfg.get(key):
            raise ConfigError(f"{cfg['command']} needs {flag} (or '{key}:' in the config)")
    check_model("model", cfg["model"], {})

