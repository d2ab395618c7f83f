"""GRPO (Group Relative Policy Optimization; Shao et al. 2024, "DeepSeekMath") on ``TextGen-v0``: no critic.

Every iteration draws ``prompts_per_step`` prompts and samples ``group_size`` responses to each, in ONE batched rollout
(:mod:`agents.llm.group`). A response's advantage is its score standardised within its group; the loss is the clipped
ratio objective with the k3 KL estimator to the reference inside the loss (not in the reward), aggregated per token,
per sequence, or as in Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training").
"""

from __future__ import annotations

import dataclasses

import torch

from agents.llm.group import GroupAgent, GroupConfig
from agents.llm.losses import grpo_advantages, grpo_loss
from agents.llm.rollout import RolloutBatch, env_setting
from textenv.checks import check, check_number

AGGREGATIONS = ("token-mean", "sequence-mean", "dr-grpo")


@dataclasses.dataclass
class GRPOConfig(GroupConfig):
    """GRPO settings (defaults: DeepSeekMath's beta=0.04, clip 0.2, one update per rollout)."""

    beta: float = 0.04
    """beta of the k3 KL-to-reference term in the loss (0 drops it): GRPO's own KL term, apart from any KL penalty
    in the env's reward (TRL's ``GRPOConfig.beta``)."""
    num_updates: int = 1
    """Passes over each rollout (mu in DeepSeekMath). With 1 and one minibatch the ratio is 1 and clipping never
    binds."""
    loss_aggregation: str = "token-mean"
    """``"token-mean"`` (mean over all tokens of the batch, DAPO), ``"sequence-mean"`` (mean over each response's
    tokens, then over responses: the original GRPO), or ``"dr-grpo"`` (sum over tokens / max_new_tokens, Dr. GRPO)."""
    scale_rewards: bool = True
    """Divide advantages by the group's score std (GRPO); False = Dr. GRPO's unscaled ``score - group mean``."""
    kl_ratio: bool = False
    """Weight the k3 KL term by the policy ratio (DeepSeek-V3.2's unbiased KL gradient; TRL's
    ``use_bias_correction_kl``, on by default there); False is DeepSeekMath's plain k3 term."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("beta", self.beta, low=0, hint="0 drops GRPO's KL term")
        check(self.num_updates >= 1, f"num_updates must be >= 1, got {self.num_updates}")
        check(
            self.loss_aggregation in AGGREGATIONS,
            f"loss_aggregation must be one of {AGGREGATIONS}, got {self.loss_aggregation!r}",
        )


class GRPOAgent(GroupAgent):
    """GRPO on a ``TextGenVectorEnv`` with ``num_envs = prompts_per_step * group_size`` (``array_backend="torch"``)."""

    algo = "grpo"
    config: GRPOConfig
    config_class = GRPOConfig

    def train_on(self, batch: RolloutBatch) -> dict[str, float]:
        cfg = self.config
        advantages = grpo_advantages(batch.scores.float(), cfg.group_size, scale=cfg.scale_rewards)  # (B,)
        max_tokens = int(env_setting(self.env, "max_new_tokens"))

        def minibatch_loss(mb: RolloutBatch, rows: torch.Tensor) -> tuple[torch.Tensor, dict]:
            logprobs, entropy, _ = self.policy_forward(mb)
            m = mb.response_mask
            loss, metrics = grpo_loss(
                logprobs,
                mb.old_logprobs,
                mb.ref_logprobs,
                advantages[rows],
                m,
                clip_eps=cfg.clip_range,
                beta=cfg.beta,
                aggregation=cfg.loss_aggregation,
                max_tokens=max_tokens,
                kl_ratio=cfg.kl_ratio,
            )
            return loss, {**metrics, "entropy": (entropy * m).sum() / m.sum()}

        out = self.minibatch_updates(batch, cfg.num_updates, cfg.num_minibatches, minibatch_loss)
        out.update(self.group_metrics(batch.scores))
        return out

    def loss_units(self, batch: RolloutBatch) -> torch.Tensor:
        # token-mean averages over tokens; sequence-mean and Dr. GRPO over rows (see grpo_loss).
        if self.config.loss_aggregation == "token-mean":
            return batch.response_mask.sum()
        return torch.tensor(batch.response_mask.shape[0], device=batch.response_mask.device)
