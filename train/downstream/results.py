"""Result files of downstream runs: ``results.json``, ``results.md`` and the paper's numbers.

Every downstream run writes ``DIR/results.json``::

    {
      "format": "fima-models-downstream", "version": 1,
      "command": "linear", "dataset": "ucf101", "split": 1,
      "model": "local-dir:runs/export", "backbone": "i3d",
      "weights": {"source": "local-dir", "path": ".../model.safetensors", "sha256": "...", "method": "fima"},
      "metrics": {"top1": 75.3, "top5": 93.1, ...},
      "paper": {"fima": 75.3, "moco": 58.1, "metric": "top1"} | null,
      "config": {... the full resolved config ...},
      "wall_time_s": 123.4, "finished": "2026-11-26T05:00:00+00:00"
    }

and ``DIR/results.md``, a one-row markdown table of the same facts.
:func:`results_table` renders any number of results as one table; ``python -m
train summarize`` uses it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from fima_models._utils import atomic_write_text
from train.common.config import to_plain

__all__ = [
    "RESULTS_FORMAT",
    "PAPER_RESULTS",
    "paper_reference",
    "sha256_file",
    "weights_provenance",
    "write_results",
    "load_results",
    "results_table",
    "primary_metric",
]

RESULTS_FORMAT = "fima-models-downstream"
RESULTS_VERSION = 1

#: The published numbers docs/recipes.md lists: (backbone, protocol, dataset) -> top-1 of FIMA and of the
#: MoCo baseline on the same pipeline (I3D, UCF101-pretrained, 16x224, split 1). The paper also
#: reports R(2+1)D and Diving48 rows; docs/recipes.md does not list them, so they are not reproduced here
#: and those rows show "n/a" instead of a number nobody checked.
PAPER_RESULTS: dict[tuple[str, str, str], dict[str, float]] = {
    ("i3d", "finetune", "ucf101"): {"fima": 84.2, "moco": 76.7},
    ("i3d", "finetune", "hmdb51"): {"fima": 57.8, "moco": 48.8},
    ("i3d", "linear", "ucf101"): {"fima": 75.3, "moco": 58.1},
    ("i3d", "linear", "hmdb51"): {"fima": 42.8, "moco": 26.7},
}

#: Metric each command is compared on, and the columns its tables show.
_PRIMARY = {"finetune": "top1", "linear": "top1", "test": "top1", "retrieval": "R@1"}
_COLUMNS = {
    "finetune": ("top1", "top5"),
    "linear": ("top1", "top5"),
    "test": ("top1", "top5"),
    "retrieval": ("R@1", "R@5", "R@10", "R@20", "R@50"),
}


def primary_metric(command: str) -> str:
    """Return the metric a command's runs are compared on (``top1`` or ``R@1``)."""
    return _PRIMARY.get(command, "top1")


