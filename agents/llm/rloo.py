"""RLOO (REINFORCE Leave-One-Out; Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for
Learning from Human Feedback in LLMs"; Kool et al. 2019) on ``TextGen-v0``: no critic.

``k = group_size`` responses per prompt, sampled in one batched rollout (rows of a group share the prompt). Each
response's sequence reward is ``R_i = score_i - beta * KL_i`` (KL to the reference summed over its tokens, as in the
paper): the sum of the env's per-token rewards, whose KL penalty ``beta`` is the env's (``textenv.kl.KLPenalty``),
and its baseline is the mean reward of the OTHER ``k - 1`` responses to the same prompt:
``A_i = R_i - mean_{j != i} R_j``. The policy gradient is REINFORCE on the whole sequence; with ``ppo_epochs > 1`` the
update reuses the rollout through the PPO-clipped ratio (as TRL's RLOO trainer does).
"""

from __future__ import annotations

import dataclasses

import torch

from agents.llm.base import shaped_scores
from agents.llm.group import GroupAgent, GroupConfig
from agents.llm.losses import ppo_policy_loss, rloo_advantages
from agents.llm.math import masked_mean, whiten
from agents.llm.rollout import RolloutBatch
from textenv.checks import check


@dataclasses.dataclass
class RLOOConfig(GroupConfig):
    """RLOO settings."""

    group_size: int = 4
    """k, responses per prompt (the paper's k=2..4); >= 2 for a leave-one-out baseline to exist."""
    ppo_epochs: int = 1
    """Passes over each rollout; 1 (with one minibatch) is plain REINFORCE: the ratio is 1."""
    normalize_advantages: bool = False
    """Whiten the leave-one-out advantages over the batch (TRL's option; the paper does not)."""
    missing_eos_penalty: float | None = None
    """Subtract this from the score of responses truncated without EOS; None disables."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.ppo_epochs >= 1, f"ppo_epochs must be >= 1, got {self.ppo_epochs}")
        check(
            self.missing_eos_penalty is None or self.missing_eos_penalty >= 0,
            "missing_eos_penalty is subtracted from the score: give a value >= 0, or None",
        )


class RLOOAgent(GroupAgent):
    """RLOO on a ``TextGenVectorEnv`` with ``num_envs = prompts_per_step * group_size`` (``array_backend="torch"``)."""

    algo = "rloo"
    config: RLOOConfig
    config_class = RLOOConfig

    def sequence_advantages(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) sequence rewards ``R = score - beta * KL``, the env's per-token rewards summed (the score after the
        missing-EOS penalty), and their (B,) leave-one-out advantages (whitened over the batch with
        ``normalize_advantages``)."""
        cfg = self.config
        shaping = shaped_scores(batch, None, cfg.missing_eos_penalty) - batch.scores.float()
        rewards = batch.env_rewards.sum(-1) + shaping
        advantages = rloo_advantages(rewards, cfg.group_size)
        if cfg.normalize_advantages:
            advantages = whiten(advantages, torch.ones_like(advantages, dtype=torch.bool))
        return rewards, advantages

    def train_on(self, batch: RolloutBatch) -> dict[str, float]:
        cfg = self.config
        rewards, advantages = self.sequence_advantages(batch)

        def minibatch_loss(mb: RolloutBatch, rows: torch.Tensor) -> tuple[torch.Tensor, dict]:
            logprobs, entropy, _ = self.policy_forward(mb)
            m = mb.response_mask
            # A sequence's advantage on each of its tokens: REINFORCE on log pi(y|x) = sum_t log pi(y_t|...).
            token_adv = advantages[rows, None].expand_as(logprobs) * m
            loss, metrics = ppo_policy_loss(logprobs, mb.old_logprobs, token_adv, m, clip_eps=cfg.clip_range)
            return loss, {**metrics, "entropy": masked_mean(entropy, m)}

        out = self.minibatch_updates(batch, cfg.ppo_epochs, cfg.num_minibatches, minibatch_loss)
        out.update(self.group_metrics(rewards))
        out["train/reward_mean"] = float(rewards.mean())
        return out
