"""``python -m train summarize RUN_DIR... [--out FILE]``: one table of many downstream runs.

Each RUN_DIR is a run folder holding ``results.json`` (written by ``python -m
train {finetune,linear,retrieval,test}``) or any folder above run folders; those
are searched recursively. The table puts the paper's published numbers (as
docs/recipes.md lists them) beside ours. When the same protocol / data set / backbone / weights was
run on several splits, a "mean" row averages them, as the paper does for "all 3
splits".
"""

from __future__ import annotations

import argparse
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from fima_models._utils import describe_os_error
from fima_models._utils import atomic_write_text
from train.downstream.results import load_results, results_table

__all__ = ["collect_results", "split_means", "summarize", "main"]

_logger = logging.getLogger(__name__)


def collect_results(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Load every ``results.json`` in or under ``paths``, sorted by protocol, data set, backbone and split.

    Raises:
        FileNotFoundError: when a path does not exist or holds no results at all.
    """
    records: list[dict[str, Any]] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist; pass run folders written by `python -m train CMD --out DIR`")
        if path.is_file() or (path / "results.json").is_file():
            records.append(load_results(path))
            continue
        found = sorted(path.rglob("results.json"))
        loaded = []
        for file in found:
            try:
                loaded.append(load_results(file))
            except ValueError as err:  # other tools' results.json (e.g. the demo's summary) are skipped
                _logger.info("skipping %s: %s", file, err)
        if not loaded:
            raise FileNotFoundError(f"no downstream results.json under {path}")
        records.extend(loaded)
    records.sort(
        key=lambda r: (r.get("command", ""), r.get("dataset", ""), r.get("backbone", ""), r.get("split") or 0, r["run"])
    )
    return records


def _group_key(rec: dict[str, Any]) -> tuple[str, str, str, str]:
    weights = rec.get("weights", {})
    return (
        rec.get("command", ""),
        rec.get("dataset", ""),
        rec.get("backbone", ""),
        str(weights.get("sha256") or weights.get("source") or ""),
    )


def split_means(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One extra record per group of runs that differ only in their split, holding the mean metrics.

    Runs are grouped by protocol, data set, backbone and weights (SHA-256, or the source when
    there is no file). Groups with fewer than two distinct splits produce nothing.
    """
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        if rec.get("split") is not None:
            groups[_group_key(rec)].append(rec)
    means = []
    for members in groups.values():
        splits = sorted({m["split"] for m in members})
        if len(splits) < 2:
            continue
        names = sorted({k for m in members for k in m.get("metrics", {})})
        metrics = {}
        for name in names:
            values = [m["metrics"][name] for m in members if name in m.get("metrics", {})]
            metrics[name] = sum(values) / len(values)
        first = members[0]
        means.append(
            {
                **{k: first.get(k) for k in ("command", "dataset", "backbone", "weights", "paper")},
                "split": "mean " + ",".join(str(s) for s in splits),
                "metrics": metrics,
                "run": f"mean of {len(members)} runs",
            }
        )
    return means


def summarize(paths: Sequence[str | Path], out: str | Path | None = None) -> str:
    """Build the summary markdown of the runs under ``paths``; write it to ``out`` when given."""
    records = collect_results(paths)
    text = "\n".join(
        [
            "# Downstream results",
            "",
            results_table(records + split_means(records)),
            "",
            "Paper columns: published top-1 (I3D, UCF101-pretrained, 16x224) as listed in docs/recipes.md; "
            "n/a where it lists no number.",
            "",
        ]
    )
    if out is not None:
        atomic_write_text(out, text)
        _logger.info("wrote %s (%d runs)", out, len(records))
    return text


_DESCRIPTION = __doc__.split("\n\n")[0]


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run folders (or folders above them) holding results.json")
    parser.add_argument("--out", default=None, help="write the markdown table here as well as printing it")
    parser.set_defaults(func=lambda args: run_command(args, parser))


def register(subparsers: Any) -> None:
    """Add the ``summarize`` command to ``python -m train``'s sub-command parsers."""
    _add_arguments(subparsers.add_parser("summarize", help="one table of many downstream runs", description=_DESCRIPTION))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m train summarize", description=_DESCRIPTION)
    _add_arguments(parser)
    args = parser.parse_args(argv)
    return run_command(args, parser)


def run_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Print (and with ``--out`` write) the table of ``args.runs``; usage errors exit through ``parser``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.out is not None and Path(args.out).is_dir():
        parser.error(f"--out {args.out} is a folder; pass a file name such as {Path(args.out) / 'results.md'}")
    try:
        text = summarize(args.runs, args.out)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    except OSError as err:  # read-only or full disk
        parser.error(describe_os_error(err, args.out))
    print(text)
    return 0
