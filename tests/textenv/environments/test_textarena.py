"""TextArena single-player games through the factory and the checker: whole games with string actions, the score at
the end only, the new messages as observations, seeds, and multi-player games refused. Skipped when TextArena is not
installed."""

from __future__ import annotations

import random
import re

import pytest

pytest.importorskip("textarena")

from textenv.environments import (  # noqa: E402 - after the skip, as the module needs textarena
    EnvironmentSpecError,
    TurnEnvironmentError,
    make_environment_factory,
)

GAME = "textarena:GuessTheNumber-v0"  # 1..20 in 10 turns: bisection always wins; offline


def bisect(env, seed: int, bracket: bool = False) -> tuple[str, list[tuple]]:
    """Play by bisection on TextArena's answers ("The target number is higher." / "... lower.")."""
    first, _ = env.reset(seed=seed)
    low, high = map(int, re.search(r"between (\d+) and (\d+)", first).groups())
    steps = []
    while not steps or not steps[-1][2]:
        guess = (low + high) // 2
        steps.append(env.step(f"[{guess}]" if bracket else str(guess)))  # the registered wrapper adds [...] itself
        if "higher" in steps[-1][0]:
            low = guess + 1
        elif "lower" in steps[-1][0]:
            high = guess - 1
    return first, steps


def test_a_single_player_game_runs_to_the_end_and_scores_only_there():
    env = make_environment_factory(GAME)()
    first, steps = bisect(env, seed=0)
    assert first.startswith("You are Player 0. You are playing Guess The Number.")
    for observation, reward, terminated, truncated, info in steps[:-1]:
        assert observation in ("The target number is higher.", "The target number is lower.")
        assert reward == 0.0 and not terminated and not truncated and info == {}
    observation, reward, terminated, truncated, info = steps[-1]
    assert observation == "Congratulations! You guessed the correct number."  # the game's reason, as the last reply
    assert reward == 1.0 and type(reward) is float and terminated and not truncated
    assert info["game_info"]["turn_count"] == len(steps) and info["game_info"]["invalid_move"] is False
    env.close()


def test_invalid_moves_warn_then_end_the_game():
    env = make_environment_factory(GAME)()
    env.reset(seed=0)
    observation, reward, terminated, _, _ = env.step("[twelve]")
    assert observation.startswith("You attempted an invalid move.") and reward == 0.0 and not terminated
    observation, reward, terminated, _, info = env.step("[twelve]")  # a second in a row loses (error allowance 1)
    assert terminated and reward == 0.0 and info["game_info"]["invalid_move"] is True
    assert "Invalid Move" in observation


def test_the_players_own_move_is_not_echoed_back():
    env = make_environment_factory("textarena:TowerOfHanoi-v0")()  # echoes moves as sent by the game, not player 0
    env.reset(seed=0)
    observation = env.step("hello")[0]
    assert observation.startswith("You attempted an invalid move.") and "[hello]" not in observation


def test_seeds_reproduce_games_and_leave_the_callers_random_alone():
    factory = make_environment_factory(GAME)
    random.seed(7)
    state = random.getstate()
    games = [bisect(factory(), seed, bracket=True) for seed in range(3)]
    assert random.getstate() == state
    assert [bisect(factory(), seed) for seed in range(3)] == games
    assert len({len(steps) for _, steps in games}) > 1  # different seeds, different targets


def test_full_history_gives_textarenas_transcript():
    env = make_environment_factory(GAME, full_history=True)()
    first, _ = env.reset(seed=0)
    observation = env.step("10")[0]
    assert observation.startswith(first)
    assert "[Player] [10]" in observation and "[GAME] The target number" in observation


def test_multi_player_games_unknown_ids_and_options_are_refused():
    with pytest.raises(EnvironmentSpecError, match=r"'TicTacToe-v0' is not a single-player game \(reset\(num_players=1"
                                                   r"\) says: The number of players has to be 2"):
        make_environment_factory("textarena:TicTacToe-v0")()
    with pytest.raises(EnvironmentSpecError, match=r"TextArena has no game 'GuessTheNumbr-v0' .*did you mean "
                                                   r"'GuessTheNumber-v0'"):
        make_environment_factory("textarena:GuessTheNumbr-v0")()
    with pytest.raises(TurnEnvironmentError, match="TextArena games take no reset options"):
        make_environment_factory(GAME)().reset(options={"x": 1})
