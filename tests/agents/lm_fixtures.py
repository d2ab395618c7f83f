"""Shared builders for the LLM-agent tests: a tiny GPT-2, a trivial reward, a torch-backend TextGen vector env, and
naive float64 versions of losses to check the agents' numbers against."""

from __future__ import annotations

import math

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


def record_minibatch_rows(agent, monkeypatch) -> list[torch.Tensor]:
    """Make ``agent.minibatch_updates`` note the rows of each minibatch it trains on, in order; return that list."""
    seen: list[torch.Tensor] = []
    real = agent.minibatch_updates

    def recording(batch, epochs, num_minibatches, minibatch_loss):
        def noted(mb, rows):
            seen.append(rows)
            return minibatch_loss(mb, rows)

        return real(batch, epochs, num_minibatches, noted)

    monkeypatch.setattr(agent, "minibatch_updates", recording)
    return seen


def naive_grpo_loss(logp, old, ref, adv, mask, eps, beta, agg, max_tokens) -> float:
    """The GRPO loss (``agents.llm.losses.grpo_loss``, plain k3 term) by a Python loop in float64, from nested lists
    ``(B, T)`` and per-sequence advantages ``(B,)``."""
    B, T = len(logp), len(logp[0])
    per_seq, total, count = [], 0.0, 0
    for i in range(B):
        s, n = 0.0, 0
        for t in range(T):
            if not mask[i][t]:
                continue
            rho = math.exp(logp[i][t] - old[i][t])
            surr = min(rho * adv[i], min(max(rho, 1 - eps), 1 + eps) * adv[i])
            d = ref[i][t] - logp[i][t]
            l_t = -surr + beta * (math.exp(d) - d - 1)
            s, n = s + l_t, n + 1
        per_seq.append(s / max(n, 1))
        total, count = total + s, count + n
    if agg == "token-mean":
        return total / count
    if agg == "sequence-mean":
        return sum(per_seq) / B
    return total / (B * max_tokens)
