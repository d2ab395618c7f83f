"""``SecondOpinion``: a two-turn task the offline default LM can learn on a CPU, where the second turn's reward depends
on the environment's reply (a one-turn policy cannot solve it).

Turn 1: the environment opens a review (one of the default LM's prompts) and the policy writes it. Turn 2: the
environment answers with a second opinion, ``"My sister loved it."`` or ``"My sister hated it."`` (a fair coin
per episode), and the policy's second turn is rewarded for siding with her: the reward is the VADER compound
sentiment of that turn (Hutto & Gilbert 2014) times +1 (loved) or -1 (hated), in [-1, 1]; the episode then ends.

A policy that does not read the reply earns the same sentiment whichever side was drawn, so its expected reward is
0 whatever it writes; reading it and answering in kind approaches 1. The first turn is not rewarded.
"""

from __future__ import annotations

from typing import Any

from textenv.environments.base import TurnEnvironment

__all__ = ["SecondOpinion"]

REPLIES = {1: "My sister loved it.", -1: "My sister hated it."}


class SecondOpinion(TurnEnvironment):
    """The two-turn review task of the module docstring. ``openers``: the first observations to draw from (default:
    the default LM's training prompts). ``info`` of ``reset`` and of the second ``step`` names the ``side``."""

    def __init__(self, openers: list[str] | None = None):
        if openers is None:
            from textenv.default_lm import default_prompts

            openers = default_prompts()
        if not openers or not all(isinstance(o, str) for o in openers):
            raise ValueError("openers must be a non-empty list of strings (the reviews' first words)")
        self.openers = list(openers)
        from textenv.rewards import SentimentReward

        self.sentiment = SentimentReward()
        self.side, self.turn = 1, 0

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        self.side = 1 if self.np_random.random() < 0.5 else -1
        self.turn = 0
        return self.openers[int(self.np_random.integers(len(self.openers)))], {"side": self.side}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        self.turn += 1
        if self.turn == 1:
            return REPLIES[self.side], 0.0, False, False, {}
        agreement = float(self.sentiment([""], [action])[0]) * self.side
        return "", agreement, True, False, {"side": self.side}
