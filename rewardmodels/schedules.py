"""Label schedules: how many preference labels should have been requested by env step t.

A schedule spends a total ``budget`` of labels over ``total_steps`` env steps, optionally after ``initial`` labels
requested up front (Christiano et al. 2017: 500 initial comparisons on Atari; 25% of MuJoCo comparisons come from
the random initial policy). ``labels_due(t)`` is the cumulative count: integer, non-decreasing, ``initial`` at
t = 0 and exactly ``budget`` for t >= total_steps. An online loop requests ``labels_due(t) - labels_so_far`` new
labels whenever it reaches step t.

* :class:`ConstantSchedule`: a constant rate (the remaining labels spread evenly over the steps).
* :class:`InverseTimeSchedule`: Christiano et al.'s decaying rate, "labels at a rate roughly proportional to
  c / (t + c)" with c = 2e6 on MuJoCo and 5e6 on Atari (arXiv:1706.03741, appendix A). Integrating the rate,

      labels_due(t) = initial + (budget - initial) * log(1 + t / c) / log(1 + total_steps / c).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: c of the paper's label rate c / (T + c) after T env steps (Christiano et al. 2017, A.1 MuJoCo and A.2 Atari).
CHRISTIANO_MUJOCO_C = 2e6
CHRISTIANO_ATARI_C = 5e6


@dataclass
class LabelSchedule:
    """Base class: subclasses define ``fraction(t)``, the share of the post-initial labels due by step t."""

    budget: int
    """Total labels over the whole run (including ``initial``)."""
    total_steps: int
    """Env steps over which the budget is spent; ``labels_due(total_steps) == budget``."""
    initial: int = 0
    """Labels due before the first step."""

    def __post_init__(self) -> None:
        if self.budget < 0 or self.total_steps < 1 or not 0 <= self.initial <= self.budget:
            raise ValueError(f"need budget >= 0, total_steps >= 1 and 0 <= initial <= budget; got budget="
                             f"{self.budget}, total_steps={self.total_steps}, initial={self.initial}")

    def fraction(self, t: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def labels_due(self, t: Any) -> Any:
        """Cumulative labels due by env step ``t`` (int, or an int array for an array of steps)."""
        steps = np.clip(np.asarray(t, dtype=np.float64), 0, self.total_steps)
        frac = np.clip(self.fraction(steps), 0.0, 1.0)
        # The tiny epsilon keeps float round-off (e.g. 0.3 * 10 = 2.9999...) from losing a label.
        due = self.initial + np.floor((self.budget - self.initial) * frac + 1e-9).astype(np.int64)
        due = np.where(steps >= self.total_steps, self.budget, np.minimum(due, self.budget))
        return int(due) if np.ndim(due) == 0 else due

    def labels_between(self, t0: int, t1: int) -> int:
        """New labels due for steps in (t0, t1]."""
        return int(self.labels_due(t1)) - int(self.labels_due(t0))

    def rate(self, t: Any) -> Any:  # pragma: no cover - overridden
        """Instantaneous labels per env step at step t (the derivative of the un-floored ``labels_due``)."""
        raise NotImplementedError


@dataclass
class ConstantSchedule(LabelSchedule):
    """The remaining ``budget - initial`` labels at a constant rate over ``total_steps``."""

    def fraction(self, t: np.ndarray) -> np.ndarray:
        return t / self.total_steps

    def rate(self, t: Any) -> Any:
        return np.full(np.shape(t), (self.budget - self.initial) / self.total_steps)[()]


@dataclass
class InverseTimeSchedule(LabelSchedule):
    """Rate proportional to c / (t + c) (Christiano et al. 2017): front-loaded; nearly constant when total << c."""

    c: float = CHRISTIANO_MUJOCO_C
    """Decay constant in env steps (2e6 MuJoCo, 5e6 Atari in the paper)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.c > 0:
            raise ValueError(f"c must be > 0, got {self.c}")

    def fraction(self, t: np.ndarray) -> np.ndarray:
        return np.log1p(t / self.c) / math.log1p(self.total_steps / self.c)

    def rate(self, t: Any) -> Any:
        t = np.asarray(t, dtype=np.float64)
        return ((self.budget - self.initial) / ((t + self.c) * math.log1p(self.total_steps / self.c)))[()]


SCHEDULES = {"constant": ConstantSchedule, "inverse_time": InverseTimeSchedule}


def make_schedule(name: str, budget: int, total_steps: int, **kwargs: Any) -> LabelSchedule:
    """``make_schedule("constant" | "inverse_time", budget, total_steps, initial=0, c=...)``."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown label schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](budget=budget, total_steps=total_steps, **kwargs)
