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
from agents.loop.text.improve import make_learner
from agents.loop.text.pairs import (
    CompletionPairSource,
    ConversationPairSource,
    DatasetPairSource,
    PairsAsReward,
    heldout_size,
)
from agents.rundir import RunDir, RunDirError, checkpoint_candidates
from rewardmodels.text.ensemble import LMRewardEnsemble
from rewardmodels.text.preferences import TextPreferencePairs, is_conversational, is_unpaired, load_text_preferences
from rewardmodels.text.teachers import EnvironmentReturns, ReturnTeacher, SentimentTeacher
from textenv.checks import check
from textenv.default_lm import default_prompts
from textenv.files import atomic_write
from textenv.lora import LoraSettings, apply_lora, is_peft_model, load_adapter_weights, reference_view
from textenv.models import load_policy, max_positions
from textenv.prompts import PromptSource, PromptTooLongError, is_chat, prompt_columns, read_prompts, render_chat
from textenv.reward_functions import WeightedRewards

logger = logging.getLogger(__name__)

POLICY_DIR = "policy"
EVAL_SEED_BASE = 2**31  # the held-out tasks of a run on an environment: seeds above every training draw
LEARNER_FILE = "learner.pt"
SFT_DIR = "sft"


def _evaluation_json(ev: Evaluation) -> dict[str, Any]:
    return {"prompts": ev.prompts, "responses": ev.responses, "oracle_scores": ev.oracle_scores.tolist(),
            "kl_to_ref": ev.kl_to_ref.tolist()}


class TextPolicyAgent:
    """The loop's ``Agent`` for text: ``learn(k)`` runs the run's learner (``agents.loop.text.improve``, made at the
    first round and kept: its optimiser, value head, KL penalty and random streams go on across rounds) for k
    iterations (DPO / KTO: epochs) on ``ctx.policy`` in place; ``evaluate`` is the teacher's score of completions on
    the held-out prompts. ``source`` counts the iterations as the loop's steps; checkpoints hold the learner too.
    """

    eval_key = None  # the loop does not evaluate it: it evaluates itself (every ``eval_every`` iterations, after every
    # round of an online run, and at the end), logging ``eval/oracle_score`` on its own step axis

    def __init__(self, ctx: TextRLHFContext, source: CompletionPairSource):
        self.ctx, self.source = ctx, source
        self.rounds_done = 0
        self.step = 0  # the improvement steps' log axis so far (iterations; DPO / KTO: gradient steps)
        self.summary: dict[str, float] = {}
        self.before: Evaluation | None = None
        self._eval: tuple[int, Evaluation] | None = None
        self.learner: Any = None

    def learn(self, n_steps: int, max_steps: int | None = None) -> dict[str, float]:
        its = int(min(n_steps, max_steps if max_steps is not None else n_steps))
        if self.learner is None:
            self.learner = make_learner(self.ctx)
        start = time.perf_counter()
        self.ctx.improve_clock = start - self.summary.get("improve_wall_s", 0.0)  # time/improve_s across rounds
        out = dict(self.learner.learn(its) or {})
        wall = time.perf_counter() - start
        self.step = int(self.learner.step)
        self.source.env_steps += its
        self.rounds_done += 1
        out = {k: float(v) for k, v in out.items() if isinstance(v, (int, float))}
        self.summary["improve_wall_s"] = self.summary.get("improve_wall_s", 0.0) + wall
        for key, value in out.items():  # tokens add up over rounds; the rest is the last round's
            self.summary[key] = self.summary.get(key, 0.0) + value if key == "tokens_seen" else value
        if self.ctx.config.rounds > 1:  # online: the held-out evaluation after every round's improvement
            self.evaluate()
        return {"agent/improve_wall_s": wall, **{k if "/" in k else f"agent/{k}": v for k, v in out.items()}}

    def set_reward_fn(self, reward_fn: Any) -> None:
        if self.ctx.config.algorithm.offline:
            self.ctx.pairs = reward_fn  # DPO / KTO learn from the labelled pairs (PairsAsReward)
        else:
            self.ctx.reward_model = reward_fn
        return None

    def evaluate(self, n_episodes: int = 1) -> np.ndarray:
        """Teacher scores (B,) of the held-out completions of the current policy (zeros without a teacher), logged
        as ``eval/oracle_score`` once per policy (``n_episodes`` is unused: the held-out set is fixed, with common
        random numbers)."""
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
        if self.learner is not None:  # the optimiser, value head, KL penalty and random streams: --resume goes on
            atomic_write(Path(directory) / LEARNER_FILE, lambda f: torch.save(self.learner.state_dict(), f))

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
        if (Path(directory) / LEARNER_FILE).is_file():  # a checkpoint of rlhf-gym 0.2 has none: the learner starts anew
            self.learner = make_learner(self.ctx)
            self.learner.load_state_dict(torch.load(Path(directory) / LEARNER_FILE, weights_only=False))


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


