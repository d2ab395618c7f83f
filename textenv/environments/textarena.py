"""TextArena single-player games as turn environments: spec ``"textarena:<id>"`` (``pip install
'rlhf-gym[textarena]'``; package and import name ``textarena``).

TextArena (Guertler et al. 2025, https://github.com/LeonGuertler/TextArena) has its own API, mapped here:

- ``reset(seed)`` -> ``env.reset(num_players=1, seed=seed)``, then ``env.get_observation()``;
- ``step(text)`` -> ``env.step(text)`` gives ``(done, info)``; on ``done``, ``env.close()`` gives
  ``(rewards, game_info)``, and player 0's reward is the step's reward. TextArena scores a game only when it ends, so
  every earlier turn's reward is 0.0. ``terminated`` is ``done``; ``truncated`` is always False, since a game's turn
  limit is one of its rules (it ends the game with a score), not a cut from outside.
- Observations: the game's messages since the previous observation, one per line (the game's reply to this turn,
  e.g. "The target number is higher."; an invalid move's warning; a board; at the end, why the game ended), without
  the game's echo of the player's own move. The conversation
  already holds the policy's own turns and the earlier replies, so the cumulative transcript that TextArena's
  default ``LLMObservationWrapper`` builds would repeat them every turn; ``full_history=True`` returns that wrapper
  stack's string instead. Action wrappers (``ActionFormattingWrapper`` adds ``[...]`` around a bare answer) apply
  as registered.
- Only single-player games: making a game checks that it resets with one player, and refuses it otherwise.
- Games seed and draw from the global ``random``; each adapter keeps its own copy of it (``rng.py``).

Many games run offline (GuessTheNumber, Mastermind, TowerOfHanoi, Minesweeper, ...); word games (Wordle, Hangman,
...) download nltk corpora the first time they are made.
"""

from __future__ import annotations

import difflib
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

__all__ = ["TextArenaEnvironment"]

_PLAYER = 0  # the one player's id in a single-player game


class TextArenaEnvironment(TurnEnvironment):
    """TextArena single-player game ``env_id`` (e.g. ``"GuessTheNumber-v0"``), made by ``ta.make(env_id, **kwargs)``
    with its registered wrappers. ``full_history``: observations are TextArena's whole transcript each turn instead of
    the new messages. One instance is one game; ``env`` is the TextArena object (its wrapper stack)."""

    def __init__(self, env_id: str, *, full_history: bool = False, **kwargs: Any):
        ta = require("textarena", "textarena", "textarena", "a TextArena game ('textarena:<id>')")
        from textarena.envs.registration import ENV_REGISTRY

        self.name = f"textarena:{env_id}"
        if env_id not in ENV_REGISTRY:
            close = difflib.get_close_matches(env_id, list(ENV_REGISTRY), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise EnvironmentSpecError(f"TextArena has no game {env_id!r} (single-player ones include "
                                       f"'GuessTheNumber-v0', 'Mastermind-v0', 'TowerOfHanoi-v0'){hint}")
        self.full_history = full_history
        self._random = PrivateGlobalRandom()
        with self._random:
            self.env = ta.make(env_id, **kwargs)
            self._check_single_player()  # fails here, when the game is made, rather than at the first reset
        self._game = self.env
        while isinstance(self._game, ta.Wrapper):
            self._game = self._game.env

    def _check_single_player(self) -> None:
        try:
            self.env.reset(num_players=1)
        except (AssertionError, ValueError) as e:
            raise EnvironmentSpecError(
                f"TextArena game {self.name.partition(':')[2]!r} is not a single-player game (reset(num_players=1) "
                f"says: {e}); a turn environment is the one other side of the conversation, so use a single-player "
                "game such as 'GuessTheNumber-v0'") from e

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        if options:
            raise TurnEnvironmentError(f"turn environment {self.name}: TextArena games take no reset options, "
                                       f"got {options!r}")
        with self._random:
            self.env.reset(num_players=1, seed=seed)
            observation = self._observation()
        return check_reset_result(self.name, (observation, {}))

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        with self._random:
            done, info = self.env.step(action)
            observation = self._observation()
            info = dict(info or {})
            reward = 0.0
            if done:
                rewards, game_info = self.env.close()  # TextArena's close() ends the game and hands out the scores
                reward = (rewards or {}).get(_PLAYER, 0.0)
                info["game_info"] = (game_info or {}).get(_PLAYER, {})
                reason = info["game_info"].get("reason")
                if reason and not self.full_history and reason not in observation:
                    observation = f"{observation}\n{reason}" if observation else str(reason)
        return check_step_result(self.name, (observation, reward, bool(done), False, info))

    def _observation(self) -> str:
        """What the player sees now: the new messages of the game (or the wrapper stack's transcript)."""
        import textarena as ta

        # the game's get_observation() hands out (and forgets) the messages since its last call; the wrappers' one
        # adds them to their transcript and formats that (or, for a "-raw" id without wrappers, hands them as is)
        _, observation = (self.env if self.full_history else self._game).get_observation()
        if isinstance(observation, str):
            return observation
        # the player's own moves are already in the conversation (some games echo them as sent by the game)
        return "\n".join(str(message) for _, message, kind in observation if kind != ta.ObservationType.PLAYER_ACTION)

    def close(self) -> None:
        """Nothing to release: TextArena's own ``close()`` only scores a game, and ``step`` calls it at the end."""
