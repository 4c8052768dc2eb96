"""Downstream recipes of the paper: fine-tune, linear probe, retrieval and the multi-clip test.

Command line (``python -m train`` passes the command name as ``argv[0]``)::

    python -m train finetune  --dataset ucf101 --root data/ucf101 --split 1 \\
        --model r2plus1d_18 --checkpoint runs/pretrain/final.pt --out runs/ft_ucf1
    python -m train linear    --config train/configs/downstream/ucf101_split1_linear_i3d.yaml \\
        --root data/ucf101 --model local-dir:zoo/i3d_fima --out runs/lin_ucf1
    python -m train retrieval --dataset hmdb51 --root data/hmdb51 --model local-dir:zoo/x --out runs/ret
    python -m train test      --dataset ucf101 --root data/ucf101 --model r2plus1d_18 \\
        --checkpoint runs/ft_ucf1/final.pt --out runs/test_ucf1
    # any config key can be overridden: finetune.epochs=10 data.workers=8 precision=fp32

Configuration: ``train/configs/downstream/base.yaml`` holds the protocol defaults; ``--config``
merges a row config (one per table row of the paper) on top; the flags and then ``key=value``
overrides win. Under ``torchrun --nproc_per_node N -m train ...`` the recipes run with DDP.
A run folder that already holds checkpoints resumes from the newest one.

Every run writes ``DIR/config.yaml``, ``DIR/results.json`` and ``DIR/results.md``; training
recipes add ``metrics.csv``, ``tensorboard/``, ``loss.png``, ``checkpoints/`` and ``final.pt``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from train.common.config import ConfigError, load_yaml, resolve
from train.common.distributed import cleanup_distributed
from train.common.schema import DOWNSTREAM_DATASETS, DownstreamConfig, check_downstream

__all__ = ["COMMANDS", "DATASETS", "BASE_CONFIG", "resolve_config", "run", "main", "register", "run_command"]

_logger = logging.getLogger(__name__)

COMMANDS = ("finetune", "linear", "retrieval", "test")
DATASETS = DOWNSTREAM_DATASETS
#: Protocol defaults every run starts from.
BASE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "downstream" / "base.yaml"

_FLAG_KEYS = {
    "dataset": "dataset",
    "root": "root",
    "split": "split",
    "model": "model",
    "checkpoint": "init_checkpoint",
    "out": "out",
}


def resolve_config(
    command: str,
    config: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Build a run configuration: base defaults, then ``config``, then ``flags``, then overrides.

    Args:
        command: one of :data:`COMMANDS`.
        config: optional row config (YAML, may use ``_base_``).
        flags: top-level values (``dataset``, ``root``, ``split``, ``model``, ``pretrained``,
            ``init_checkpoint``, ``out``); None values are ignored.
        overrides: ``dotted.key=value`` strings.

    Returns:
        The resolved configuration.

    Raises:
        ConfigError: unknown command, data set or key, a value of the wrong type or out of range
            (named with the accepted values), or a missing required value.
    """
    if command not in COMMANDS:
        raise ConfigError(f"unknown downstream command {command!r}; choose one of {', '.join(COMMANDS)}")
    layers = [load_yaml(BASE_CONFIG)]
    if config is not None:
        row = load_yaml(config)
        if row.get("command", command) != command:
            raise ConfigError(
                f"{config} is a {row['command']!r} config but the command is {command!r}; "
                f"run `python -m train {row['command']} --config {config} ...` or pick a {command} config"
            )
        layers.append(row)
    layers.append({k: v for k, v in (flags or {}).items() if v is not None})
    layers.append({"command": command})
    cfg = resolve(DownstreamConfig, layers, overrides, check_downstream)
    if cfg["command"] != command:
        raise ConfigError(f"command={cfg['command']} contradicts `python -m train {command}`; the sub-command sets it")
    return cfg


def _runner(command: str) -> Callable[..., dict[str, float]]:
    if command == "finetune":
        from .finetune import run_finetune

        return run_finetune
    if command == "linear":
        from .linear import run_linear

        return run_linear
    if command == "retrieval":
        from .retrieval import run_retrieval

        return run_retrieval
    from .evaluate import run_test

    return run_test


def run(cfg: dict[str, Any]) -> dict[str, float]:
    """Run one resolved configuration (see :func:`resolve_config`) and return its metrics."""
    from .build import start_run

    ctx = start_run(cfg)
    return _runner(str(cfg["command"]))(ctx)


_HELPS = {
    "finetune": "fine-tune all layers, then the 10-clip test",
    "linear": "linear probe on the frozen backbone, then the 10-clip test",
    "retrieval": "train split as gallery, test split as queries: Recall@1/5/10/20/50",
    "test": "10-clip x centre-crop test of a trained classifier",
}


def register(subparsers: Any) -> None:
    """Add ``finetune``, ``linear``, ``retrieval`` and ``test`` to ``python -m train``'s sub-command parsers."""
    for command in COMMANDS:
        p = subparsers.add_parser(command, help=_HELPS[command], description=_HELPS[command])
        p.add_argument("--config", default=None, help="row config YAML (train/configs/downstream/*.yaml)")
        p.add_argument("--dataset", choices=DATASETS, default=None, help="data set layout")
        p.add_argument("--root", default=None, help="data set folder")
        p.add_argument("--split", type=int, default=None, help="split number (UCF101 / HMDB51: 1-3)")
        p.add_argument("--model", default=None, help="architecture (r2plus1d_18, i3d, ...) or local-dir:DIR")
        p.add_argument("--pretrained", action="store_const", const=True, default=None,
                       help="load the architecture's default zoo weights")
        p.add_argument("--checkpoint", default=None,
                       help="weights file: a pretraining checkpoint (finetune/linear/retrieval) or a "
                            "classifier written by finetune/linear (test)")
        p.add_argument("--out", default=None, help="run folder (resumes when it holds checkpoints)")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. finetune.epochs=10")
        p.set_defaults(func=run_command)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train",
        description="Downstream recipes: fine-tune, linear probe, retrieval, multi-clip test.",
    )
    register(parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}"))
    return parser


def main(argv: list[str]) -> int:
    """Command-line entry point; ``argv[0]`` is the command name. Returns the exit status."""
    return run_command(_parser().parse_args(argv))


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed downstream command; returns the exit status (2: configuration, 3: non-finite loss)."""
    from fima_models import UnknownModelError
    from fima_models._utils import describe_os_error
    from fima_models.checkpoint import CheckpointError
    from train.common.loop import NonFiniteLossError

    flags = {key: getattr(args, attr) for attr, key in _FLAG_KEYS.items()}
    flags["pretrained"] = args.pretrained
    try:
        cfg = resolve_config(args.command, args.config, flags, args.overrides)
        run(cfg)
    except (ConfigError, FileNotFoundError, UnknownModelError, CheckpointError) as err:
        _logger.error("%s: %s", args.command, err)
        return 2
    except OSError as err:  # read-only or full disk, --out that is a file
        _logger.error("%s: %s", args.command, describe_os_error(err))
        return 1
    except NonFiniteLossError as err:
        _logger.error("%s: %s", args.command, err)
        return 3
    finally:
        cleanup_distributed()
    return 0