def default_text_instructions(default_lm: bool, environment: str | None = None) -> str:
    """What people judge in a text run by default: the demo's task on the default LM, else the general question."""
    if environment is not None:
        return (f"Each pair is two conversations of the model with the same environment ({environment}) on the same "
                "task, turn by turn: the environment's first message is shown above, then each side's turns. Choose "
                "the conversation in which the model did the task better; 'equal' when neither did, 'skip' when you "
                "cannot tell.")
    if default_lm:
        return ("Each pair is two reviews written after the same opening (the prompt). The task of this demo run: "
                "the more positive review is better. Judge the response as a whole; 'equal' when neither is more "
                "positive, 'skip' when you cannot tell.")
    return ("Each pair is two responses to the same prompt. Choose the better response for the person who wrote the "
            "prompt; 'equal' when they are as good, 'skip' when you cannot tell.")


def make_text_labeller(cfg: TextRLHFConfig, out: str | Path, teacher: Any, default_lm: bool = False) -> Any:
    """The simulated teacher, people in the web app (``HumanLabeller`` on ``out``), or both, per ``cfg.labeller``
    (``dataset``: no labeller is asked; the teacher stands in)."""
    if cfg.labeller in ("teacher", "dataset"):
        return teacher
    from rewardmodels.feedback.human import HumanLabeller, MixedLabeller
    from rewardmodels.feedback.label_store import LabelStoreError

    try:
        human = HumanLabeller(out, timeout=cfg.label_timeout,
                              on_timeout="raise" if cfg.label_timeout is None else "nan", progress=cfg.progress_bar,
                              instructions=cfg.instructions or default_text_instructions(default_lm, cfg.environment))
    except LabelStoreError as err:  # a damaged labels.sqlite: one line naming it and what to do
        raise RunDirError(str(err)) from err
    return human if cfg.labeller == "human" else MixedLabeller(human, teacher, cfg.human_fraction, cfg.seed)


def _split_prompts(prompts: list[str], n_eval: int) -> tuple[list[str], list[str]]:
    """Hold out the last ``n_eval`` prompts for evaluation when there are at least twice as many; else evaluate on
    the training prompts (a warning says so)."""
    if len(prompts) >= 2 * n_eval:
        return prompts[:-n_eval], prompts[-n_eval:]
    logger.warning("only %d prompts: the policy is evaluated on its training prompts (give >= %d to hold out %d)",
                   len(prompts), 2 * n_eval, n_eval)
    return prompts, prompts[:n_eval]


def sft_stage(config: TextRLHFConfig, out: str | Path, model: Any, tokenizer: Any, device: torch.device):
    """Run the SFT stage into ``out/sft`` (resuming it if it stopped; skipping it if it finished) and return the SFT
    model and its tokenizer: what the RL stage starts from and keeps as its reference."""
    from agents.loop.text.sft import MODEL_DIR, run_sft, sft_done

    sft_out = Path(out) / SFT_DIR
    if not sft_done(sft_out):
        logger.info("SFT stage on %s -> %s", config.sft_data, sft_out)
        run_sft(config.sft_run_config(), sft_out, resume=bool(checkpoint_candidates(sft_out)), model=model,
                tokenizer=tokenizer)
    saved_tokenizer = tokenizer if tokenizer is not None else config.tokenizer
    return load_policy(str(sft_out / MODEL_DIR), saved_tokenizer, device)