def paper_reference(backbone: str, command: str, dataset: str) -> dict[str, Any] | None:
    """Published FIMA / MoCo top-1 for a table row, or None when docs/recipes.md lists none.

    A ``test`` run evaluates a fine-tuned model, so it is compared with the fine-tune row.
    """
    protocol = "finetune" if command == "test" else command
    ref = PAPER_RESULTS.get((backbone, protocol, dataset))
    return None if ref is None else {**ref, "metric": "top1"}


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def weights_provenance(model: str, pretrained: bool, checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Describe where a run's initial weights came from, with a SHA-256 of the file when there is one.

    Args:
        model: the ``--model`` argument (a registered name or ``local-dir:DIR``).
        pretrained: whether ``--pretrained`` was given.
        checkpoint: a ``--checkpoint`` file, if one was given.

    Returns:
        ``{"source": "checkpoint"|"local-dir"|"zoo"|"random", "path", "sha256", "method"}``; ``method``
        is filled in by the caller from the loaded model's pretrained config.
    """
    if checkpoint is not None:
        path = Path(checkpoint)
        return {"source": "checkpoint", "path": str(path.resolve()), "sha256": sha256_file(path), "method": None}
    if model.startswith("local-dir:"):
        directory = Path(model[len("local-dir:") :])
        files = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin")) + sorted(
            directory.glob("*.pth")
        )
        if not files:
            raise FileNotFoundError(
                f"{directory} holds no weight file (model.safetensors); export one with "
                "fima_models.convert.convert_checkpoint or `fima-models convert`"
            )
        return {
            "source": "local-dir",
            "path": str(files[0].resolve()),
            "sha256": sha256_file(files[0]),
            "method": None,
        }
    if pretrained:
        return {"source": "zoo", "path": None, "sha256": None, "method": None}
    return {"source": "random", "path": None, "sha256": None, "method": "random init"}


def write_results(
    out_dir: str | Path,
    *,
    command: str,
    dataset: str,
    split: int | None,
    model: str,
    backbone: str,
    weights: Mapping[str, Any],
    metrics: Mapping[str, float],
    config: Mapping[str, Any],
    wall_time_s: float,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``results.json`` and ``results.md`` into ``out_dir`` (both atomically).

    Args:
        out_dir: run folder.
        command: ``finetune`` / ``linear`` / ``retrieval`` / ``test``.
        dataset: data set name.
        split: split number (None for data sets without splits).
        model: the ``--model`` argument.
        backbone: architecture name (for the paper lookup), e.g. ``i3d``.
        weights: :func:`weights_provenance` output.
        metrics: metric name -> value (percent).
        config: the resolved run configuration.
        wall_time_s: run time in seconds.
        extra: more JSON-able facts to store (e.g. number of videos).

    Returns:
        Path of ``results.json``.
    """
    out_dir = Path(out_dir)
    record: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "command": command,
        "dataset": dataset,
        "split": split,
        "model": model,
        "backbone": backbone,
        "weights": dict(weights),
        "metrics": {k: round(float(v), 4) for k, v in metrics.items()},
        "paper": paper_reference(backbone, command, dataset),
        "config": dict(config),
        "wall_time_s": round(float(wall_time_s), 2),
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if extra:
        record.update(dict(extra))
    record = to_plain(record)
    path = atomic_write_text(out_dir / "results.json", json.dumps(record, indent=2) + "\n")
    record["run"] = str(out_dir)
    atomic_write_text(out_dir / "results.md", results_table([record]) + "\n")
    return path


def load_results(run_dir: str | Path) -> dict[str, Any]:
    """Load ``results.json`` of a run folder (or the file itself), adding ``run`` = the folder.

    Raises:
        FileNotFoundError: when there is no results.json.
        ValueError: when the file is not a downstream results file.
    """
    path = Path(run_dir)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"no results.json in {run_dir}; pass folders written by `python -m train CMD --out DIR`")
    record = json.loads(path.read_text())
    if record.get("format") != RESULTS_FORMAT:
        raise ValueError(f"{path} is not a downstream results file (format {record.get('format')!r})")
    record["run"] = str(path.parent)
    return record


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _weights_label(weights: Mapping[str, Any]) -> str:
    source = weights.get("source", "?")
    method = weights.get("method")
    if source == "random":
        return "random init"
    return f"{source} ({method})" if method else str(source)


def results_table(records: Sequence[Mapping[str, Any]], columns: Iterable[str] | None = None) -> str:
    """Render results as one markdown table with the paper's numbers alongside.

    Args:
        records: results dicts (as written by :func:`write_results`; ``run`` optional).
        columns: metric columns; default: the union of each command's standard columns, in order.

    Returns:
        The markdown table (no trailing newline).
    """
    if columns is None:
        cols: list[str] = []
        for rec in records:
            for col in _COLUMNS.get(rec.get("command", ""), tuple(rec.get("metrics", {}))):
                if col not in cols:
                    cols.append(col)
        columns = cols
    columns = list(columns)
    header = ["run", "protocol", "dataset", "split", "backbone", "weights", *columns, "paper FIMA", "paper MoCo"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for rec in records:
        paper = rec.get("paper") or {}
        metrics = rec.get("metrics", {})
        row = [
            Path(str(rec.get("run", "."))).name or ".",
            rec.get("command", "?"),
            rec.get("dataset", "?"),
            _fmt(rec.get("split")),
            rec.get("backbone", "?"),
            _weights_label(rec.get("weights", {})),
            *(_fmt(metrics.get(c)) for c in columns),
            _fmt(paper.get("fima")),
            _fmt(paper.get("moco")),
        ]
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)
