"""Text RLHF end to end: the run behind ``rlhf-gym text``, through the one preference loop.

    label completion pairs of the policy on training prompts (a text teacher, VADER sentiment by default; people in
    the web app; a preference dataset; or a mix)
      -> fit an LM reward model (a scalar head on a copy of the initial policy's backbone)
      -> improve the policy: PPO / GRPO / RLOO on TextGen-v0 (KL penalty to the frozen initial policy, learned reward),
         or DPO / KTO directly on the labelled pairs
      -> repeat for ``rounds`` (1 = offline: every label on the initial policy; more = online: labels asked on the
         current policy's completions)
      -> evaluate: oracle (teacher) score of sampled completions on held-out prompts before and after, KL to the
         reference, and the teacher-judged win rate of after over before.

The loop's text parts are in ``agents.loop.text.loop`` (agent, wiring) and ``agents.loop.text.pairs`` (pair sources,
labellers, reward models); the settings in ``agents.loop.text.config``, the context in ``agents.loop.text.context``;
the algorithms in ``agents.loop.text.algorithms`` (registry) and ``agents.loop.text.improve`` (drivers).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from agents.llm.base import save_checkpoint
from agents.loop.preference_loop import LoopCallback, PreferenceLoop
from agents.loop.text.config import TextRLHFConfig
from agents.loop.text.context import Evaluation, TextRLHFContext
from agents.loop.text.loop import POLICY_DIR, TextPolicyAgent, build_text_loop
from agents.loop.text.pairs import REWARD_DIR
from agents.rundir import RunDir, lock_run_dir
from rewardmodels.text.ensemble import LMRewardEnsemble

__all__ = [
    "Evaluation", "TextRLHFConfig", "TextRLHFContext", "TextRLHFResult", "build_text_loop",
    "print_samples", "run_text_loop", "run_text_rlhf",
]


class TextRLHFResult(NamedTuple):
    summary: dict[str, Any]
    before: Evaluation
    after: Evaluation
    run_dir: RunDir


def run_text_rlhf(
    config: TextRLHFConfig,
    out: str | Path,
    model: Any = None,
    tokenizer: Any = None,
    train_prompts: list[str] | None = None,
    eval_prompts: list[str] | None = None,
    teacher: Any = None,
    *,
    preferences: Any = None,
    labeller: Any = None,
    resume: bool = False,
    callbacks: Sequence[LoopCallback] = (),
) -> TextRLHFResult:
    """Run (or, with ``resume``, continue) text RLHF into run directory ``out`` through the preference loop
    (``agents.loop.text.loop``; ``config.rounds=1`` is the offline pipeline). Defaults: ``config.model`` else the
    offline default LM, its prompts, the VADER sentiment teacher. Writes config.json, metrics.jsonl, summary.json,
    curves.png, pairs.jsonl, checkpoints/, and the final ``policy/`` (``save_pretrained`` + tokenizer) and
    ``reward_model/`` (LM reward model(s); none for DPO / KTO). Holds ``out``'s lock throughout
    (``agents.rundir.lock_run_dir``: another process running in ``out`` raises ``RunDirBusy``)."""
    start = time.perf_counter()
    with lock_run_dir(out):  # RunDirBusy if another process runs in ``out``
        loop, agent = build_text_loop(config, out, model, tokenizer, train_prompts, eval_prompts, teacher,
                                      preferences=preferences, labeller=labeller, callbacks=callbacks)
        return run_text_loop(loop, agent, resume=resume, start=start)


def run_text_loop(loop: PreferenceLoop, agent: TextPolicyAgent, resume: bool = False,
                  start: float | None = None) -> TextRLHFResult:
    """Run a loop of :func:`build_text_loop` to its budgets; write the summary, the curves, ``policy/`` and
    ``reward_model/``."""
    with lock_run_dir(loop.run_dir.path):  # the loop's run and the outputs after it: one process per directory
        return _run_and_save(loop, agent, resume, time.perf_counter() if start is None else start)


def _run_and_save(loop: PreferenceLoop, agent: TextPolicyAgent, resume: bool, start: float) -> TextRLHFResult:
    config, ctx = agent.ctx.config, agent.ctx
    loop_summary = loop.run(resume=resume)
    before, after = agent.before, agent.after
    labels = ctx.teacher.label(after.prompts, after.responses, before.responses)  # 1 = after preferred
    summary: dict[str, Any] = {
        "algo": config.algo,
        "rounds": config.rounds,
        "oracle_score_before": before.oracle_score,
        "oracle_score_after": after.oracle_score,
        "oracle_score_gain": after.oracle_score - before.oracle_score,
        "kl_to_ref": float(after.kl_to_ref.mean()),
        "win_rate_vs_ref": float(np.nanmean(labels)),
        "labels_used": loop_summary["labels_used"],
        "pairs_total": len(loop.dataset) if loop.dataset is not None else 0,
        "eval_completions": len(ctx.eval_rows),
        "wall_s": time.perf_counter() - start,
        "finished": loop_summary["finished"],
        **agent.summary,
    }
    ensemble = _lm_ensemble(loop.reward_model)
    if ensemble is not None:
        summary.update({f"rm_{k}": v for k, v in ensemble.last_metrics.items()})
        summary.update(_learned_rewards(ensemble, before, after))
    _save_outputs(ctx, ensemble)
    ctx.run_dir.write_summary(summary)
    _plot(ctx.run_dir, config)
    ctx.run_dir.close()
    return TextRLHFResult(summary, before, after, ctx.run_dir)


def _lm_ensemble(reward_model: Any) -> LMRewardEnsemble | None:
    """The run's fitted LM reward ensemble, or None (DPO / KTO have none; a run stopped before its first fit)."""
    ensemble = getattr(reward_model, "ensemble", None)
    return ensemble if isinstance(ensemble, LMRewardEnsemble) and ensemble.members else None