def prompt_budget(cfg: TextRLHFConfig, tokenizer: Any, model: Any, train: Sequence[str],
                  held_out: Sequence[str]) -> int:
    """The run's ``max_prompt_tokens``: the config's, checked against every prompt (an error names the longest, by
    its place among the training or held-out prompts, and how many are too long), or the longest prompt's length;
    either way it must leave ``max_new_tokens`` in the model's context."""
    prompts = [*train, *held_out]
    lengths = [len(ids) for ids in PromptSource.tokenize(prompts, tokenizer)]
    longest = int(np.argmax(lengths))
    budget = cfg.max_prompt_tokens if cfg.max_prompt_tokens is not None else lengths[longest]
    if lengths[longest] > budget:
        where = (f"training prompt {longest + 1} of {len(train)}" if longest < len(train)
                 else f"held-out prompt {longest - len(train) + 1} of {len(held_out)}")
        too_long = sum(n > budget for n in lengths)
        raise PromptTooLongError(f"{where} ({prompts[longest][:80]!r}) has {lengths[longest]} tokens, more than "
                                 f"max_prompt_tokens={budget} ({too_long} of the run's {len(prompts)} prompts are): "
                                 f"raise --max-prompt-tokens to {lengths[longest]}, leave it unset (the longest "
                                 "prompt), or shorten those prompts; prompts are never truncated")
    positions = max_positions(model)
    if positions is not None and budget + cfg.max_new_tokens > positions:
        raise PromptTooLongError(f"prompts of up to {budget} tokens and max_new_tokens={cfg.max_new_tokens} exceed the "
                                 f"model's {positions} positions: lower --max-new-tokens or shorten the prompts")
    return budget


def environment_prompt_budget(cfg: TextRLHFConfig, tokenizer: Any, model: Any, seeds: Sequence[int]) -> int:
    """The run's ``max_prompt_tokens`` on an environment: the config's, else twice the longest first observation of
    the held-out tasks (``seeds``) and as many training draws, as the policy reads it (tasks differ; the model's
    context caps it); with ``max_new_tokens`` (the episode's budget) it must fit the model's context. A later first
    observation that does not fit is an error that names ``max_prompt_tokens``, never truncated."""
    from textenv.conversation import TurnFormat
    from textenv.environments.factory import make_environment_factory

    if cfg.max_prompt_tokens is not None:
        budget = cfg.max_prompt_tokens
    else:
        env, fmt = make_environment_factory(cfg.environment)(), TurnFormat(tokenizer)
        draws = np.random.default_rng(cfg.seed).integers(2**31 - 1, size=len(seeds)).tolist()
        try:
            longest = max(len(fmt.prompt(env.reset(seed=int(s))[0])[1]) for s in [*seeds, *draws])
        finally:
            env.close()
        positions = max_positions(model)
        room = positions - cfg.max_new_tokens if positions is not None else 2 * longest
        budget = max(longest, min(2 * longest, room))
    positions = max_positions(model)
    if positions is not None and budget + cfg.max_new_tokens > positions:
        raise PromptTooLongError(f"first observations of up to {budget} tokens and an episode budget of "
                                 f"max_new_tokens={cfg.max_new_tokens} exceed the model's {positions} positions: lower "
                                 "--max-new-tokens")
    return budget


