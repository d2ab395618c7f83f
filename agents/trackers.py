"""Where a run's scalars go besides metrics.jsonl: the one logging seam (``RunDir.log``) and its backends.

``tensorboard`` (the default: ``tb/`` in the run directory), ``trackio`` (Hugging Face's local-first tracker; works
offline, its files under the run's ``trackio/`` unless ``TRACKIO_DIR`` says otherwise; ``trackio show`` opens them)
and ``wandb`` (Weights & Biases, offline by default in this offline-by-default toolkit: ``WANDB_MODE=online`` to
sync; files under the run's ``wandb/``). trackio and wandb are optional extras (``pip install 'rlhf-gym[trackio]'``
or ``[wandb]``); naming one that is not installed is an error when the run is configured, before it starts.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from textenv.checks import check
from textenv.files import jsonable

__all__ = ["BACKENDS", "check_report_to", "make_tracker"]

BACKENDS = ("tensorboard", "trackio", "wandb", "none")


def check_report_to(names: Sequence[str]) -> list[str]:
    """``names`` as a list, each a known backend whose package is installed (``ValueError`` says what to install)."""
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        check(name in BACKENDS, f"report_to: unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
        if name in ("trackio", "wandb"):
            check(importlib.util.find_spec(name) is not None, f"report_to {name}: the {name} package is not "
                  f"installed; pip install 'rlhf-gym[{name}]' (or pip install {name}), or report to tensorboard")
    return names


class _Trackio:
    def __init__(self, path: Path, config: Any):
        os.environ.setdefault("TRACKIO_DIR", str(path / "trackio"))  # read when trackio is first imported
        import trackio

        self.module = trackio
        self.run = trackio.init(project="rlhf-gym", name=path.name, config=jsonable(config), embed=False)

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        self.run.log(dict(scalars), step=step)

    def close(self) -> None:
        self.module.finish()


class _Wandb:
    def __init__(self, path: Path, config: Any):
        import wandb

        mode = os.environ.get("WANDB_MODE", "offline")
        self.run = wandb.init(project="rlhf-gym", name=path.name, dir=str(path), config=jsonable(config), mode=mode)

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        self.run.log(dict(scalars), step=step)

    def close(self) -> None:
        self.run.finish()


def make_tracker(name: str, path: Path, config: Any) -> Any:
    """The tracker ``name`` (trackio, wandb) for the run in ``path``, started with the run's ``config``."""
    return {"trackio": _Trackio, "wandb": _Wandb}[name](path, config)
