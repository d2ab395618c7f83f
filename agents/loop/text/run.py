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
from agents.rundir import RunDir, lock_run_dir, prepare_out
from rewardmodels.text.ensemble import LMRewardEnsemble

__all__ = [
    "Evaluation", "TextRLHFConfig", "TextRLHFContext", "TextRLHFResult", "build_text_loop",
    "judged", "print_samples", "result_line", "run_text_loop", "run_text_rlhf",
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
    ``reward_model/`` (LM reward model(s); none for DPO / KTO). A fresh run (not ``resume``) refuses a directory
    that holds an earlier run's files (``agents.rundir.RunDirError``), as ``run_prefs`` does. Holds ``out``'s lock
    throughout (``agents.rundir.lock_run_dir``: another process running in ``out`` raises ``RunDirBusy``)."""
    start = time.perf_counter()
    with lock_run_dir(out):  # RunDirBusy if another process runs in ``out``
        if not resume:  # never appended to an earlier run's files (prepare_out(out, overwrite=True) moves them aside)
            prepare_out(out)
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
    ensemble = _lm_ensemble(loop.reward_model)
    summary: dict[str, Any] = {
        "algo": config.algo,
        "rounds": config.rounds,
        "kl_to_ref": float(after.kl_to_ref.mean()),
        "labels_used": loop_summary["labels_used"],
        "pairs_total": len(loop.dataset) if loop.dataset is not None else 0,
        "eval_completions": len(ctx.eval_rows),
        "wall_s": time.perf_counter() - start,
        "finished": loop_summary["finished"],
        **agent.summary,
        **judged(ctx, loop, ensemble, before, after),
    }
    if ensemble is not None:
        summary.update({f"rm_{k}": v for k, v in ensemble.last_metrics.items()})
    _save_outputs(ctx, ensemble)
    ctx.run_dir.write_summary(summary)
    _plot(ctx.run_dir, config, ctx.teacher is not None)
    ctx.run_dir.close()
    return TextRLHFResult(summary, before, after, ctx.run_dir)


def judged(ctx: TextRLHFContext, loop: PreferenceLoop, ensemble: LMRewardEnsemble | None, before: Evaluation,
           after: Evaluation) -> dict[str, Any]:
    """How good the trained policy is, by whom, named as such. A simulated teacher that labelled the run is the
    gold: ``oracle_score_*`` and ``win_rate_vs_ref`` (after vs before on held-out prompts). A teacher given but not
    asked for labels: ``teacher_score_*``. With people or a dataset there is no gold: the final reward model judges
    (``learned_reward_*``, ``rm_win_rate_vs_ref``), and what was measured on the labels themselves is reported:
    the accuracy on the dataset's held-out pairs (``heldout_preference_accuracy``; DPO / KTO: their implicit reward)
    and the agreement of people's last labels with the reward model before it saw them (``new_label_agreement``)."""
    out: dict[str, Any] = {}
    if ctx.teacher is not None:
        gold = ctx.config.labeller in ("teacher", "mixed") and ctx.config.num_pairs > 0
        prefix, win = ("oracle", "win_rate_vs_ref") if gold else ("teacher", "teacher_win_rate_vs_ref")
        wins = ctx.teacher.label(after.prompts, after.responses, before.responses)  # 1 = after preferred
        out.update({f"{prefix}_score_before": before.oracle_score, f"{prefix}_score_after": after.oracle_score,
                    f"{prefix}_score_gain": after.oracle_score - before.oracle_score, win: float(np.nanmean(wins))})
        out["judge"] = "teacher (labelled the run: the oracle)" if gold else "teacher (did not label this run)"
    if ensemble is not None:
        b = torch.as_tensor(ensemble.predict_reward(before.prompts, before.responses)).double()
        a = torch.as_tensor(ensemble.predict_reward(after.prompts, after.responses)).double()
        out.update({"learned_reward_before": float(b.mean()), "learned_reward_after": float(a.mean()),
                    "rm_win_rate_vs_ref": float(((a > b).double() + 0.5 * (a == b).double()).mean())})
        out.setdefault("judge", "reward model (the run's final fit)")
    if ctx.reward_fns is not None:  # given reward functions judge too (e.g. a verifiable answer check)
        fb = ctx.reward_fns(before.prompts, before.responses)
        fa = ctx.reward_fns(after.prompts, after.responses)
        out.update({"reward_functions_before": float(np.mean(fb)), "reward_functions_after": float(np.mean(fa))})
        out.setdefault("judge", f"reward functions ({ctx.reward_fns.__name__})")
    heldout = getattr(loop.source, "heldout", None)
    if heldout is not None and len(heldout.strict()):
        strict = heldout.strict()
        probs = loop.reward_model.preference_probs(strict)
        out["heldout_preference_accuracy"] = float(((probs > 0.5) == (strict.labels > 0.5)).mean())
        out["heldout_pairs"] = len(strict)
    agreement = [row["reward_model/heldout_accuracy"] for row in ctx.run_dir.read_metrics()
                 if "reward_model/heldout_accuracy" in row]
    if agreement and ctx.config.labeller in ("human", "mixed"):
        out["new_label_agreement"] = agreement[-1]
    out.setdefault("judge", "none (held-out pairs only)" if "heldout_preference_accuracy" in out else "none")
    return out


def _lm_ensemble(reward_model: Any) -> LMRewardEnsemble | None:
    """The run's fitted LM reward ensemble, or None (DPO / KTO have none; a run stopped before its first fit)."""
    ensemble = getattr(reward_model, "ensemble", None)
    return ensemble if isinstance(ensemble, LMRewardEnsemble) and ensemble.members else None


def _save_outputs(ctx: TextRLHFContext, ensemble: LMRewardEnsemble | None) -> None:
    """The trained policy (``save_pretrained`` + tokenizer) and the reward model(s), at the run directory's top."""
    save_checkpoint(ctx.run_dir.path / POLICY_DIR, ctx.policy, ctx.tokenizer, {}, {"algo": ctx.config.algo})
    if ensemble is not None:
        members = ensemble.members
        for k, member in enumerate(members):
            path = ctx.run_dir.path / REWARD_DIR
            member.reward_fn.save_pretrained(path if len(members) == 1 else path / f"member-{k}")


def _plot(run_dir: RunDir, config: TextRLHFConfig, teacher: bool) -> None:
    reward_key = {"dpo": "losses/rewards/margin", "kto": "losses/rewards/desirable"}.get(config.algo, "env/score_mean")
    panels = [("reward (learned RM; DPO: implicit margin; KTO: desirable)", [reward_key])]
    if teacher:  # no simulated judge with people or a dataset: no such curve
        panels.append(("oracle score (teacher)" if config.labeller in ("teacher", "mixed") else "teacher score",
                       ["eval/oracle_score"]))
    if not config.algorithm.offline:  # Gao et al. 2022's picture: gold and proxy against sqrt(KL to the reference)
        gold = ["eval/oracle_score"] if teacher else []
        panels.append(("gold (teacher) and proxy (reward model) vs sqrt KL", [*gold, "eval/proxy_score"],
                       "eval/sqrt_kl"))
    if config.labeller in ("human", "mixed"):  # no gold: the signal people can see
        panels.append(("reward model vs new labels", ["reward_model/heldout_accuracy", "reward_model/accuracy"]))
    panels += [("KL to reference", ["env/kl_to_ref", "eval/kl_to_ref"]), ("labels used", ["labels/used"])]
    run_dir.plot(panels, title=f"rlhf-gym text --algo {config.algo} --rounds {config.rounds}")


def result_line(result: TextRLHFResult, out: Path | str) -> str:
    """The one line a command prints at the end of a text run: the judge's verdict, named as such, and the outputs."""
    s = result.summary
    if "oracle_score_after" in s:
        verdict = (f"oracle (the teacher that labelled) score {s['oracle_score_before']:+.3f} -> "
                   f"{s['oracle_score_after']:+.3f}, win rate vs ref {s['win_rate_vs_ref']:.2f}")
    elif "teacher_score_after" in s:
        verdict = (f"teacher score (it did not label) {s['teacher_score_before']:+.3f} -> "
                   f"{s['teacher_score_after']:+.3f}")
    elif "learned_reward_after" in s:
        verdict = (f"reward model (no gold judge) {s['learned_reward_before']:+.3f} -> "
                   f"{s['learned_reward_after']:+.3f}, win rate vs ref by the reward model "
                   f"{s['rm_win_rate_vs_ref']:.2f}")
    else:
        verdict = "no judge of completions"
    if "reward_functions_after" in s:
        verdict = ("" if verdict.startswith("no judge") else verdict + ", ") + (
            f"reward functions {s['reward_functions_before']:+.3f} -> {s['reward_functions_after']:+.3f}")
    if "heldout_preference_accuracy" in s:
        verdict += f", held-out preference accuracy {s['heldout_preference_accuracy']:.2f} ({s['heldout_pairs']} pairs)"
    outputs = [f"{out}/summary.json", f"{out}/policy"]
    if "learned_reward_after" in s:  # DPO / KTO write no reward model
        outputs.append(f"{out}/reward_model")
    return (f"{s['algo']}, {s['rounds']} round(s): {verdict}, KL to ref {s['kl_to_ref']:.2f}, {s['labels_used']} "
            f"labels, {s['wall_s']:.0f} s -> {', '.join(outputs)}")


def print_samples(result: TextRLHFResult, n: int = 3) -> None:
    """Print ``n`` held-out prompts with a completion before and after training (and the teacher's scores, if a
    teacher judged them)."""
    scored = any(k in result.summary for k in ("oracle_score_after", "teacher_score_after"))
    step = max(1, len(result.before.prompts) // max(n, 1))
    for i in list(range(0, len(result.before.prompts), step))[:n]:
        print(f"prompt: {result.before.prompts[i]}")
        for name, ev in (("before", result.before), ("after ", result.after)):
            score = f" ({ev.oracle_scores[i]:+.2f})" if scored else ""
            print(f"  {name}{score}: {ev.responses[i]}")
