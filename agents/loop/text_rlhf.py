"""Offline text RLHF end to end: the pipeline behind ``rlhf-gym text``.

    sample completion pairs from the initial policy on training prompts
      -> label them with a text teacher (VADER sentiment by default)
      -> train an LM reward model (a scalar head on a copy of the policy's backbone)
      -> improve the policy: PPO / GRPO / RLOO on TextGen-v0 (KL penalty to the frozen initial policy, learned reward),
         or DPO directly on the labelled pairs
      -> evaluate: oracle (teacher) score of sampled completions on held-out prompts before and after, KL to the
         reference, and the teacher-judged win rate of after over before.

The improvement step is looked up in :data:`IMPROVERS` (name -> ``"module:function"``), so other algorithms (e.g. the
SB3 ones) plug in from their own module: ``function(ctx: TextRLHFContext) -> dict`` trains ``ctx.policy`` in place,
may log to ``ctx.run_dir`` and call ``ctx.evaluate_and_log(step)``, and returns extra summary entries.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from agents.llm.base import _check
from agents.llm.rollout import collect_rollout
from agents.rundir import RunDir

logger = logging.getLogger(__name__)

# name -> "module:function" of the improvement step; other modules may add entries (see the module docstring).
IMPROVERS: dict[str, str] = {
    "ppo": "agents.loop.text_rlhf:improve_ppo",
    "grpo": "agents.loop.text_rlhf:improve_grpo",
    "rloo": "agents.loop.text_rlhf:improve_rloo",
    "dpo": "agents.loop.text_rlhf:improve_dpo",
    "sb3-ppo": "agents.sb3.text:improve_sb3_ppo",
    "sb3-a2c": "agents.sb3.text:improve_sb3_a2c",
}


def register_improver(name: str, spec: str) -> None:
    """Add (or replace) an improvement step: ``spec`` is ``"module:function"``, ``function(ctx) -> dict``."""
    module, sep, function = spec.partition(":")
    if not (sep and module and function):
        raise ValueError(f"spec must look like 'package.module:function', got {spec!r}")
    IMPROVERS[name] = spec


# Per-algorithm defaults of the demo on the default LM (tuned so that each finishes in a few minutes on 2 CPU cores).
ALGO_DEFAULTS: dict[str, dict[str, Any]] = {
    "ppo": {"iterations": 30, "learning_rate": 1e-4, "kl_coef": 0.05, "num_envs": 32},
    "grpo": {"iterations": 40, "learning_rate": 2e-4, "kl_coef": 0.04, "num_envs": 32, "group_size": 8},
    "rloo": {"iterations": 40, "learning_rate": 2e-4, "kl_coef": 0.05, "num_envs": 32, "group_size": 4},
    "dpo": {"iterations": 2, "learning_rate": 1e-4, "kl_coef": 0.1, "num_pairs": 512, "eval_every": 10},
    # SB3 runs get the native PPO budget in tokens (iterations * num_envs * max_new_tokens; see agents/sb3/text.py).
    "sb3-ppo": {"iterations": 40, "learning_rate": 1e-4, "kl_coef": 0.05, "num_envs": 32},
    "sb3-a2c": {"iterations": 40, "learning_rate": 1e-4, "kl_coef": 0.05, "num_envs": 32},
}


@dataclasses.dataclass
class TextRLHFConfig:
    """Settings of the end-to-end text RLHF pipeline (``TextRLHFConfig.for_algo`` fills per-algorithm defaults)."""

    algo: str = "ppo"
    """Improvement step: a key of ``IMPROVERS`` (ppo, grpo, rloo, dpo, ...)."""
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
    """RL iterations (collect + update), or DPO epochs over the pairs."""
    learning_rate: float = 1e-4
    """Policy learning rate."""
    kl_coef: float = 0.05
    """KL coefficient beta (PPO/RLOO: in the reward; GRPO: in the loss; DPO: its beta)."""
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
        _check(self.algo in IMPROVERS, f"algo must be one of {sorted(IMPROVERS)}, got {self.algo!r}")
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
        from textenv import TextGenVectorEnv

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


class TextRLHFResult(NamedTuple):
    summary: dict[str, Any]
    before: Evaluation
    after: Evaluation
    run_dir: RunDir


def resolve_improver(algo: str) -> Callable[[TextRLHFContext], dict]:
    spec = IMPROVERS.get(algo)
    if spec is None:
        raise ValueError(f"unknown algo {algo!r}; choose one of {sorted(IMPROVERS)}")
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"algo {algo!r} is registered as {spec}, which cannot be imported ({exc})") from exc


def sample_pairs(ctx: TextRLHFContext, n_pairs: int):
    """Label ``n_pairs`` pairs of completions of the initial policy on training prompts with the teacher.

    Both completions of a pair answer the same prompt (one rollout of a vector env whose rows come in twos). Pairs
    with an empty or identical response carry no preference and are resampled.
    """
    from rewardmodels.text_preferences import TextPreferencePairs

    cfg = ctx.config
    rng = np.random.default_rng(cfg.seed)
    rows_per_batch = 2 * min(64, n_pairs)
    env = ctx.make_env(rows_per_batch, 1.0, None)
    gen = torch.Generator(device=ctx.device).manual_seed(cfg.seed)
    prompts: list[str] = []
    a: list[str] = []
    b: list[str] = []
    for attempt in range(50):
        chosen = rng.choice(len(ctx.train_prompts), size=rows_per_batch // 2)
        rows = [ctx.train_prompts[i] for i in chosen for _ in range(2)]
        batch = collect_rollout(env, prompts=rows, seed=cfg.seed + attempt, generator=gen)
        for i in range(0, rows_per_batch, 2):
            ra, rb = batch.responses[i], batch.responses[i + 1]
            if ra.strip() and rb.strip() and ra.strip() != rb.strip() and len(prompts) < n_pairs:
                prompts.append(rows[i])
                a.append(ra)
                b.append(rb)
        if len(prompts) >= n_pairs:
            break
    labels = ctx.teacher.label(prompts, a, b)
    return TextPreferencePairs(prompts, a, b, labels)


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


def train_lm_reward_model(ctx: TextRLHFContext) -> tuple[Any, dict[str, float]]:
    """A scalar head on a copy of the policy's backbone, fitted with Bradley-Terry on ``ctx.pairs``; returned
    normalised on the pairs' responses (samples of the initial policy, see :class:`NormalizedReward`)."""
    from rewardmodels.lm_reward import LMRewardModel, train_reward_model

    cfg = ctx.config
    pairs = ctx.pairs.labelled()
    n_val = int(round(len(pairs) * cfg.rm_val_fraction))
    order = np.random.default_rng(cfg.seed).permutation(len(pairs))
    val, train = pairs[order[:n_val]], pairs[order[n_val:]]
    model = LMRewardModel(
        copy.deepcopy(ctx.ref_model).requires_grad_(True), ctx.tokenizer, policy_tokenizer=ctx.tokenizer
    )
    step_offset = 0

    def log(step: int, metrics: dict[str, float]) -> None:
        ctx.run_dir.log(step_offset + step, metrics)

    result = train_reward_model(
        model,
        train,
        epochs=cfg.rm_epochs,
        lr=cfg.rm_learning_rate,
        batch_size=cfg.rm_batch_size,
        seed=cfg.seed,
        eval_pairs=val if n_val else None,
        log_fn=log,
    )
    model.eval().requires_grad_(False)
    data = ctx.pairs
    normalized = NormalizedReward(model, data.prompts * 2, data.responses_a + data.responses_b)
    result.update({"reward_norm_mean": normalized.mean, "reward_norm_std": normalized.std})
    return normalized, result


