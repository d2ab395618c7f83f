"""Users' own turn environments, as a user would write them: one subclass of ``TurnEnvironment`` and one plain class
that only has the methods (GEM's style: ``reset(seed)`` without ``options``). Importable by the string spec
``"tests.textenv.environments.user_envs:<Name>"``."""

from __future__ import annotations

from typing import Any

from textenv.environments import TurnEnvironment


class GuessDigit(TurnEnvironment):
    """Guess a digit in ``low..high``; the reply says higher or lower; reward 1 for the right guess, 0 otherwise;
    terminated on the right guess, truncated after ``max_turns`` guesses."""

    def __init__(self, low: int = 0, high: int = 9, max_turns: int = 5):
        self.low, self.high, self.max_turns = low, high, max_turns

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        self.target = int(self.np_random.integers(self.low, self.high + 1))
        self.turns = 0
        return f"Guess my number from {self.low} to {self.high}.", {"max_turns": self.max_turns}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        self.turns += 1
        try:
            guess = int(action.strip())
        except ValueError:
            return "Answer with a number.", 0.0, False, self.turns >= self.max_turns, {"valid": False}
        won = guess == self.target
        reply = "Right!" if won else ("Higher." if guess < self.target else "Lower.")
        return reply, float(won), won, not won and self.turns >= self.max_turns, {"valid": True}


class Echo:
    """Duck-typed: no base class; repeats the turn back; ends when told "bye". ``reset`` takes no options."""

    def __init__(self, prefix: str = "You said: "):
        self.prefix = prefix
        self.closed = False

    def reset(self, seed=None):
        return "Say something.", {}

    def step(self, action):
        return self.prefix + action, len(action), action == "bye", False, {}

    def close(self):
        self.closed = True


def make_echo() -> Echo:
    """A zero-argument factory, as ``environment=`` may be."""
    return Echo(prefix="> ")


SHARED_ECHO = Echo()  # an instance at module level: a spec for one environment only