def _inputs(cfg: TextRLHFConfig, device: torch.device, model, tokenizer, train_prompts, eval_prompts,
            chat_preferences: bool = False, default_lm: bool = False):
    """Policy, tokenizer and prompts: the arguments, else ``cfg.model`` / ``cfg.prompts``, else the default LM. On an
    environment there are no prompts: the held-out "prompts" are the tasks' environment seeds."""
    if model is None:
        model, tokenizer = load_policy(cfg.model, cfg.tokenizer, device)
    columns: dict[str, dict] = {}
    if cfg.environment is not None:
        check(tokenizer is not None, "with a custom model, pass its tokenizer too")
        held_out = [EVAL_SEED_BASE + i for i in range(cfg.eval_prompts)]  # tasks no training draw is likely to meet
        return model.to(device), tokenizer, [], held_out, columns
    if not train_prompts and cfg.prompts is not None:
        # Chat prompts (message lists) as the text of the template, as preference files are read: pairs, reward
        # model and people all see the prompt the policy continues.
        prompts = read_prompts(cfg.prompts)
        rows = prompt_columns(cfg.prompts)
        if chat_preferences and getattr(tokenizer, "chat_template", None) and not any(map(is_chat, prompts)):
            logger.warning("the preferences are conversational and the prompts plain text: each prompt is given "
                           "to the policy as a user turn of the chat template, as the reward model reads the "
                           "preferences' prompts")
            prompts = [[{"role": "user", "content": p}] for p in prompts]
        prompts = [render_chat(p, tokenizer) if is_chat(p) else p for p in prompts]
        columns = {text: cols for text, cols in zip(prompts, rows, strict=True) if cols}
        train_prompts, split_eval = _split_prompts(prompts, cfg.eval_prompts)
        eval_prompts = eval_prompts or split_eval
    elif not train_prompts and default_lm:  # the default LM (as given, or fine-tuned by the SFT stage)
        train_prompts = default_prompts("train")
        eval_prompts = eval_prompts or default_prompts("test")
    if tokenizer is None or not train_prompts or not eval_prompts:
        raise ValueError("with a custom model, pass its tokenizer, train_prompts and eval_prompts too")
    return model.to(device), tokenizer, list(train_prompts), list(eval_prompts), columns


def _preferences(config: TextRLHFConfig, source: Any, tokenizer: Any,
                 examples: Any) -> tuple[TextRLHFConfig, TextPreferencePairs | None]:
    """The preference pairs of ``source`` (or None), and the config with its label budget: capped at the dataset's
    pairs that are not held out with ``labeller="dataset"``; 0 with KTO's unpaired ``examples`` (nothing to label:
    KTO trains on them). A budget of 0 needs reward functions or such examples."""
    prefs = load_preferences(source, tokenizer) if source is not None else None
    if examples is not None:
        logger.info("the preferences are unpaired examples (prompt, completion, label): KTO trains on them directly")
        return dataclasses.replace(config, num_pairs=0), None
    if config.labeller == "dataset":
        check(prefs is not None, "labeller='dataset' needs preference pairs: pass preferences= or config.preferences")
        usable = len(prefs) - heldout_size(len(prefs), config.rm_val_fraction)
        if config.num_pairs > usable:
            logger.info("label budget %d > the %d pairs of the dataset not held out: using them all", config.num_pairs,
                        usable)
            config = dataclasses.replace(config, num_pairs=usable)
    return config, prefs


def _policy_and_reference(config: TextRLHFConfig, model: Any) -> tuple[Any, Any]:
    """The policy (with LoRA adapters if the config asks for them) and its frozen reference: the base with the
    adapters disabled (no copy), else a frozen copy of the initial policy."""
    lora = config.extra.get("lora")
    if lora is None:
        return model, copy.deepcopy(model).eval().requires_grad_(False)
    check(not config.algo.startswith("sb3-"), f"lora is for the native agents (ppo, grpo, rloo, dpo, kto), not "
          f"{config.algo}")
    model = apply_lora(model, lora if isinstance(lora, LoraSettings) else LoraSettings(**lora))
    return model, reference_view(model)


