"""What the text RLHF run hands its improvement step: the settings (``TextRLHFConfig``), the context
(``TextRLHFContext``: policy, frozen reference, tokenizer, teacher, labelled pairs, learned reward, run directory) and
the held-out evaluation (``Evaluation``)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from agents.llm.base import _check
from agents.llm.rollout import collect_rollout
from agents.rundir import RunDir
from textenv import TextGenVectorEnv

# Per-algorithm defaults of the demo on the default LM (tuned so that each finishes in a few minutes on 2 CPU cores).
ALGO_DEFAULTS: dict[str, dict[str, Any]] = {
    "ppo": {"iterations": 30, "learning_rate": 1e-4, "kl_coef": 0.05, "num_envs": 32},
    "grpo": {"iterations": 40, "learning_rate": 2e-4, "kl_coef": 0.04, "num_envs": 32, "group_size": 8},
    "rloo": {"iterations": 40, "learning_rate": 2e-4, "kl_coef": 0.05, "num_envs": 32, "group_size": 4},
    "dpo": {"iterations": 2, "learning_rate": 1e-4, "kl_coef": 0.1, "num_pairs": 512, "eval_every": 10},
    "kto": {"iterations": 2, "learning_rate": 1e-4, "kl_coef": 0.1, "num_pairs": 512, "eval_every": 10},
    # SB3 runs get the native PPO budget in tokens (iterations * num_envs * max_new_tokens; see text_improvers.py).
    "sb3-ppo": {"iterations": 40, "learning_rate": 1e-4, "kl_coef": 0.05, "num_envs": 32},
    "sb3-a2c": {"iterations": 40, "learning_rate": 1e-4, "kl_coef": 0.05, "num_envs": 32},
}

#: Algorithms that learn from the labelled pairs directly, with no reward model (Rafailov et al. 2023; Ethayarajh
#: et al. 2024).
OFFLINE_ALGOS = ("dpo", "kto")


@dataclasses.dataclass
class TextRLHFConfig:
    """Settings of the end-to-end text RLHF pipeline (``TextRLHFConfig.for_algo`` fills per-algorithm defaults)."""

    algo: str = "ppo"
    """Improvement step: ppo, grpo, rloo, dpo, kto, sb3-ppo or sb3-a2c (``agents.loop.text_improvers``)."""
    seed: int = 0
    """Seed of sampling, labelling, reward-model training and policy optimisation."""
    device: str | None = None
    """Torch device; None = CUDA if available, else CPU."""
    max_new_tokens: int = 24
    """Response length limit (tokens); the default LM's reviews end with EOS well within 24."""
    max_prompt_tokens: int = 16
    """Longest prompt (tokens); longer prompts are an error, never truncated."""
    temperature: float = 1.0
    """Sampling temperature of rollouts, pairs and evaluation."""
    num_pairs: int = 256
    """Completion pairs labelled by the teacher (the label budget)."""
    teacher_beta: float = math.inf
    """Teacher rationality (B-Pref beta, in VADER units): inf = always prefers the higher score."""
    rm_epochs: int = 3
    """Reward-model epochs over the labelled pairs."""
    rm_learning_rate: float = 3e-4
    """Reward-model learning rate."""
    rm_batch_size: int = 16
    """Reward-model pairs per step."""
    rm_val_fraction: float = 0.15
    """Share of labelled pairs held out to measure the reward model's accuracy."""
    iterations: int = 40
    """RL iterations (collect + update), or DPO / KTO epochs over the pairs."""
    learning_rate: float = 1e-4
    """Policy learning rate."""
    kl_coef: float = 0.05
    """KL coefficient beta (PPO/RLOO: in the reward; GRPO: in the loss; DPO, KTO: their beta)."""
    num_envs: int = 32
    """Env rows per RL iteration (GRPO/RLOO: prompts per step = num_envs / group_size)."""
    group_size: int = 8
    """Samples per prompt for GRPO/RLOO."""
    eval_prompts: int = 30
    """Held-out prompts for the oracle score (at most the size of the test split)."""
    eval_samples: int = 4
    """Completions sampled per held-out prompt at each evaluation."""
    eval_every: int = 5
    """Evaluate the oracle score every this many iterations (DPO: steps) for the curves; 0 = only before/after."""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Additional agent-config fields, passed through to the algorithm's config (e.g. ``{"ppo_epochs": 2}``)."""

    def __post_init__(self) -> None:
        _check(self.algo in ALGO_DEFAULTS, f"algo must be one of {sorted(ALGO_DEFAULTS)}, got {self.algo!r}")
        for name in (
            "max_new_tokens",
            "max_prompt_tokens",
            "num_pairs",
            "rm_epochs",
            "rm_batch_size",
            "iterations",
            "num_envs",
            "eval_prompts",
            "eval_samples",
        ):
            _check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        _check(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        _check(0 <= self.rm_val_fraction < 1, f"rm_val_fraction must be in [0, 1), got {self.rm_val_fraction}")
        _check(self.eval_every >= 0, f"eval_every must be >= 0, got {self.eval_every}")
        _check(self.teacher_beta >= 0, f"teacher_beta must be >= 0, got {self.teacher_beta}")

    @classmethod
    def for_algo(cls, algo: str, **overrides: Any) -> TextRLHFConfig:
        """The config with ``ALGO_DEFAULTS[algo]`` applied, then ``overrides``."""
        return cls(algo=algo, **{**ALGO_DEFAULTS.get(algo, {}), **overrides})


class Evaluation(NamedTuple):
    prompts: list[str]
    responses: list[str]
    oracle_scores: np.ndarray  # (B,)
    kl_to_ref: np.ndarray  # (B,) sequence KL (sum of log pi - log pi_ref over the response)

    @property
    def oracle_score(self) -> float:
        return float(self.oracle_scores.mean())


@dataclasses.dataclass
class TextRLHFContext:
    """Everything an improvement step needs; it trains ``policy`` in place."""

    config: TextRLHFConfig
    policy: torch.nn.Module
    ref_model: torch.nn.Module
    tokenizer: Any
    teacher: Any
    pairs: Any  # TextPreferencePairs labelled by the teacher
    reward_model: Any  # LMRewardModel, or None for DPO
    train_prompts: list[str]
    eval_rows: list[str]
    run_dir: RunDir
    device: torch.device

    def make_env(self, num_envs: int, kl_coef: float, reward_fn: Any, prompts: list[str] | None = None):
        """A torch-backend TextGen vector env acting with ``policy`` against the frozen ``ref_model``."""
        cfg = self.config
        return TextGenVectorEnv(
            num_envs,
            model=self.policy,
            tokenizer=self.tokenizer,
            prompts=prompts or self.train_prompts,
            reward_fn=reward_fn,
            ref_model=self.ref_model,
            kl_coef=kl_coef,
            max_new_tokens=cfg.max_new_tokens,
            max_prompt_tokens=cfg.max_prompt_tokens,
            temperature=cfg.temperature,
            device=self.device,
            array_backend="torch",
        )

    def evaluate(self) -> Evaluation:
        """Sample ``eval_samples`` completions per held-out prompt (fixed seed: common random numbers across calls)."""
        env = getattr(self, "_eval_env", None)
        if env is None:  # kl_coef only makes the env compute reference log-probs; its reward is not used
            env = self._eval_env = self.make_env(len(self.eval_rows), 1.0, self.teacher.score, self.eval_rows)
        gen = torch.Generator(device=self.device).manual_seed(self.config.seed + 12345)
        batch = collect_rollout(env, prompts=self.eval_rows, seed=self.config.seed, generator=gen)
        return Evaluation(batch.prompts, batch.responses, batch.scores.cpu().numpy(), batch.kl_sum.cpu().numpy())

    def evaluate_and_log(self, step: int) -> Evaluation:
        ev = self.evaluate()
        self.run_dir.log(step, {"eval/oracle_score": ev.oracle_score, "eval/kl_to_ref": float(ev.kl_to_ref.mean())})
        return ev

    def eval_callback(self) -> Callable:
        """A ``learn()`` callback that logs the oracle score every ``eval_every`` iterations."""
        every = self.config.eval_every

        def callback(_agent, step: int, _metrics) -> bool:
            if every and step % every == 0:
                self.evaluate_and_log(step)
            return True

        return callback


class NormalizedReward:
    """``(r(x, y) - mean) / std`` of a reward function, with mean and std measured on the initial policy's samples.

    "Reward normalisation": the learned reward's offset and scale are arbitrary (Bradley-Terry sees only differences),
    so it is normalised to mean 0, std 1 on reference-policy responses before RL, which keeps the KL coefficient
    meaningful (The N Implementation Details of RLHF with PPO, Huang et al. 2024; Ziegler et al. 2019).
    """

    def __init__(self, reward_fn: Any, prompts: list[str], responses: list[str]):
        scores = torch.as_tensor(reward_fn(prompts, responses), dtype=torch.float64).cpu()
        self.reward_fn, self.mean, self.std = reward_fn, float(scores.mean()), float(scores.std().clamp(min=1e-6))

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        scores = torch.as_tensor(self.reward_fn(prompts, responses)).float()
        return (scores - self.mean) / self.std
