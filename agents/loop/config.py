"""What every run config of the preference loop shares: one design for control and text runs.

A run config is a dataclass whose fields are every setting of one run (``PrefsConfig`` for Gymnasium envs,
``TextRLHFConfig`` for an LM), each documented once, validated in ``__post_init__``, filled from the named presets
of its world, and written to the run directory's ``config.json`` under ``"config"``. The loop takes its budgets from
``config.loop_config()``: a control run's config *is* a ``LoopConfig`` (every budget is a setting of its own there),
a text run's builds one from its rounds, label budget and iterations (``agents.loop.text.config``).

``RunConfig.load(run_dir)`` is the one way back from a run directory to its settings (``--resume``): it reads
``config.json``, or, when that is damaged, the copy in the newest checkpoint that has one; hands the saved values to
the class's ``migrate`` (older formats: renamed fields, values JSON cannot hold); drops what this version no longer
knows; and builds the config, whose ``__post_init__`` validates it as any new one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, TypeVar

from agents.rundir import RunError, checkpoint_candidates
from agents.trackers import check_report_to
from textenv.checks import check, check_number

__all__ = ["RunConfig", "RunConfigError"]

logger = logging.getLogger(__name__)
C = TypeVar("C", bound="RunConfig")


class RunConfigError(RunError, ValueError):
    """A run directory whose ``config.json`` (and every checkpoint's copy of it) cannot be read back into its run
    config."""


@dataclasses.dataclass
class RunConfig:
    """The shared part of ``PrefsConfig``, ``TextRLHFConfig`` and ``SFTRunConfig`` (module docstring)."""

    instructions: str | None = None
    """What people are asked to judge, shown on the labelling page (``--instructions TEXT|FILE``); None = the run's
    default (for the paper's tasks, a guide in the manner of its labellers' instructions)."""
    report_to: list[str] = dataclasses.field(default_factory=lambda: ["tensorboard"])
    """Where the run's scalars go besides metrics.jsonl: ``tensorboard`` (``tb/``), ``trackio``, ``wandb`` (offline
    unless ``WANDB_MODE=online``), several, or ``none`` (``agents.trackers``)."""

    #: Settings not restored by ``load``: they belong to the process, not the run (a progress bar on a terminal).
    NOT_RESTORED: tuple[str, ...] = ("progress_bar",)

    def check_run(self) -> None:
        """The shared settings' checks (subclasses call it from ``__post_init__``)."""
        self.report_to = check_report_to(self.report_to)

    def check_labelling(self, labellers: tuple[str, ...]) -> None:
        """The settings of who labels, which every run config has: ``labeller`` one of ``labellers``,
        ``human_fraction`` in [0, 1], ``label_timeout`` > 0 seconds or None."""
        labeller = self.labeller  # type: ignore[attr-defined]
        check(labeller in labellers, f"labeller must be one of {', '.join(labellers)}, got {labeller!r}")
        check_number("human_fraction", self.human_fraction, low=0, high=1)  # type: ignore[attr-defined]
        check_number("label_timeout", self.label_timeout, low=0, low_open=True,  # type: ignore[attr-defined]
                     none_ok=True, hint="seconds to wait for people per batch; None waits as long as it takes")

    @classmethod
    def migrate(cls, values: dict[str, Any], saved: dict[str, Any]) -> dict[str, Any]:
        """The saved ``values`` (``saved["config"]``) as fields of this version: renamed fields, JSON's stand-ins
        for values it cannot hold ("inf" for math.inf, lists for tuples). ``saved`` is the whole config.json."""
        return values

    @classmethod
    def load(cls: type[C], run_dir: str | os.PathLike) -> C:
        """The settings ``run_dir`` was started with, to resume it (module docstring). Raises ``RunConfigError``
        when neither config.json nor any checkpoint's copy can be read; a value this version refuses raises the
        config's own ``ValueError``."""
        path = Path(run_dir) / "config.json"
        copies = [c / "config.json" for c in checkpoint_candidates(run_dir)]
        first_error = None
        for candidate in [path, *copies]:
            try:
                saved = json.loads(candidate.read_text(encoding="utf-8"))
                values = dict(saved["config"] if "config" in saved else saved["prefs"])  # "prefs": rlhf-gym 0.1
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
                first_error = first_error or f"{type(err).__name__}: {err}"
                continue
            if candidate != path:
                logger.warning("%s cannot be read (%s); using the copy in %s", path, first_error, candidate)
            break
        else:
            copies_note = ", nor can the copies in its checkpoints" if copies else ""
            raise RunConfigError(f"{path} cannot be read as a run's settings ({first_error}){copies_note}; restore "
                                 "it from a backup, or start a new run (--overwrite moves this one aside)")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        values = cls.migrate(values, saved)
        return cls(**{k: v for k, v in values.items() if k in names and k not in cls.NOT_RESTORED})
