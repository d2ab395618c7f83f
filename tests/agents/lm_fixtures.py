"""Shared builders for the LLM-agent tests: a tiny GPT-2, a trivial reward and a torch-backend TextGen vector env."""

from __future__ import annotations

import torch

from textenv import KeywordReward, TextGenVectorEnv
from textenv.testing import make_tiny_lm

PROMPTS = ["the movie was", "this book is", "i loved the", "the phone was", "we hated this", "the plot is"]
TARGET_WORD = "good"


def keyword_reward():
    """The trivial task: the fraction of response words equal to ``TARGET_WORD`` (in [0, 1])."""
    return KeywordReward([TARGET_WORD], normalize=True)


def make_env(num_envs: int = 16, max_new_tokens: int = 6, kl_coef: float = 0.01, reward_fn=None, seed: int = 0):
    model, tokenizer = make_tiny_lm(seed=seed)
    return TextGenVectorEnv(
        num_envs,
        model=model,
        tokenizer=tokenizer,
        prompts=PROMPTS,
        reward_fn=reward_fn or keyword_reward(),
        kl_coef=kl_coef,
        max_new_tokens=max_new_tokens,
        max_prompt_tokens=4,
        array_backend="torch",
    )


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def score_curve(agent, iterations: int) -> list[float]:
    scores: list[float] = []
    agent.learn(iterations, callback=lambda _agent, _i, m: scores.append(m["env/score_mean"]))
    return scores