def run_text_rlhf(
    config: TextRLHFConfig,
    out: str | Path,
    model: Any = None,
    tokenizer: Any = None,
    train_prompts: list[str] | None = None,
    eval_prompts: list[str] | None = None,
    teacher: Any = None,
) -> TextRLHFResult:
    """Run the pipeline into run directory ``out``; defaults: the offline default LM, its train/test prompts and the
    VADER sentiment teacher. Writes config.json, metrics.jsonl, summary.json, curves.png and checkpoints/."""
    start = time.perf_counter()
    improve = resolve_improver(config.algo)
    torch.manual_seed(config.seed)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if model is None:
        from textenv.default_lm import default_prompts, load_default_lm

        model, tokenizer = load_default_lm(device=device)
        train_prompts = train_prompts or default_prompts("train")
        eval_prompts = eval_prompts or default_prompts("test")
    if tokenizer is None or not train_prompts or not eval_prompts:
        raise ValueError("with a custom model, pass its tokenizer, train_prompts and eval_prompts too")
    if teacher is None:
        from rewardmodels.text_teachers import SentimentTeacher

        teacher = SentimentTeacher(beta=config.teacher_beta, seed=config.seed)
    model = model.to(device)
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    run_dir = RunDir(out)
    run_dir.write_config(config)
    eval_list = list(eval_prompts)[: config.eval_prompts]
    eval_rows = [p for p in eval_list for _ in range(config.eval_samples)]
    ctx = TextRLHFContext(
        config, model, ref, tokenizer, teacher, None, None, list(train_prompts), eval_rows, run_dir, device
    )
    before = ctx.evaluate_and_log(0)
    ctx.pairs = sample_pairs(ctx, config.num_pairs)
    ctx.pairs.save(run_dir.path / "pairs.jsonl")
    extra: dict[str, Any] = {}
    if config.algo != "dpo":
        ctx.reward_model, rm_metrics = train_lm_reward_model(ctx)
        extra.update({f"rm_{k}": v for k, v in rm_metrics.items()})
    improve_start = time.perf_counter()
    extra.update(improve(ctx) or {})
    extra["improve_wall_s"] = time.perf_counter() - improve_start  # the policy-improvement stage alone
    after = ctx.evaluate_and_log(int(extra.pop("final_step", config.iterations)))
    labels = teacher.label(after.prompts, after.responses, before.responses)  # 1 = after preferred
    summary = {
        "algo": config.algo,
        "oracle_score_before": before.oracle_score,
        "oracle_score_after": after.oracle_score,
        "oracle_score_gain": after.oracle_score - before.oracle_score,
        "kl_to_ref": float(after.kl_to_ref.mean()),
        "win_rate_vs_ref": float(np.nanmean(labels)),
        "labels_used": len(ctx.pairs),
        "eval_completions": len(eval_rows),
        "wall_s": time.perf_counter() - start,
        **extra,
    }
    run_dir.write_summary(summary)
    reward_key = "losses/rewards/margin" if config.algo == "dpo" else "env/score_mean"
    run_dir.plot(
        [
            ("reward (learned RM; DPO: implicit margin)", [reward_key]),
            ("oracle score (VADER)", ["eval/oracle_score"]),
            ("KL to reference", ["env/kl_to_ref", "eval/kl_to_ref"]),
        ],
        title=f"rlhf-gym text --algo {config.algo}",
    )
    run_dir.close()
    return TextRLHFResult(summary, before, after, run_dir)


