"""GRPO (Group Relative Policy Optimization; Shao et al. 2024, "DeepSeekMath") on ``TextGen-v0``: no critic.

Every iteration draws ``prompts_per_step`` prompts and samples ``group_size`` responses to each, in ONE batched rollout
of a vector env with ``num_envs = prompts_per_step * group_size`` rows (rows ``g*G .. g*G+G-1`` share prompt ``g``).
A response's advantage is its score standardised within its group; the loss is the clipped ratio objective with the
k3 KL estimator to the reference inside the loss (not in the reward), aggregated per token, per sequence, or as in
Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training").
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
import torch

from agents.llm.base import LMAgent, LMAgentConfig, _check, accumulate
from agents.llm.losses import GroupSizeError, grpo_advantages, grpo_loss
from agents.llm.rollout import RolloutBatch, collect_rollout, env_prompts, env_setting
from agents.rundir import RunDir

AGGREGATIONS = ("token-mean", "sequence-mean", "dr-grpo")


def check_group_size(group_size: int, algo: str) -> None:
    if group_size < 2:
        raise GroupSizeError(
            f"group_size={group_size}: {algo} compares each response with the others sampled for the same prompt, so "
            "a group of one has no baseline and zero advantage (nothing is learnt). Use group_size >= 2 "
            "(4 to 16 is typical)."
        )


@dataclasses.dataclass
class GroupConfig(LMAgentConfig):
    """Settings of agents that sample a group of responses per prompt (GRPO, RLOO)."""

    group_size: int = 8
    """G, responses sampled per prompt; >= 2 (each response is judged against its group)."""
    prompts_per_step: int = 4
    """Distinct prompts per iteration; the env must have ``prompts_per_step * group_size`` rows."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_group_size(self.group_size, type(self).__name__.removesuffix("Config"))
        _check(self.prompts_per_step >= 1, f"prompts_per_step must be >= 1, got {self.prompts_per_step}")

    @property
    def batch_size(self) -> int:
        """Rows per rollout: ``prompts_per_step * group_size`` (what ``num_envs`` must be)."""
        return self.prompts_per_step * self.group_size


@dataclasses.dataclass
class GRPOConfig(GroupConfig):
    """GRPO settings (defaults: DeepSeekMath's beta=0.04, clip 0.2, one update per rollout)."""

    learning_rate: float = 1e-5
    """Adam learning rate."""
    kl_coef: float = 0.04
    """beta of the k3 KL-to-reference term in the loss (0 drops it)."""
    clip_range: float = 0.2
    """Clip epsilon of the policy ratio."""
    num_updates: int = 1
    """Gradient steps per rollout (mu in DeepSeekMath). With 1 the ratio is 1 and clipping never binds."""
    num_minibatches: int = 1
    """Minibatches per update pass; must divide ``batch_size``."""
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
        _check(self.kl_coef >= 0, f"kl_coef must be >= 0, got {self.kl_coef}")
        _check(self.clip_range > 0, f"clip_range must be > 0, got {self.clip_range}")
        _check(self.num_updates >= 1, f"num_updates must be >= 1, got {self.num_updates}")
        _check(self.num_minibatches >= 1, f"num_minibatches must be >= 1, got {self.num_minibatches}")
        _check(
            self.batch_size % self.num_minibatches == 0,
            f"num_minibatches={self.num_minibatches} must divide prompts_per_step * group_size = {self.batch_size}",
        )
        _check(
            self.loss_aggregation in AGGREGATIONS,
            f"loss_aggregation must be one of {AGGREGATIONS}, got {self.loss_aggregation!r}",
        )


class GroupAgent(LMAgent):
    """Collects ``prompts_per_step`` groups of ``group_size`` responses, every group on one prompt."""

    config: GroupConfig

    def __init__(
        self,
        env,
        config: GroupConfig,
        run_dir: RunDir | str | os.PathLike | None = None,
        prompts: Sequence[str] | None = None,
        ref_model: torch.nn.Module | None = None,
    ):
        if env.num_envs != config.batch_size:
            raise ValueError(
                f"the env has num_envs={env.num_envs} rows but prompts_per_step * group_size = "
                f"{config.prompts_per_step} * {config.group_size} = {config.batch_size}; build the env with "
                f"num_envs={config.batch_size}"
            )
        prompts = list(prompts) if prompts is not None else env_prompts(env)
        if not prompts:
            raise ValueError("no prompts: pass prompts=[...] or build the env with prompts")
        self.prompts = prompts
        self.prompt_rng = np.random.default_rng(config.seed)
        super().__init__(env, config, run_dir, ref_model)

    def collect(self) -> RolloutBatch:
        cfg = self.config
        chosen = self.prompt_rng.choice(len(self.prompts), size=cfg.prompts_per_step, replace=False)
        rows = [self.prompts[i] for i in chosen for _ in range(cfg.group_size)]  # group g = rows g*G .. g*G+G-1
        return collect_rollout(
            self.env, prompts=rows, seed=self._reset_seed(), generator=self.generator, ref_model=self._batched_ref
        )

    def group_metrics(self, scores: torch.Tensor) -> dict[str, float]:
        groups = scores.view(-1, self.config.group_size)
        return {
            "train/group_score_std": float(groups.std(1).mean()),
            "train/zero_std_groups": float((groups.std(1) < 1e-6).float().mean()),
        }


class GRPOAgent(GroupAgent):
    """GRPO on a ``TextGenVectorEnv`` with ``num_envs = prompts_per_step * group_size`` (``array_backend="torch"``)."""

    algo = "grpo"
    config: GRPOConfig

    def __init__(
        self,
        env,
        config: GRPOConfig | None = None,
        run_dir: RunDir | str | os.PathLike | None = None,
        prompts: Sequence[str] | None = None,
        ref_model: torch.nn.Module | None = None,
    ):
        super().__init__(env, config or GRPOConfig(), run_dir, prompts, ref_model)

    def train_on(self, batch: RolloutBatch) -> dict[str, float]:
        cfg = self.config
        advantages = grpo_advantages(batch.scores.float(), cfg.group_size, scale=cfg.scale_rewards)  # (B,)
        n = batch.response_mask.shape[0]
        size = n // cfg.num_minibatches
        totals: dict[str, float] = {}
        count = 0
        for _ in range(cfg.num_updates):
            order = torch.randperm(n, generator=self.generator, device=self.device)
            for start in range(0, n, size):
                idx = order[start : start + size]
                mb = batch.select(idx)
                logprobs, entropy, _ = self.policy_forward(mb)
                loss, metrics = grpo_loss(
                    logprobs,
                    mb.old_logprobs,
                    mb.ref_logprobs,
                    advantages[idx],
                    mb.response_mask,
                    clip_eps=cfg.clip_range,
                    beta=cfg.kl_coef,
                    aggregation=cfg.loss_aggregation,
                    max_tokens=int(env_setting(self.env, "max_new_tokens")),
                    kl_ratio=cfg.kl_ratio,
                )
                grad_norm = self.step_optimizer(loss, "the GRPO loss")
                m = mb.response_mask
                metrics = {**metrics, "loss": loss, "grad_norm": grad_norm, "entropy": (entropy * m).sum() / m.sum()}
                accumulate(totals, metrics)
                count += 1
        out = {k: v / count for k, v in totals.items()}
        out.update(self.group_metrics(batch.scores))
        return out
