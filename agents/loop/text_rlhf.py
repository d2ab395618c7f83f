"""Offline text RLHF end to end: the pipeline behind ``rlhf-gym text``.

    sample completion pairs from the initial policy on training prompts
      -> label them with a text teacher (VADER sentiment by default)
      -> train an LM reward model (a scalar head on a copy of the policy's backbone)
      -> improve the policy: PPO / GRPO / RLOO on TextGen-v0 (KL penalty to the frozen initial policy, learned reward),
         or DPO directly on the labelled pairs
      -> evaluate: oracle (teacher) score of sampled completions on held-out prompts before and after, KL to the
         reference, and the teacher-judged win rate of after over before.

The settings and the context the improvement step gets are in ``agents.loop.text_context``; the improvement steps,
native and SB3, in ``agents.loop.text_improvers.IMPROVERS``.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from agents.llm.rollout import collect_rollout
from agents.loop.text_context import (
    ALGO_DEFAULTS,
    OFFLINE_ALGOS,
    Evaluation,
    NormalizedReward,
    TextRLHFConfig,
    TextRLHFContext,
)
from agents.loop.text_improvers import IMPROVERS
from agents.rundir import RunDir
from rewardmodels.lm_reward import LMRewardModel, train_reward_model
from rewardmodels.text_preferences import TextPreferencePairs
from rewardmodels.text_teachers import SentimentTeacher
from textenv.default_lm import default_prompts, load_default_lm

__all__ = [
    "ALGO_DEFAULTS", "IMPROVERS", "OFFLINE_ALGOS", "Evaluation", "NormalizedReward", "TextRLHFConfig",
    "TextRLHFContext", "TextRLHFResult", "print_samples", "run_text_rlhf", "sample_pairs", "train_lm_reward_model",
]


class TextRLHFResult(NamedTuple):
    summary: dict[str, Any]
    before: Evaluation
    after: Evaluation
    run_dir: RunDir


def sample_pairs(ctx: TextRLHFContext, n_pairs: int):
    """Label ``n_pairs`` pairs of completions of the initial policy on training prompts with the teacher.

    Both completions of a pair answer the same prompt (one rollout of a vector env whose rows come in twos). Pairs
    with an empty or identical response carry no preference and are resampled.
    """
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


def train_lm_reward_model(ctx: TextRLHFContext) -> tuple[Any, dict[str, float]]:
    """A scalar head on a copy of the policy's backbone, fitted with Bradley-Terry on ``ctx.pairs``; returned
    normalised on the pairs' responses (samples of the initial policy, see :class:`NormalizedReward`)."""
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
    improve = IMPROVERS[config.algo]
    torch.manual_seed(config.seed)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if model is None:
        model, tokenizer = load_default_lm(device=device)
        train_prompts = train_prompts or default_prompts("train")
        eval_prompts = eval_prompts or default_prompts("test")
    if tokenizer is None or not train_prompts or not eval_prompts:
        raise ValueError("with a custom model, pass its tokenizer, train_prompts and eval_prompts too")
    if teacher is None:
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
    if config.algo not in OFFLINE_ALGOS:
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
    reward_key = {"dpo": "losses/rewards/margin", "kto": "losses/rewards/desirable"}.get(config.algo, "env/score_mean")
    run_dir.plot(
        [
            ("reward (learned RM; DPO: implicit margin; KTO: desirable)", [reward_key]),
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
