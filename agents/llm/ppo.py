"""PPO for language models on ``TextGen-v0``: a policy, a value head and a per-token KL reward (RLHF as in InstructGPT).

Each iteration plays one episode per env row (sampling from the env's cached logits, so the KL reward costs no extra
forward), takes the env's per-token rewards ``r_t = -beta * (log pi - log pi_ref)`` plus the score at the last token
as the rollout recorded them (the KL penalty, fixed or adaptive, is the env's: ``textenv.kl.KLPenalty``), computes
GAE advantages with a value head, and runs minibatch epochs of the clipped PPO objective.

Where each choice comes from (cited where it is made):
- N details = "The N Implementation Details of RLHF with PPO" (Huang, Liu, von Werra et al., ICLR blog track 2024),
- 37 details = "The 37 Implementation Details of Proximal Policy Optimization" (Huang et al., ICLR blog track 2022).
"""

from __future__ import annotations

import copy
import dataclasses
import os

import torch
from torch import nn

from agents.llm.base import LMAgent, LMAgentConfig, shaped_scores
from agents.llm.losses import ppo_policy_loss, ppo_value_loss
from agents.llm.math import gae, masked_mean, whiten
from agents.llm.rollout import RolloutBatch
from agents.rundir import RunDir
from rewardmodels.text.lm_reward import TokenizerMismatchError, tokenizers_match
from textenv.checks import check

VALUE_INITS = ("zero", "reward_model")


