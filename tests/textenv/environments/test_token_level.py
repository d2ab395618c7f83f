"""Real environments from GEM, TextArena and OpenEnv as token-level MDPs: ``gym.make("TextGen-v0", environment=...)``
with a tiny LM whose vocabulary holds the moves, stepped one token at a time through several turns. Skipped when the
package is absent."""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest
import torch

import textenv  # noqa: F401  (registers TextGen-v0)
from textenv.testing import DEFAULT_WORDS, make_tiny_lm

torch.set_num_threads(1)

MOVES = [f"\\boxed{{{n}}}" for n in range(1, 21)] + [f"[{n}]" for n in range(1, 21)] + ["hi", "please", "bye"]


@pytest.fixture(scope="module")
def lm():
    return make_tiny_lm([*DEFAULT_WORDS, *MOVES], n_positions=256)


def make(lm, spec):
    model, tok = lm
    return gym.make("TextGen-v0", model=model, tokenizer=tok, environment=spec, kl_coef=0.0, ref_model=None,
                    max_prompt_tokens=128, max_new_tokens=96, max_turn_tokens=4, info_text=True).unwrapped


def play_turns(env, turns: list[str], seed: int = 0):
    """Say each of ``turns`` (one token each, then EOS) until the episode ends; returns the last step's results and
    the observations' token counts after each turn."""
    tok = env.tokenizer
    env.reset(seed=seed)
    lengths = []
    for text in turns:
        for a in (tok.convert_tokens_to_ids(text), tok.eos_token_id):
            obs, reward, terminated, truncated, info = env.step(a)
            if terminated or truncated:
                return (reward, terminated, truncated, info), lengths
        lengths.append(int(obs["attention_mask"].sum()))
    raise AssertionError("the environment never ended the episode")


def test_a_gem_game_by_id(lm):
    pytest.importorskip("gem")
    env = make(lm, "gem:game:GuessTheNumber-v0-easy")
    (reward, terminated, truncated, info), lengths = play_turns(env, [f"\\boxed{{{n}}}" for n in range(1, 11)])
    assert terminated or truncated
    assert info["turns"] >= 2 and len(lengths) == info["turns"] - 1
    assert all(b > a + 2 for a, b in zip(lengths, lengths[1:], strict=False))  # each reply joined the state
    messages = env.engine.conv.messages[0]
    assert messages[1] == {"role": "assistant", "content": "\\boxed{1}"}
    assert re.search(r"higher|lower|correct", messages[2]["content"], re.I)  # GEM's hint, as the next user turn
    assert info["score"] == pytest.approx(env.engine.conv.returns[0])


def test_a_textarena_single_player_game(lm):
    pytest.importorskip("textarena")
    env = make(lm, "textarena:GuessTheNumber-v0")
    (reward, terminated, truncated, info), _ = play_turns(env, [f"[{n}]" for n in range(1, 21)], seed=3)
    assert terminated and info["turns"] >= 2
    messages = env.engine.conv.messages[0]
    assert messages[1]["content"] == "[1]" and "higher" in messages[2]["content"].lower()


def test_an_openenv_server(lm):
    pytest.importorskip("openenv")
    pytest.importorskip("uvicorn")
    from .openenv_server import MAX_TURNS, serve

    with serve() as url:
        env = make(lm, f"openenv:{url}")
        try:
            (reward, terminated, truncated, info), _ = play_turns(env, ["hi", "please", "hi", "hi", "hi"])
        finally:
            env.engine.conv.close()
    assert terminated and info["turns"] == MAX_TURNS and info["score"] == 1.0  # "please" earned the one reward
    assert env.engine.conv.messages[0][2] == {"role": "user", "content": "You said: hi"}


def test_a_vector_env_plays_a_gem_game_in_every_row(lm):
    pytest.importorskip("gem")
    model, tok = lm
    env = gym.make_vec("TextGen-v0", num_envs=3, vectorization_mode="vector_entry_point", model=model, tokenizer=tok,
                       environment="gem:game:GuessTheNumber-v0-easy", kl_coef=0.0, ref_model=None,
                       max_prompt_tokens=128, max_new_tokens=96, max_turn_tokens=4, array_backend="torch")
    env.reset(seed=0)
    episodes = env.unwrapped.play(torch.Generator().manual_seed(0))
    assert episodes.turns.min() >= 1 and np.isfinite(episodes.scores).all()
    assert (episodes.context_mask.sum(1) > 0).tolist() == (episodes.turns > 1).tolist()
