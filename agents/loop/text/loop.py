"""Text RLHF through the one preference loop: ``TextRLHFConfig`` -> a wired ``PreferenceLoop`` on ``TextGen-v0``.

One round of ``PreferenceLoop.run`` for text::

    agent.learn(k)               k improvement iterations of the policy on the current learned reward (PPO / GRPO /
                                 RLOO / SB3 on TextGen-v0 with the KL penalty to the initial model; DPO / KTO: epochs
                                 over every labelled pair so far)
    source.candidates(n)         n pairs of completions of the CURRENT policy, two per training prompt
    reward_model.select          all of them, or the ones the reward ensemble disagrees on most
    source.label(labeller, ...)  teacher | people in the web app | both | the pairs of a preference dataset
    reward_model.fit             Bradley-Terry LM reward model(s) refitted on every label so far

``rounds=1`` is the offline pipeline: every label on the initial policy's completions, then one improvement.
``TextPolicyAgent`` is the loop's ``Agent``: it runs the run's algorithm (``agents.loop.text.improve``) for this
round's iterations; the pair sources and reward models are in ``agents.loop.text.pairs``. The loop owns the run
directory: the round's agent writes nothing of its own, its metrics reach ``metrics.jsonl`` through ``ctx.log``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from agents.llm.base import save_checkpoint
from agents.loop.preference_loop import LoopCallback, PreferenceLoop
from agents.loop.reward_model import EnsembleRewardModel
from agents.loop.text.config import TextRLHFConfig
from agents.loop.text.context import Evaluation, TextRLHFContext
from agents.loop.text.improve import improve
from agents.loop.text.pairs import (
    CompletionPairSource,
    DatasetPairSource,
    PairsAsReward,
)
from agents.rundir import RunDir
from rewardmodels.text.ensemble import LMRewardEnsemble
from rewardmodels.text.preferences import TextPreferencePairs, load_text_preferences
from rewardmodels.text.teachers import SentimentTeacher
from textenv.default_lm import default_prompts
from textenv.lora import LoraSettings, apply_lora, is_peft_model, load_adapter_weights, reference_view
from textenv.models import load_policy
from textenv.prompts import is_chat, read_prompts, render_chat

logger = logging.getLogger(__name__)

POLICY_DIR = "policy"


def _evaluation_json(ev: Evaluation) -> dict[str, Any]:
    return {"prompts": ev.prompts, "responses": ev.responses, "oracle_scores": ev.oracle_scores.tolist(),
            "kl_to_ref": ev.kl_to_ref.tolist()}


class TextPolicyAgent:
    """The loop's ``Agent`` for text: ``learn(k)`` runs the run's algorithm for k iterations (DPO / KTO: epochs) on
    ``ctx.policy`` in place; ``evaluate`` is the oracle (teacher) score of completions on the held-out prompts.

    Each round's improvement step seeds with ``seed + 1000 * round`` (round 1: the run's seed, as the offline
    pipeline), so rounds draw different prompts and tokens. ``source`` counts the iterations as the loop's steps.
    """

    def __init__(self, ctx: TextRLHFContext, source: CompletionPairSource):
        self.ctx, self.source = ctx, source
        self.rounds_done = 0
        self.step = 0  # the improvement steps' log axis so far (iterations; DPO / KTO: gradient steps)
        self.summary: dict[str, float] = {}
        self.before: Evaluation | None = None
        self._eval: tuple[int, Evaluation] | None = None

    def learn(self, n_steps: int, max_steps: int | None = None) -> dict[str, float]:
        its = int(min(n_steps, max_steps if max_steps is not None else n_steps))
        cfg = dataclasses.replace(self.ctx.config, iterations=its, rounds=1,
                                  seed=self.ctx.config.seed + 1000 * self.rounds_done)
        start = time.perf_counter()
        round_ctx = dataclasses.replace(self.ctx, config=cfg, step_offset=self.step,
                                        improve_clock=start - self.summary.get("improve_wall_s", 0.0))
        out = dict(improve(round_ctx) or {})
        wall = time.perf_counter() - start
        self.step += int(out.pop("final_step", its))
        self.source.env_steps += its
        self.rounds_done += 1
        out = {k: float(v) for k, v in out.items() if isinstance(v, (int, float))}
        self.summary["improve_wall_s"] = self.summary.get("improve_wall_s", 0.0) + wall
        for key, value in out.items():  # tokens add up over rounds; the rest is the last round's
            self.summary[key] = self.summary.get(key, 0.0) + value if key == "tokens_seen" else value
        return {"agent/improve_wall_s": wall, **{k if "/" in k else f"agent/{k}": v for k, v in out.items()}}

    def set_reward_fn(self, reward_fn: Any) -> None:
        if self.ctx.config.algorithm.offline:
            self.ctx.pairs = reward_fn  # DPO / KTO learn from the labelled pairs (PairsAsReward)
        else:
            self.ctx.reward_model = reward_fn
        return None

    def evaluate(self, n_episodes: int = 1) -> np.ndarray:
        """Oracle scores (B,) of the held-out completions of the current policy, logged as ``eval/oracle_score``
        once per policy (``n_episodes`` is unused: the held-out set is fixed, with common random numbers)."""
        if self._eval is None or self._eval[0] != self.step:
            self._eval = (self.step, self.ctx.evaluate_and_log(self.step))
        return self._eval[1].oracle_scores

    @property
    def after(self) -> Evaluation:
        self.evaluate()
        return self._eval[1]

    def save(self, directory: Path) -> None:
        state = {"rounds_done": self.rounds_done, "step": self.step, "summary": self.summary,
                 "before": _evaluation_json(self.before) if self.before is not None else None}
        save_checkpoint(Path(directory) / POLICY_DIR, self.ctx.policy, self.ctx.tokenizer, {}, state)

    def load(self, directory: Path) -> None:
        path = Path(directory) / POLICY_DIR
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        if is_peft_model(self.ctx.policy):  # the checkpoint holds the adapters only
            load_adapter_weights(self.ctx.policy, path)
        else:
            saved = AutoModelForCausalLM.from_pretrained(path)
            self.ctx.policy.load_state_dict(saved.state_dict())
        self.rounds_done, self.step, self.summary = state["rounds_done"], state["step"], state["summary"]
        if state["before"] is not None:
            b = state["before"]
            self.before = Evaluation(b["prompts"], b["responses"], np.asarray(b["oracle_scores"]),
                                     np.asarray(b["kl_to_ref"]))


class _EvaluateBefore(LoopCallback):
    """The held-out evaluation of the initial policy, at step 0, before any label (kept in the checkpoints)."""

    def __init__(self, agent: TextPolicyAgent):
        self.agent = agent

    def on_start(self, loop: PreferenceLoop) -> None:
        if self.agent.before is None:
            self.agent.before = self.agent.ctx.evaluate_and_log(0)


def load_preferences(source: Any, tokenizer: Any = None) -> TextPreferencePairs:
    """Preference pairs from a file, a ``datasets.Dataset`` or pairs (``rewardmodels.text.preferences``'s loader:
    TRL standard, conversational and implicit-prompt records, chat templates applied with ``tokenizer``)."""
    if isinstance(source, TextPreferencePairs):
        return source
    return load_text_preferences(source, tokenizer=tokenizer)


def make_text_labeller(cfg: TextRLHFConfig, out: str | Path, teacher: Any) -> Any:
    """The simulated teacher, people in the web app (``HumanLabeller`` on ``out``), or both, per ``cfg.labeller``
    (``dataset``: no labeller is asked; the teacher stands in)."""
    if cfg.labeller in ("teacher", "dataset"):
        return teacher
    from rewardmodels.feedback.human import HumanLabeller, MixedLabeller

    human = HumanLabeller(out, timeout=cfg.label_timeout, on_timeout="raise" if cfg.label_timeout is None else "nan",
                          progress=cfg.progress_bar)
    return human if cfg.labeller == "human" else MixedLabeller(human, teacher, cfg.human_fraction, cfg.seed)


def _split_prompts(prompts: list[str], n_eval: int) -> tuple[list[str], list[str]]:
    """Hold out the last ``n_eval`` prompts for evaluation when there are at least twice as many; else evaluate on
    the training prompts (a warning says so)."""
    if len(prompts) >= 2 * n_eval:
        return prompts[:-n_eval], prompts[-n_eval:]
    logger.warning("only %d prompts: the policy is evaluated on its training prompts (give >= %d to hold out %d)",
                   len(prompts), 2 * n_eval, n_eval)
    return prompts, prompts[:n_eval]


def _inputs(cfg: TextRLHFConfig, device: torch.device, model, tokenizer, train_prompts, eval_prompts):
    """Policy, tokenizer and prompts: the arguments, else ``cfg.model`` / ``cfg.prompts``, else the default LM."""
    if model is None:
        model, tokenizer = load_policy(cfg.model, cfg.tokenizer, device)
        if cfg.prompts is not None and not train_prompts:
            # Chat prompts (message lists) as the text of the template, as preference files are read: pairs, reward
            # model and people all see the prompt the policy continues.
            prompts = [render_chat(p, tokenizer) if is_chat(p) else p for p in read_prompts(cfg.prompts)]
            train_prompts, split_eval = _split_prompts(prompts, cfg.eval_prompts)
            eval_prompts = eval_prompts or split_eval
        elif cfg.model is None:
            train_prompts = train_prompts or default_prompts("train")
            eval_prompts = eval_prompts or default_prompts("test")
    if tokenizer is None or not train_prompts or not eval_prompts:
        raise ValueError("with a custom model, pass its tokenizer, train_prompts and eval_prompts too")
    return model.to(device), tokenizer, list(train_prompts), list(eval_prompts)


def build_text_loop(config: TextRLHFConfig, out: str | Path, model: Any = None, tokenizer: Any = None,
                    train_prompts: Sequence[str] | None = None, eval_prompts: Sequence[str] | None = None,
                    teacher: Any = None, preferences: Any = None, labeller: Any = None,
                    callbacks: Sequence[LoopCallback] = ()) -> tuple[PreferenceLoop, TextPolicyAgent]:
    """Wire policy, frozen reference, pair source, reward model, labeller and agent into a ``PreferenceLoop``
    writing to ``out``. Defaults: ``config.model`` (else the offline default LM), its prompts, the VADER sentiment
    teacher (the labeller, and the oracle of every evaluation), ``config.preferences``, ``config.labeller``."""
    torch.manual_seed(config.seed)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, tokenizer, train_prompts, eval_prompts = _inputs(config, device, model, tokenizer, train_prompts,
                                                            eval_prompts)
    teacher = teacher if teacher is not None else SentimentTeacher(beta=config.teacher_beta, seed=config.seed)
    source_pairs = preferences if preferences is not None else config.preferences
    prefs = load_preferences(source_pairs, tokenizer) if source_pairs is not None else None
    if config.labeller == "dataset":
        if prefs is None:
            raise ValueError("labeller='dataset' needs preference pairs: pass preferences= or config.preferences")
        if config.num_pairs > len(prefs):
            logger.info("label budget %d > the %d pairs of the dataset: using them all", config.num_pairs, len(prefs))
            config = dataclasses.replace(config, num_pairs=len(prefs))
    lora = config.extra.get("lora")
    if lora is not None:  # LoRA: adapters on the policy; the reference is its base with them disabled (no copy)
        if config.algo.startswith("sb3-"):
            raise ValueError(f"lora is for the native agents (ppo, grpo, rloo, dpo, kto), not {config.algo}")
        model = apply_lora(model, lora if isinstance(lora, LoraSettings) else LoraSettings(**lora))
        ref = reference_view(model)
    else:
        ref = copy.deepcopy(model).eval().requires_grad_(False)
    run_dir = RunDir(out)
    eval_rows = [p for p in eval_prompts[: config.eval_prompts] for _ in range(config.eval_samples)]
    ctx = TextRLHFContext(config, model, ref, tokenizer, teacher, None, None, train_prompts, eval_rows, run_dir,
                          device)
    if config.labeller == "dataset":
        source: CompletionPairSource = DatasetPairSource(ctx, prefs)
    else:
        oracle = teacher if config.labeller in ("teacher", "mixed") else None
        source = CompletionPairSource(ctx, seed_pairs=prefs, oracle=oracle)
    offline = config.algorithm.offline
    reward_model = PairsAsReward(ctx) if offline else EnsembleRewardModel(LMRewardEnsemble(
        ref, tokenizer, config.rm_ensemble, seed=config.seed, epochs=config.rm_epochs,
        learning_rate=config.rm_learning_rate, batch_size=config.rm_batch_size, val_fraction=config.rm_val_fraction,
        device=device, log=run_dir.log), shuffle_full_draw=False)
    agent = TextPolicyAgent(ctx, source)
    labeller = labeller if labeller is not None else make_text_labeller(config, out, teacher)
    title = f"rlhf-gym text --algo {config.algo} --rounds {config.rounds} (seed {config.seed})"
    loop = PreferenceLoop(config, agent, source, reward_model, labeller, run_dir,
                          callbacks=[_EvaluateBefore(agent), *callbacks], title=title)
    return loop, agent