def _learned_rewards(ensemble: LMRewardEnsemble, before: Evaluation, after: Evaluation) -> dict[str, float]:
    """The final learned reward (normalised) of the held-out completions before and after training."""
    fn = ensemble.predict_reward
    return {
        "learned_reward_before": float(torch.as_tensor(fn(before.prompts, before.responses)).float().mean()),
        "learned_reward_after": float(torch.as_tensor(fn(after.prompts, after.responses)).float().mean()),
    }


def _save_outputs(ctx: TextRLHFContext, ensemble: LMRewardEnsemble | None) -> None:
    """The trained policy (``save_pretrained`` + tokenizer) and the reward model(s), at the run directory's top."""
    save_checkpoint(ctx.run_dir.path / POLICY_DIR, ctx.policy, ctx.tokenizer, {}, {"algo": ctx.config.algo})
    if ensemble is not None:
        members = ensemble.members
        for k, member in enumerate(members):
            path = ctx.run_dir.path / REWARD_DIR
            member.reward_fn.save_pretrained(path if len(members) == 1 else path / f"member-{k}")


def _plot(run_dir: RunDir, config: TextRLHFConfig) -> None:
    reward_key = {"dpo": "losses/rewards/margin", "kto": "losses/rewards/desirable"}.get(config.algo, "env/score_mean")
    run_dir.plot(
        [
            ("reward (learned RM; DPO: implicit margin; KTO: desirable)", [reward_key]),
            ("oracle score (teacher)", ["eval/oracle_score"]),
            ("KL to reference", ["env/kl_to_ref", "eval/kl_to_ref"]),
            ("labels used", ["labels/used"]),
        ],
        title=f"rlhf-gym text --algo {config.algo} --rounds {config.rounds}",
    )


def print_samples(result: TextRLHFResult, n: int = 3) -> None:
    """Print ``n`` held-out prompts with a completion before and after training and their oracle scores."""
    step = max(1, len(result.before.prompts) // max(n, 1))
    for i in list(range(0, len(result.before.prompts), step))[:n]:
        print(f"prompt: {result.before.prompts[i]}")
        print(f"  before ({result.before.oracle_scores[i]:+.2f}): {result.before.responses[i]}")
        print(f"  after  ({result.after.oracle_scores[i]:+.2f}): {result.after.responses[i]}")
