"""Reward functions the TRL way: several, weighted, each given the prompt dataset's other columns.

TRL's ``GRPOTrainer(reward_funcs=[f, g], args=GRPOConfig(reward_weights=[1.0, 0.5]))`` calls each function as
``f(prompts=..., completions=..., **columns)`` where ``columns`` are the other columns of the prompts' rows (a
reference answer, a test case), one list entry per completion, and adds the results with the weights; a ``None``
score means "does not apply" and counts as 0 (TRL: NaN, summed with nansum). ``WeightedRewards`` does the same as a
``reward_fn`` of ``TextGen-v0``: ``WeightedRewards([f, g], [1.0, 0.5], columns)(prompts, responses) -> (B,)``.

A function that follows this toolkit's protocol instead, ``f(prompts, responses)`` (``textenv.rewards``), is called
so. ``load_reward_function("module:function")`` (or ``"path/to/file.py:function"``) imports one by name, for
``rlhf-gym text --reward-fn``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from textenv.checks import check
from textenv.rewards import RewardFunctionError, validate_scores

__all__ = ["RewardSpecError", "WeightedRewards", "is_trl_style", "load_reward_function"]


class RewardSpecError(ValueError):
    """A reward function named as ``module:function`` cannot be imported, or is not callable."""


def load_reward_function(spec: str) -> Callable:
    """The function ``spec`` names: ``"package.module:function"`` or ``"path/to/file.py:function"``."""
    module_name, sep, name = spec.rpartition(":")
    if not sep or not module_name or not name:
        raise RewardSpecError(f"reward function {spec!r}: write it as module:function or path/to/file.py:function")
    try:
        if module_name.endswith(".py"):
            if not os.path.isfile(module_name):
                raise RewardSpecError(f"reward function {spec!r}: no file {module_name}")
            loader = importlib.util.spec_from_file_location(os.path.basename(module_name)[:-3], module_name)
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(module_name)
    except RewardSpecError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the user's module raises on import, say where it came from
        raise RewardSpecError(f"reward function {spec!r}: importing {module_name} failed ({type(exc).__name__}: "
                              f"{exc})") from exc
    fn = getattr(module, name, None)
    if not callable(fn):
        raise RewardSpecError(f"reward function {spec!r}: {module_name} has no callable {name!r}")
    return fn


def is_trl_style(fn: Callable) -> bool:
    """Whether ``fn`` is called with keywords ``prompts=``, ``completions=`` (TRL) rather than (prompts, responses)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "completions" in params


class WeightedRewards:
    """``sum_i w_i f_i(prompts, completions, **columns)`` (module docstring).

    Args:
        functions: callables (TRL style or this toolkit's).
        weights: one per function (default: all 1).
        columns: the other columns of each prompt's row, by prompt text; each function receives those it names (or
            all, when it takes ``**kwargs``), as lists aligned with the completions.
    """

    def __init__(self, functions: Sequence[Callable], weights: Sequence[float] | None = None,
                 columns: Mapping[str, Mapping[str, Any]] | None = None):
        self.functions = list(functions)
        check(bool(self.functions), "give at least one reward function")
        check(all(callable(f) for f in self.functions), "every reward function must be callable", TypeError)
        self.weights = [1.0] * len(self.functions) if weights is None else [float(w) for w in weights]
        check(len(self.weights) == len(self.functions), f"{len(self.weights)} reward weights for "
              f"{len(self.functions)} reward functions: give one weight per function")
        check(all(np.isfinite(self.weights)), f"reward weights must be finite, got {self.weights}")
        self.columns = {str(k): dict(v) for k, v in (columns or {}).items()}
        self.__name__ = "+".join(getattr(f, "__name__", type(f).__name__) for f in self.functions)

    def _kwargs(self, fn: Callable, prompts: list[str]) -> dict[str, list[Any]]:
        names = sorted({c for p in prompts for c in self.columns.get(p, {})})
        if not names:
            return {}
        params = inspect.signature(fn).parameters
        takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        wanted = [n for n in names if takes_all or n in params]
        return {n: [self.columns.get(p, {}).get(n) for p in prompts] for n in wanted}

    def scores(self, prompts: list[str], responses: list[str]) -> list[tuple[str, np.ndarray]]:
        """Each function's name and (B,) scores (None entries as 0), in order."""
        out: list[tuple[str, np.ndarray]] = []
        for fn in self.functions:
            name = getattr(fn, "__name__", type(fn).__name__)
            if is_trl_style(fn):
                raw = fn(prompts=list(prompts), completions=list(responses), **self._kwargs(fn, list(prompts)))
                if isinstance(raw, (list, tuple)):
                    raw = [0.0 if x is None else x for x in raw]
            else:
                raw = fn(list(prompts), list(responses))
            out.append((name, validate_scores(raw, len(prompts), fn)))
        return out

    def __call__(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        total = np.zeros(len(prompts))
        for w, (_, value) in zip(self.weights, self.scores(prompts, responses), strict=True):
            total = total + w * value
        if not np.all(np.isfinite(total)):
            raise RewardFunctionError(f"the weighted reward of {self.__name__} is not finite")
        return total
