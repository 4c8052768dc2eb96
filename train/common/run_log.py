"""Run logging: a CSV of every scalar, TensorBoard (when installed), tqdm progress and loss plots.

:class:`RunLogger` is created on every rank but only rank 0 (``enabled=True``) writes. Each
:meth:`RunLogger.log` call appends one CSV row (``step`` plus every scalar; new columns extend the
header), mirrors the scalars to TensorBoard under ``train/<name>`` and sends them to Python
logging every ``print_every`` calls. :class:`Progress` is a thin tqdm wrapper that shows ETA and
clips/s. :func:`plot_losses` renders the CSV's loss columns to a PNG.

For exact resume, :meth:`RunLogger.state_dict` records how many rows were written, and
:meth:`RunLogger.load_state_dict` truncates the CSV (atomically) back to that row, so rows logged
after the checkpoint by an interrupted run are replaced, not duplicated.

Example:
    >>> log = RunLogger(out_dir, enabled=True)
    >>> log.log(step=1, scalars={"loss": 2.3, "lr": 0.01})
    >>> log.close(); plot_losses(out_dir / "metrics.csv", out_dir / "loss_curve.png")
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from tqdm.auto import tqdm

from fima_models._utils import atomic_write, atomic_write_text

__all__ = ["RunLogger", "Progress", "read_csv", "plot_losses", "setup_console_logging"]

_logger = logging.getLogger(__name__)


def setup_console_logging(level: int = logging.INFO, rank: int = 0) -> None:
    """Configure the root logger for console output; ranks other than 0 only show warnings.

    Args:
        level: level on rank 0.
        rank: this process's rank.
    """
    root = logging.getLogger()
    if not any(getattr(h, "_fima_console", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        handler._fima_console = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level if rank == 0 else logging.WARNING)


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """Read a metrics CSV into a list of row dicts (strings; empty list if the file is absent)."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open("r", encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


class RunLogger:
    """CSV + TensorBoard scalar logger with resumable row position.

    Args:
        out_dir: run folder (``metrics.csv`` and ``tensorboard/`` are created there).
        enabled: write anything at all (True on rank 0 only).
        tensorboard: also write TensorBoard events (skipped with a warning when unavailable).
        csv_name: CSV file name.
        print_every: log a console line every this many :meth:`log` calls (0: never).
    """

    def __init__(
        self,
        out_dir: str | Path,
        enabled: bool = True,
        tensorboard: bool = True,
        csv_name: str = "metrics.csv",
        print_every: int = 10,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.csv_path = self.out_dir / csv_name
        self.print_every = print_every
        self.rows = 0
        self.columns: list[str] = []
        self._writer: Any = None
        self._tb_dir = self.out_dir / "tensorboard"
        self._tb_requested = tensorboard
        if enabled:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            existing = read_csv(self.csv_path)
            self.rows = len(existing)
            self.columns = list(existing[0].keys()) if existing else []

    def _tb(self, purge_step: int | None = None) -> Any:
        if not (self.enabled and self._tb_requested):
            return None
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                _logger.warning("tensorboard is not installed; scalars go to %s only (pip install tensorboard)", self.csv_path)
                self._tb_requested = False
                return None
            self._writer = SummaryWriter(str(self._tb_dir), purge_step=purge_step)
        return self._writer

    def log(self, step: int, scalars: Mapping[str, float], prefix: str = "train") -> None:
        """Append one row of scalars for ``step``.

        Args:
            step: global step (x axis).
            scalars: name -> value (tensors must already be Python numbers).
            prefix: TensorBoard tag prefix.
        """
        if not self.enabled:
            return
        row: dict[str, Any] = {"step": int(step)}
        row.update({k: _plain_number(v) for k, v in scalars.items()})
        new_cols = [k for k in row if k not in self.columns]
        if new_cols:
            self.columns = self.columns + new_cols
            if self.rows:
                self._rewrite(read_csv(self.csv_path))
        write_header = not self.csv_path.is_file() or self.rows == 0
        with self.csv_path.open("w" if write_header else "a", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns, restval="")
            if write_header:
                writer.writeheader()
            writer.writerow(row)
        self.rows += 1
        tb = self._tb()
        if tb is not None:
            for name, value in row.items():
                if name != "step" and isinstance(value, (int, float)):
                    tb.add_scalar(f"{prefix}/{name}", value, int(step))
        if self.print_every and self.rows % self.print_every == 0:
            _logger.info("step %d | %s", step, " ".join(f"{k}={_fmt(v)}" for k, v in row.items() if k != "step"))

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, restval="")
        writer.writeheader()
        for r in rows:
            writer.writerow(r)
        atomic_write_text(self.csv_path, buf.getvalue())

    def state_dict(self) -> dict[str, Any]:
        """Position of the logger (rows written, columns) for a checkpoint."""
        return {"rows": self.rows, "columns": list(self.columns)}

    def load_state_dict(self, state: Mapping[str, Any], step: int | None = None) -> None:
        """Truncate the CSV back to the checkpointed position (and purge later TensorBoard events).

        Args:
            state: from :meth:`state_dict`.
            step: the checkpoint's step; TensorBoard events after it are purged on the next write.
        """
        if not self.enabled:
            return
        rows = read_csv(self.csv_path)[: int(state["rows"])]
        # the file's header may be wider than at checkpoint time (columns added later); keep it
        self.columns = list(rows[0].keys()) if rows else list(state.get("columns") or [])
        self.rows = len(rows)
        if self.columns:
            self._rewrite(rows)
        elif self.csv_path.exists():
            self.csv_path.unlink()
        if step is not None and self._tb_requested and self._writer is None:
            self._tb(purge_step=int(step) + 1)

    def close(self) -> None:
        """Flush and close TensorBoard."""
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None


