"""GEM environments by id, through the factory and the checker: whole episodes with string actions, seeds, the
process-wide random streams and the root logger left alone. Skipped when GEM (``gem-llm``) is not installed."""

from __future__ import annotations

import logging
import random
import re

import pytest

pytest.importorskip("gem")

from textenv.environments import (  # noqa: E402 - after the skip, as the module needs gem
    EnvironmentSpecError,
    TurnEnvironmentError,
    TurnEpisodeEndedError,
    make_environment_factory,
)

GAME = "gem:game:GuessTheNumber-v0-easy"  # 1..10 in 4 turns: bisection always wins; offline


def bisect(env, seed: int) -> list[tuple]:
    """Play GEM's Guess The Number by bisection (its answers: "the target number is higher/lower than N")."""
    observation, _ = env.reset(seed=seed)
    low, high = map(int, re.search(r"between (\d+) and (\d+)", observation).groups())
    steps = []
    while not steps or not (steps[-1][2] or steps[-1][3]):
        guess = (low + high) // 2
        steps.append(env.step(f"My guess is \\boxed{{{guess}}}."))
        hint = re.search(r"target number is (higher|lower)", steps[-1][0])
        if hint:
            low, high = (guess + 1, high) if hint.group(1) == "higher" else (low, guess - 1)
    return steps


def test_an_episode_by_id_runs_to_the_end_with_string_actions():
    env = make_environment_factory(GAME)()
    steps = bisect(env, seed=0)
    observation, reward, terminated, truncated, info = steps[-1]
    assert observation.startswith("Congratulations!") and reward == 1.0 and terminated and not truncated
    assert all(step[1] == 0.0 and not step[2] for step in steps[:-1]) and len(steps) <= 4
    assert isinstance(info, dict) and all(type(step[1]) is float for step in steps)
    with pytest.raises(TurnEpisodeEndedError, match=f"{GAME}: step.. after the episode ended"):
        env.step("\\boxed{1}")
    env.close()


def test_gems_own_format_penalty_ends_the_episode():
    env = make_environment_factory(GAME)()
    env.reset(seed=0)
    observation, reward, terminated, _, _ = env.step("five")
    assert "did not provide a valid guess" in observation and reward == -0.1 and terminated


def test_seeds_reproduce_episodes_and_leave_the_callers_random_alone():
    factory = make_environment_factory(GAME)
    random.seed(123)
    state = random.getstate()
    first = [bisect(factory(), seed) for seed in range(4)]
    assert random.getstate() == state  # GEM's random.seed(seed) went to the adapter's own copy
    assert [bisect(factory(), seed) for seed in range(4)] == first
    assert len({len(steps) for steps in first}) > 1 or len({steps[-1][0] for steps in first}) > 1  # seeds differ


def test_interleaved_environments_do_not_share_a_stream():
    """2048 draws a new tile from the global ``random`` at every step; with one shared stream, b's steps would change
    a's boards (they do, with the adapter's private streams switched off), so a vector row would not replay alone."""
    factory = make_environment_factory("gem:game:Game2048-v0-easy")
    moves = ["\\boxed{left}", "\\boxed{up}", "\\boxed{right}", "\\boxed{down}"] * 3

    def play(envs, seeds):
        runs = [[env.reset(seed=seed)] for env, seed in zip(envs, seeds, strict=True)]
        for move in moves:
            for env, run in zip(envs, runs, strict=True):
                run.append(env.step(move))  # info["suffix"] shows the board
        return runs

    alone = play([factory()], [5])[0]
    assert play([factory(), factory()], [5, 6])[0] == alone
    assert play([factory(), factory()], [5, 5])[1] == alone


def test_import_gem_leaves_the_root_logger_as_it_was():
    from textenv.environments.gem import import_gem

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    import_gem()
    assert root.handlers == handlers and root.level == level


def test_unknown_ids_and_options_are_refused():
    with pytest.raises(EnvironmentSpecError, match=r"GEM has no environment 'game:GuessTheNumber-v0-eazy' .*did you "
                                                   r"mean 'game:GuessTheNumber-v0-easy'"):
        make_environment_factory("gem:game:GuessTheNumber-v0-eazy")()
    env = make_environment_factory(GAME)()
    with pytest.raises(TurnEnvironmentError, match="GEM environments take no reset options"):
        env.reset(options={"level": 1})