@dataclasses.dataclass
class PPOConfig(LMAgentConfig):
    """PPO settings (defaults follow the N details for text, scaled down for tiny models)."""

    learning_rate: float = 1e-5
    """Adam learning rate of the policy and value head."""
    gamma: float = 1.0
    """Discount; 1 for text, where the only non-KL reward comes at the end (N details)."""
    lam: float = 0.95
    """GAE lambda (37 details #5; N details use 0.95)."""
    clip_range: float = 0.2
    """Clip epsilon of the policy ratio (37 details #8)."""
    clip_range_value: float | None = 0.2
    """Clip of the value update around the old values (37 details #9); None disables."""
    vf_coef: float = 0.1
    """Weight of the value loss (N details: 0.1)."""
    entropy_coef: float = 0.0
    """Entropy bonus weight (37 details #10; 0 for RLHF, whose KL penalty already keeps the policy spread)."""
    ppo_epochs: int = 4
    """Passes over each rollout (37 details #6)."""
    num_minibatches: int = 1
    """Minibatches per pass; the env's ``num_envs`` must be divisible by it (37 details #6)."""
    whiten_rewards: bool = False
    """Whiten the per-token rewards of each rollout (N details, "reward whitening"), before GAE."""
    whiten_advantages: bool = True
    """Normalise advantages to zero mean, unit variance over the rollout's tokens (37 details #7)."""
    missing_eos_penalty: float | None = None
    """Subtract this from the score of responses truncated without EOS (N details, "EOS trick"); None disables."""
    score_clip: float | None = None
    """Clip scores to ``[-score_clip, score_clip]`` before use; None disables."""
    value_init: str = "zero"
    """``"zero"``: a zero-initialised linear value head on the policy's last hidden state (the first advantages are
    then the returns). ``"reward_model"``: a separate critic copied from the reward model (backbone + head), as in
    the N details ("initialise the value model from the reward model"); pass ``reward_model=`` to the agent."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 < self.gamma <= 1 and 0 <= self.lam <= 1, f"need 0 < gamma <= 1, 0 <= lam <= 1; got {self.gamma}")
        check(self.clip_range > 0, f"clip_range must be > 0, got {self.clip_range}")
        check(
            self.clip_range_value is None or self.clip_range_value > 0,
            "clip_range_value must be > 0 or None (no value clipping)",
        )
        check(self.vf_coef >= 0 and self.entropy_coef >= 0, "vf_coef and entropy_coef must be >= 0")
        check(self.ppo_epochs >= 1, f"ppo_epochs must be >= 1, got {self.ppo_epochs}")
        check(self.num_minibatches >= 1, f"num_minibatches must be >= 1, got {self.num_minibatches}")
        check(
            self.missing_eos_penalty is None or self.missing_eos_penalty >= 0,
            "missing_eos_penalty is subtracted from the score: give a value >= 0, or None to disable",
        )
        check(self.score_clip is None or self.score_clip > 0, "score_clip must be > 0 or None")
        check(self.value_init in VALUE_INITS, f"value_init must be one of {VALUE_INITS}, got {self.value_init!r}")


class RewardModelCritic(nn.Module):
    """A value network initialised from a reward model: its backbone and scalar head, applied at every position.

    "Initialise the value model from the reward model" (N details): at the start V(s_t) is the RM's score of the
    partial sequence, a far better baseline than 0. ``reward_model`` must have ``backbone`` (a transformer returning
    ``last_hidden_state``), ``head`` (hidden -> 1) and ``tokenizer`` (identical to the policy's: the critic reads the
    policy's token ids), as ``rewardmodels.text.lm_reward.LMRewardModel`` does. It is deep-copied; the RM is untouched.
    A normalising wrapper with ``reward_fn``, ``mean`` and ``std`` (``rewardmodels.text.ensemble.NormalizedReward``) is
    unwrapped and its affine map folded into the head, so initial values are on the scale of the rewards.
    """

    def __init__(self, reward_model: nn.Module, policy_tokenizer):
        super().__init__()
        shift, scale = 0.0, 1.0
        if hasattr(reward_model, "reward_fn") and hasattr(reward_model, "mean") and hasattr(reward_model, "std"):
            shift, scale = float(reward_model.mean), float(reward_model.std)
            reward_model = reward_model.reward_fn
        missing = [a for a in ("backbone", "head", "tokenizer") if not hasattr(reward_model, a)]
        if missing:
            raise ValueError(
                f"value_init='reward_model' needs a reward model with backbone/head/tokenizer (an LMRewardModel); "
                f"{type(reward_model).__name__} lacks {missing}. Use value_init='zero' otherwise."
            )
        if not tokenizers_match(reward_model.tokenizer, policy_tokenizer):
            raise TokenizerMismatchError(
                "value_init='reward_model' reads the policy's token ids with the reward model's backbone, but their "
                "tokenizers differ; use a reward model built on the policy's tokenizer, or value_init='zero'"
            )
        self.backbone = copy.deepcopy(reward_model.backbone).requires_grad_(True)
        self.head = copy.deepcopy(reward_model.head).requires_grad_(True)
        with torch.no_grad():  # (w h + b - shift) / scale
            self.head.weight.div_(scale)
            self.head.bias.sub_(shift).div_(scale)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, L)
        positions = (attention_mask.cumsum(1) - 1).clamp(min=0)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions)
        return self.head(hidden.last_hidden_state.float()).squeeze(-1)


class ValueHead(nn.Module):
    """A scalar head on hidden states, zero-initialised so that V = 0 at the start (N details, "value head init")."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, T)
        return self.linear(hidden.float()).squeeze(-1)


def token_rewards(batch: RolloutBatch, scores: torch.Tensor) -> torch.Tensor:
    """(B, T) per-token rewards: the env's (its KL penalty, and the score at each row's last token), with that score
    replaced by ``scores`` (B,) (the score after clipping and the missing-EOS penalty, :func:`shaped_scores`)."""
    last = batch.last_index.unsqueeze(1)  # (B, 1)
    shaping = (scores.float() - batch.scores.float()).unsqueeze(1)
    return batch.env_rewards.scatter_add(1, last, shaping) * batch.response_mask


class PPOAgent(LMAgent):
    """PPO with a value head on ``TextGen-v0`` (``array_backend="torch"``); trains ``env.policy`` in place.

    ``reward_model`` (a ``rewardmodels.text.lm_reward.LMRewardModel`` on the policy's tokenizer) is needed only for
    ``value_init="reward_model"``, where a copy of it becomes the critic (:class:`RewardModelCritic`).
    """

    algo = "ppo"
    config_class = PPOConfig

    def __init__(
        self,
        env,
        config: PPOConfig | None = None,
        run_dir: RunDir | str | os.PathLike | None = None,
        reward_model: nn.Module | None = None,
        ref_model: nn.Module | None = None,
    ):
        config = config or PPOConfig()
        if env.num_envs % config.num_minibatches:
            raise ValueError(
                f"num_envs={env.num_envs} is not divisible by num_minibatches={config.num_minibatches}; "
                "choose num_minibatches that divides the number of env rows"
            )
        policy = env.policy
        device = next(policy.parameters()).device
        self.critic: nn.Module | None = None
        if config.value_init == "reward_model":
            if reward_model is None:
                raise ValueError(
                    "value_init='reward_model' needs reward_model= (the LM reward model); pass it, or use "
                    "value_init='zero'"
                )
            self.critic = RewardModelCritic(reward_model, env.tokenizer).to(device).eval()
            self.value_head = None
        else:
            self.value_head = ValueHead(policy.config.hidden_size).to(device)
        super().__init__(env, config, run_dir, ref_model)

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"critic": self.critic} if self.critic is not None else {"value_head": self.value_head}

    def _forward(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logprobs, entropy, values), each (B, T)."""
        shared = self.critic is None
        logprobs, entropy, hidden = self.policy_forward(
            batch, output_hidden=shared, entropy_grad=self.config.entropy_coef > 0
        )
        if shared:
            return logprobs, entropy, self.trained(self.value_head)(hidden)
        ids = torch.cat([batch.query_ids, batch.response_ids], 1)
        attention = torch.cat([batch.query_mask, batch.sequence_mask], 1).long()
        values = self.trained(self.critic)(ids, attention)  # (B, Lq+T)
        lq = batch.query_ids.shape[1]
        return logprobs, entropy, values[:, lq - 1 : -1].float()

    def train_on(self, batch: RolloutBatch) -> dict[str, float]:
        cfg = self.config
        mask = batch.response_mask
        with torch.no_grad():
            _, _, old_values = self._forward(batch)
            old_values = old_values * mask
            scores = shaped_scores(batch, cfg.score_clip, cfg.missing_eos_penalty)
            rewards = token_rewards(batch, scores)
            if cfg.whiten_rewards:  # N details: whiten rewards without shifting their mean
                rewards = whiten(rewards, mask, shift_mean=False) * mask
            advantages, returns = gae(rewards, old_values, mask, gamma=cfg.gamma, lam=cfg.lam)
            if cfg.whiten_advantages:  # 37 details #7
                advantages = whiten(advantages, mask) * mask

        def minibatch_loss(mb: RolloutBatch, rows: torch.Tensor) -> tuple[torch.Tensor, dict]:
            logprobs, entropy, values = self._forward(mb)
            m = mb.response_mask
            pg_loss, pg_metrics = ppo_policy_loss(
                logprobs, mb.old_logprobs, advantages[rows], m, clip_eps=cfg.clip_range
            )
            vf_loss, vf_metrics = ppo_value_loss(
                values, old_values[rows], returns[rows], m, clip_eps=cfg.clip_range_value
            )
            ent = masked_mean(entropy, m)
            loss = pg_loss + cfg.vf_coef * vf_loss - cfg.entropy_coef * ent
            return loss, {**pg_metrics, **vf_metrics, "policy": pg_loss, "value": vf_loss, "entropy": ent}

        metrics = self.minibatch_updates(batch, cfg.ppo_epochs, cfg.num_minibatches, minibatch_loss)
        metrics.update(
            {
                "train/kl_coef": batch.kl_coef,
                "train/reward_mean": float(rewards.sum(-1).mean()),
                "train/score_shaped_mean": float(scores.mean()),
                "train/value_mean": float(masked_mean(old_values, mask)),
            }
        )
        return metrics
