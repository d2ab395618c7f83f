"""The run directory every training command writes.

Layout of ``RunDir(path)``::

    config.json       the full configuration of the run (dataclasses are converted with ``dataclasses.asdict``)
    tb/               TensorBoard event files (``tensorboard --logdir path/tb``)
    checkpoints/      model checkpoints and resumable state
    metrics.jsonl     every logged scalar, one JSON object per ``log`` call (what the PNG is drawn from)
    summary.json      the final metrics
    curves.png        the training curves

Writes of JSON files are atomic (``textenv.files.write_json``), so an interrupted run never leaves a half-written
summary or config behind.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from textenv.files import atomic_write_text, jsonable, write_json

__all__ = ["RunDir", "atomic_write_text", "write_json"]  # the two writers live in textenv.files

logger = logging.getLogger(__name__)


class RunDir:
    """A run directory: config, TensorBoard logs, checkpoints, metrics, summary and curves."""

    def __init__(self, path: str | os.PathLike, tensorboard: bool = True):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.checkpoints.mkdir(exist_ok=True)
        self._tensorboard = tensorboard
        self._writer = None

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def plot_path(self) -> Path:
        return self.path / "curves.png"

    def write_config(self, config: Any) -> None:
        write_json(self.path / "config.json", config)

    def read_config(self) -> dict[str, Any]:
        return json.loads((self.path / "config.json").read_text(encoding="utf-8"))

    @property
    def writer(self):
        """A ``torch.utils.tensorboard.SummaryWriter`` on ``tb/`` (created on first use)."""
        if self._writer is None and self._tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # lazy: loads tensorboard, seconds of import

            self._writer = SummaryWriter(log_dir=str(self.path / "tb"))
        return self._writer

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        """Log namespaced scalars (``eval/true_return``, ...) at ``step`` to TensorBoard and metrics.jsonl."""
        clean = {k: float(v) for k, v in scalars.items() if v is not None}
        if self.writer is not None:
            for key, value in clean.items():
                self.writer.add_scalar(key, value, step)
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": int(step), **jsonable(clean)}) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        rows = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a crash: keep the rest
                    logger.warning("skipping a truncated line in %s", self.metrics_path)
        return rows

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        write_json(self.summary_path, summary)

    def plot(self, panels: Sequence[tuple[str, Sequence[str]]], x_key: str = "step", title: str | None = None) -> Path:
        """Draw ``curves.png`` from metrics.jsonl: one panel per ``(panel_title, [metric keys])``, against ``x_key``."""
        import matplotlib  # lazy: a second of import, and only the end of a run draws

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.read_metrics()
        fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
        for ax, (panel_title, keys) in zip(axes[0], panels, strict=True):
            for key in keys:
                pts = [(r[x_key], r[key]) for r in rows if key in r and x_key in r]
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    ax.plot(xs, ys, marker="o", markersize=3, label=key)
            ax.set_title(panel_title)
            ax.set_xlabel(x_key)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(self.plot_path, dpi=100)
        plt.close(fig)
        return self.plot_path

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
