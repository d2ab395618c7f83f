"""GEM environments as turn environments: spec ``"gem:<id>"`` (``pip install 'rlhf-gym[gem]'``; package
``gem-llm``, import name ``gem``).

GEM (Liu et al. 2025, https://github.com/axon-rl/gem) defines the protocol this package uses, so the adapter is thin.
What it adds:

- the id is checked against GEM's registry, with close matches in the error (``gem.make`` says only "not found");
- observations, rewards and flags leave as ``str``, ``float`` and ``bool`` (GEM returns what each game computes);
- randomness: GEM games seed and draw from the global ``random`` / ``numpy.random``; each adapter keeps its own copy
  of those streams (``rng.py``), so ``reset(seed=s)`` reproduces an episode whatever other environments do, and the
  caller's ``random`` is left alone;
- ``import gem`` calls ``logging.basicConfig(level=INFO)``; the adapter puts the root logger back as it was, so a
  library import does not turn on INFO logging for the whole program;
- GEM's ``reset`` takes no ``options``: passing some is an error, not silently dropped.

Episodes end as GEM says: ``terminated`` when the game is over, ``truncated`` at GEM's own turn limit (some games set
both). Rewards come per turn as GEM gives them. Most game and reasoning-gym ids run offline; ids that load datasets
(``math:*``, ``qa:*``, ``code:*``) download them on first use.
"""

from __future__ import annotations

import difflib
import logging
from typing import Any

from textenv.environments.base import (
    EnvironmentSpecError,
    TurnEnvironment,
    TurnEnvironmentError,
    check_reset_result,
    check_step_result,
    require,
)
from textenv.environments.rng import PrivateGlobalRandom

__all__ = ["GemEnvironment", "import_gem"]


def import_gem() -> Any:
    """The ``gem`` package, imported without leaving its ``logging.basicConfig(INFO)`` on the root logger."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        return require("gem", "gem", "gem-llm", "a GEM environment ('gem:<id>')")
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)


class GemEnvironment(TurnEnvironment):
    """GEM environment ``env_id`` (e.g. ``"game:GuessTheNumber-v0-easy"``), made by ``gem.make(env_id, **kwargs)``.

    One instance is one GEM environment (one conversation at a time); ``env`` is the GEM object."""

    def __init__(self, env_id: str, **kwargs: Any):
        gem = import_gem()
        from gem.envs.registration import ENV_REGISTRY

        self.name = f"gem:{env_id}"
        if env_id not in ENV_REGISTRY:
            close = difflib.get_close_matches(env_id, list(ENV_REGISTRY), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise EnvironmentSpecError(f"GEM has no environment {env_id!r} ({len(ENV_REGISTRY)} ids are registered, "
                                       f"e.g. 'game:GuessTheNumber-v0-easy'){hint}")
        self._random = PrivateGlobalRandom()
        with self._random:  # some GEM games reset (and draw) in their constructor
            self.env = gem.make(env_id, **kwargs)

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        if options:
            raise TurnEnvironmentError(f"turn environment {self.name}: GEM environments take no reset options, "
                                       f"got {options!r}")
        with self._random:
            result = self.env.reset(seed=seed)
        return check_reset_result(self.name, result)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        with self._random:
            result = self.env.step(action)
        return check_step_result(self.name, result)

    def close(self) -> None:
        close = getattr(self.env, "close", None)
        if callable(close):
            close()