def print_samples(result: TextRLHFResult, n: int = 3) -> None:
    """Print ``n`` held-out prompts with a completion before and after training and their oracle scores."""
    step = max(1, len(result.before.prompts) // max(n, 1))
    for i in list(range(0, len(result.before.prompts), step))[:n]:
        print(f"prompt: {result.before.prompts[i]}")
        print(f"  before ({result.before.oracle_scores[i]:+.2f}): {result.before.responses[i]}")
        print(f"  after  ({result.after.oracle_scores[i]:+.2f}): {result.after.responses[i]}")


# ----------------------------------------------------------------------------------------------- improvement steps
def _agent_config(cls, ctx: TextRLHFContext, **fields: Any):
    cfg = ctx.config
    return cls(
        **{
            "learning_rate": cfg.learning_rate,
            "kl_coef": cfg.kl_coef,
            "iterations": cfg.iterations,
            "seed": cfg.seed,
            **fields,
            **cfg.extra,
        }
    )


def improve_ppo(ctx: TextRLHFContext) -> dict:
    from agents.llm.ppo import PPOAgent, PPOConfig

    cfg = ctx.config
    env = ctx.make_env(cfg.num_envs, cfg.kl_coef, ctx.reward_model)
    agent = PPOAgent(env, _agent_config(PPOConfig, ctx), ctx.run_dir, reward_model=ctx.reward_model)
    agent.learn(callback=ctx.eval_callback())
    return {"tokens_seen": agent.tokens_seen}


def _improve_grouped(ctx: TextRLHFContext, agent_cls, config_cls) -> dict:
    cfg = ctx.config
    if cfg.num_envs % cfg.group_size:
        raise ValueError(f"num_envs={cfg.num_envs} must be a multiple of group_size={cfg.group_size}")
    env = ctx.make_env(cfg.num_envs, cfg.kl_coef, ctx.reward_model)
    config = _agent_config(config_cls, ctx, group_size=cfg.group_size, prompts_per_step=cfg.num_envs // cfg.group_size)
    agent = agent_cls(env, config, ctx.run_dir)
    agent.learn(callback=ctx.eval_callback())
    return {"tokens_seen": agent.tokens_seen}


def improve_grpo(ctx: TextRLHFContext) -> dict:
    from agents.llm.grpo import GRPOAgent, GRPOConfig

    return _improve_grouped(ctx, GRPOAgent, GRPOConfig)


def improve_rloo(ctx: TextRLHFContext) -> dict:
    from agents.llm.rloo import RLOOAgent, RLOOConfig

    return _improve_grouped(ctx, RLOOAgent, RLOOConfig)


def improve_dpo(ctx: TextRLHFContext) -> dict:
    from agents.llm.dpo import DPOConfig, DPOTrainer

    cfg = ctx.config
    fields = {
        "beta": cfg.kl_coef,
        "learning_rate": cfg.learning_rate,
        "epochs": cfg.iterations,
        "seed": cfg.seed,
        **cfg.extra,
    }
    trainer = DPOTrainer(
        ctx.policy, ctx.tokenizer, ctx.pairs, DPOConfig(**fields), ref_model=ctx.ref_model, run_dir=ctx.run_dir
    )
    trainer.learn(callback=ctx.eval_callback())
    return {"final_step": trainer.step, "dpo_steps": trainer.step, **trainer.evaluate()}