def build_text_loop(config: TextRLHFConfig, out: str | Path, model: Any = None, tokenizer: Any = None,
                    train_prompts: Sequence[str] | None = None, eval_prompts: Sequence[str] | None = None,
                    teacher: Any = None, preferences: Any = None, labeller: Any = None,
                    callbacks: Sequence[LoopCallback] = ()) -> tuple[PreferenceLoop, TextPolicyAgent]:
    """Wire policy, frozen reference, pair source, reward model, labeller and agent into a ``PreferenceLoop``
    writing to ``out``. Defaults: ``config.model`` (else the offline default LM), its prompts, the VADER sentiment
    teacher (the labeller, and the oracle of every evaluation), ``config.preferences``, ``config.labeller``."""
    torch.manual_seed(config.seed)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    default_lm = model is None and config.model is None
    if config.sft_data is not None:  # stage one: the policy (and the reference) become the SFT model
        model, tokenizer = sft_stage(config, out, model, tokenizer, device)
    source_pairs = preferences if preferences is not None else config.preferences
    chat_preferences = source_pairs is not None and is_conversational(source_pairs)
    model, tokenizer, train_prompts, eval_prompts, columns = _inputs(
        config, device, model, tokenizer, train_prompts, eval_prompts, chat_preferences, default_lm)
    functions = config.reward_functions()
    reward_fns = WeightedRewards(functions, config.reward_weights, columns) if functions else None
    examples = source_pairs if config.algo == "kto" and source_pairs is not None and is_unpaired(source_pairs) else None
    config, prefs = _preferences(config, None if examples is not None else source_pairs, tokenizer, examples)
    returns = EnvironmentReturns() if config.environment is not None else None
    if teacher is None and config.labeller in ("teacher", "mixed") and config.num_pairs > 0:  # else no gold judge
        if returns is not None:  # conversations: judged by the environment's returns
            teacher = ReturnTeacher(returns, beta=config.teacher_beta, seed=config.seed)
        else:
            teacher = SentimentTeacher(config.teacher_repetition_penalty, beta=config.teacher_beta, seed=config.seed)
    model, ref = _policy_and_reference(config, model)
    if config.environment is not None:
        budget = environment_prompt_budget(config, tokenizer, model, eval_prompts)
    else:
        budget = prompt_budget(config, tokenizer, model, train_prompts, eval_prompts[: config.eval_prompts])
    run_dir = RunDir(out, report_to=config.report_to)
    eval_rows = [p for p in eval_prompts[: config.eval_prompts] for _ in range(config.eval_samples)]
    ctx = TextRLHFContext(config, model, ref, tokenizer, teacher, examples, None, train_prompts, eval_rows, run_dir,
                          device, budget, reward_fns, config.kl_penalty(), returns=returns)
    if config.labeller == "dataset" and prefs is not None:
        source: CompletionPairSource = DatasetPairSource(ctx, prefs, heldout_fraction=config.rm_val_fraction)
    elif returns is not None:
        oracle = teacher if config.labeller in ("teacher", "mixed") else None
        source = ConversationPairSource(ctx, returns, seed_pairs=prefs, oracle=oracle)
    else:
        oracle = teacher if config.labeller in ("teacher", "mixed") else None
        source = CompletionPairSource(ctx, seed_pairs=prefs, oracle=oracle)
    reward_model = PairsAsReward(ctx) if config.algorithm.offline else EnsembleRewardModel(LMRewardEnsemble(
        ref, tokenizer, config.rm_ensemble, seed=config.seed, epochs=config.rm_epochs,
        learning_rate=config.rm_learning_rate, batch_size=config.rm_batch_size, val_fraction=config.rm_val_fraction,
        device=device, log=run_dir.log), shuffle_full_draw=False)
    agent = TextPolicyAgent(ctx, source)
    labeller = labeller if labeller is not None else make_text_labeller(config, out, teacher, default_lm)
    title = f"rlhf-gym text --algo {config.algo} --rounds {config.rounds} (seed {config.seed})"
    loop = PreferenceLoop(config, agent, source, reward_model, labeller, run_dir,
                          callbacks=[_EvaluateBefore(agent), *callbacks], title=title, report=False)
    return loop, agent