class Progress:
    """tqdm progress bar over optimizer steps showing ETA, clips/s and chosen scalars.

    Args:
        total: total steps of the run.
        initial: steps already done (resume).
        enabled: show the bar (rank 0 only).
        desc: bar label.
    """

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, desc: str = "train") -> None:
        self.bar = tqdm(total=total, initial=initial, disable=not enabled, desc=desc, dynamic_ncols=True, unit="step")
        self._t0 = time.perf_counter()
        self._clips = 0

    def update(self, clips: int, scalars: Mapping[str, float] | None = None, steps: int = 1) -> float:
        """Advance by ``steps`` steps that processed ``clips`` clips; returns average clips/s so far."""
        self._clips += clips
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        rate = self._clips / elapsed
        post = {"clips/s": f"{rate:.1f}"}
        if scalars:
            post.update({k: _fmt(v) for k, v in scalars.items()})
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(steps)
        return rate

    def close(self) -> None:
        """Close the bar."""
        self.bar.close()


def plot_losses(
    csv_path: str | Path, png_path: str | Path, columns: Iterable[str] | None = None, title: str | None = None
) -> Path | None:
    """Plot loss columns of a metrics CSV against ``step`` into a PNG (atomically).

    Args:
        csv_path: metrics CSV written by :class:`RunLogger`.
        png_path: output image.
        columns: columns to plot; default every column whose name starts with ``loss``.
        title: figure title (default: the run folder name).

    Returns:
        The PNG path, or None when the CSV has no rows or no matching columns.
    """
    rows = read_csv(csv_path)
    if not rows:
        return None
    cols = list(columns) if columns is not None else [c for c in rows[0] if c.startswith("loss")]
    cols = [c for c in cols if c in rows[0]]
    if not cols:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [int(float(r["step"])) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for col in cols:
        pts = [(s, float(r[col])) for s, r in zip(steps, rows) if r.get(col) not in (None, "")]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=col, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or Path(csv_path).parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    atomic_write(png_path, lambda fh: fig.savefig(fh, format="png", dpi=100), mode="wb")
    plt.close(fig)
    return png_path


def _plain_number(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    return value


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isfinite(value) and (abs(value) >= 1e-3 or value == 0):
            return f"{value:.4f}"
        return f"{value:.3e}"
    return str(value)
