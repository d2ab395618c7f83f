"""``rlhf-gym text``: RLHF on TextGen-v0 through the one preference loop, with your model, prompts, data and people.

    rlhf-gym text --algo grpo --out runs/text                          # default LM, VADER teacher, offline (1 round)
    rlhf-gym text --algo grpo --rounds 4 --out runs/text-online        # labels asked on the current policy's samples
    rlhf-gym text --model DIR --prompts prompts.txt --preferences prefs.jsonl --algo dpo --out runs/mine
    rlhf-gym text --model DIR --prompts prompts.txt --preferences prefs.jsonl --algo grpo --out runs/mine-rm
    rlhf-gym text --labeller human --rounds 2 --pairs 32 --out runs/people   # then: rlhf-gym label --run runs/people
    rlhf-gym text --out runs/text-online --resume                      # continue a stopped run, no label lost
    rlhf-gym text --environment textenv.environments.reviews:SecondOpinion --algo grpo --out runs/turns

Each round: completion pairs of the current policy on training prompts -> labels (``--labeller``: the simulated
teacher, people in the web app, both, or the pairs of ``--preferences``) -> the LM reward model refitted on every label
so far -> the policy improved (PPO / GRPO / RLOO on TextGen-v0 with the KL penalty and the learned reward, or DPO /
KTO on the pairs). ``--rounds 1`` (the default) is the offline pipeline. The run directory holds config.json,
metrics.jsonl, summary.json, curves.png, pairs.jsonl, checkpoints/, the trained ``policy/`` (``save_pretrained`` +
tokenizer) and the ``reward_model/``. Algorithms: ``agents.loop.text.algorithms.TEXT_ALGORITHMS``.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import TYPE_CHECKING

from agents.cli import UsageError, check_threads, resume_hint, run_settings, usage_errors
from agents.cli.inputs import check_files, check_model, locate_sources
from agents.cli.settings import add_settings_flags, settings_from_args
from agents.cli.sft import training_extra
from agents.loop.text.algorithms import TEXT_ALGORITHMS
from agents.rundir import RunInterrupted

if TYPE_CHECKING:
    from agents.loop.text.config import TextRLHFConfig

logger = logging.getLogger(__name__)

#: Flags that set the ``TextRLHFConfig`` field named here (unset flags keep the algorithm's defaults).
_CONFIG_FIELDS = {"seed": "seed", "pairs": "num_pairs", "iterations": "iterations", "lr": "learning_rate",
                  "kl_coef": "kl_coef", "kl_target": "kl_target",
                  "teacher_repetition_penalty": "teacher_repetition_penalty", "max_new_tokens": "max_new_tokens",
                  "max_prompt_tokens": "max_prompt_tokens", "eval_prompts": "eval_prompts", "device": "device",
                  "rounds": "rounds", "selection": "selection",
                  "rm_ensemble": "rm_ensemble", "labeller": "labeller", "human_fraction": "human_fraction",
                  "label_timeout": "label_timeout", "model": "model", "tokenizer": "tokenizer", "prompts": "prompts",
                  "preferences": "preferences", "reward_fn": "reward_fns", "reward_weights": "reward_weights",
                  "sft_data": "sft_data", "sft_epochs": "sft_epochs",
                  "sft_lr": "sft_learning_rate", "environment": "environment", "max_turn_tokens": "max_turn_tokens",
                  "environment_reward": "environment_reward"}


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    g = parser.add_argument_group("run")
    g.add_argument("--algo", default=None, choices=sorted(TEXT_ALGORITHMS),
                   help="how to improve the policy (grpo; agents.loop.text.algorithms)")
    g.add_argument("--out", required=True, help="run directory (summary.json, curves.png, policy/, ...)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out with its saved settings")
    g.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out that holds an earlier run (its files are moved aside)")
    g.add_argument("--seed", type=int, default=None, help="seed of sampling, labelling and training (0)")
    g.add_argument("--rounds", type=int, default=None, help="improve -> label -> refit rounds (1 = offline)")
    g.add_argument("--pairs", type=int, default=None, help="labelled completion pairs (the label budget)")
    g.add_argument("--iterations", type=int, default=None, help="RL iterations (DPO: epochs over the pairs)")
    g.add_argument("--lr", type=float, default=None, help="policy learning rate")
    g.add_argument("--kl-coef", type=float, default=None,
                   help="KL coefficient beta: the env's per-token KL penalty (ppo, rloo, sb3-*), the beta of the "
                        "loss's KL term (grpo, dpo, kto)")
    g.add_argument("--kl-target", type=float, default=None,
                   help="adapt the env's KL penalty towards this sequence KL in nats (Ziegler et al. 2019; ppo, rloo, "
                        "sb3-*)")
    g.add_argument("--max-new-tokens", type=int, default=None, help="response length limit")
    g.add_argument("--max-prompt-tokens", type=int, default=None, help="longest prompt in tokens (longer: an error)")
    g.add_argument("--eval-prompts", type=int, default=None, help="held-out prompts used for the oracle score")
    g.add_argument("--device", default=None, help="torch device (default: cpu, or cuda if available)")
    g.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: the default LM is tiny, and more threads mostly contend)")
    g.add_argument("--samples", type=int, default=3, help="before/after samples to print")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (it is off anyway without a TTY)")
    _add_data_flags(parser)
    _add_labeller_and_memory_flags(parser)
    add_settings_flags(parser)


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    d = parser.add_argument_group("your model and data")
    d.add_argument("--model", default=None, metavar="DIR|HUB_ID",
                   help="Hugging Face causal LM id or local directory (default: the offline default LM)")
    d.add_argument("--tokenizer", default=None, metavar="DIR|HUB_ID",
                   help="tokenizer id or directory (default: the model's)")
    d.add_argument("--prompts", default=None, metavar="FILE|DIR",
                   help="prompts: .txt (one per line) or .jsonl file, or a dataset directory (needed with --model)")
    d.add_argument("--preferences", default=None, metavar="FILE|DIR",
                   help="preference pairs: .jsonl (TRL standard / conversational / implicit prompt) or a dataset "
                        "directory; labelled by --labeller dataset, else added to the labels gathered online")
    d.add_argument("--reward-fn", action="append", default=None, metavar="MODULE:FUNCTION",
                   help="a reward function added to the learned reward (repeatable): module:function or "
                        "path/to/file.py:function, called as TRL's f(prompts=, completions=, **columns) with the "
                        "prompt file's other columns (a reference answer, a test case); with --pairs 0 the only reward")
    d.add_argument("--reward-weights", type=float, nargs="+", default=None, metavar="W",
                   help="one weight per --reward-fn (default: 1 each)")
    d.add_argument("--sft-data", default=None, metavar="FILE|DIR",
                   help="demonstrations (TRL SFT formats): fine-tune the model on them first (stage one, in OUT/sft/); "
                        "the RL stage starts from the SFT model and its reference is the SFT model")
    d.add_argument("--sft-epochs", type=int, default=None, help="SFT passes over the demonstrations (3)")
    d.add_argument("--sft-lr", type=float, default=None, help="SFT learning rate (2e-5)")
    e = parser.add_argument_group("an environment that answers (multi-turn)")
    e.add_argument("--environment", default=None, metavar="SPEC",
                   help="conversations with an environment instead of prompts: gem:<id>, textarena:<id>, "
                        "openenv:<url> or module:Class (textenv.environments); the teacher judges by its returns, "
                        "--max-new-tokens is each episode's token budget")
    e.add_argument("--max-turn-tokens", type=int, default=None, help="the policy's tokens per turn (default: the "
                                                                     "whole budget)")
    e.add_argument("--environment-reward", type=float, default=None, metavar="W",
                   help="weight of the environment's rewards in the policy's reward (0: the policy learns from the "
                        "reward model only, the environment's rewards reach it through the labels)")


def _add_labeller_and_memory_flags(parser: argparse.ArgumentParser) -> None:
    h = parser.add_argument_group("labeller")
    h.add_argument("--labeller", default=None, choices=("teacher", "human", "mixed", "dataset"),
                   help="teacher (VADER sentiment, simulated), human (people in `rlhf-gym label --run OUT`; the loop "
                        "waits), mixed (--human-fraction to people), dataset (the pairs of --preferences); default: "
                        "dataset with --preferences, else teacher")
    h.add_argument("--teacher-repetition-penalty", type=float, default=None,
                   help="a harder simulated teacher: VADER minus this times the share of repeated words (0)")
    h.add_argument("--human-fraction", type=float, default=None, help="share of pairs people label with --labeller "
                                                                      "mixed (0.5)")
    h.add_argument("--label-timeout", type=float, default=None,
                   help="seconds to wait for people per batch (default: as long as it takes)")
    h.add_argument("--selection", default=None, choices=("random", "disagreement"),
                   help="which candidate pairs to label (disagreement needs --rm-ensemble >= 2)")
    h.add_argument("--rm-ensemble", type=int, default=None, help="reward models in the ensemble (1)")
    t = parser.add_argument_group("training memory (native agents)")
    t.add_argument("--lora-r", type=int, default=None,
                   help="train LoRA adapters of this rank instead of every weight (peft); the reference is the base "
                        "with the adapters disabled, and policy/ holds the adapters")
    t.add_argument("--lora-alpha", type=float, default=None, help="LoRA scale numerator (default: 2 x rank)")
    t.add_argument("--lora-targets", default=None,
                   help="comma-separated module names that get adapters, e.g. q_proj,v_proj, or all-linear "
                        "(default: peft's choice for the architecture)")
    t.add_argument("--gradient-checkpointing", action="store_true", default=None,
                   help="recompute activations in the backward pass (less memory, more compute)")
    t.add_argument("--grad-accum", type=int, default=None, help="split each minibatch into this many chunks")


def config_from_args(args: argparse.Namespace) -> TextRLHFConfig:
    """A validated ``TextRLHFConfig`` from parsed arguments (unset ones keep the algorithm's defaults)."""
    from agents.loop.text.config import TextRLHFConfig

    flags = {field: getattr(args, flag) for flag, field in _CONFIG_FIELDS.items()
             if getattr(args, flag, None) is not None}
    if args.algo is not None:
        flags["algo"] = args.algo
    if args.no_progress:
        flags["progress_bar"] = False
    extra = training_extra(args)
    if extra:
        flags["extra"] = extra
    values = settings_from_args(args, TextRLHFConfig, flags)  # --config file < flags < --set
    if "labeller" not in values and values.get("preferences") is not None:
        values["labeller"] = "dataset"
    return TextRLHFConfig.for_algo(values.pop("algo", "grpo"), **values)


def validate(args: argparse.Namespace) -> TextRLHFConfig:
    """The settings of a fresh run, after every check that needs nothing created: the flags, ``--config`` and
    ``--set``, the model (``agents.cli.inputs.check_model``) and the files the run reads (``check_files``). Bad
    input raises ``UsageError``."""
    check_flags(args)
    locate_sources(args.model, args.tokenizer)  # a mistyped path fails here, before seconds of imports
    with usage_errors():
        cfg = config_from_args(args)
    lengths = {f"--max-new-tokens {cfg.max_new_tokens} with a prompt of one token or more": cfg.max_new_tokens + 1}
    if cfg.max_prompt_tokens is not None:
        lengths[f"--max-prompt-tokens {cfg.max_prompt_tokens} with --max-new-tokens {cfg.max_new_tokens}"] = \
            cfg.max_prompt_tokens + cfg.max_new_tokens
    check_model(cfg.model, cfg.tokenizer, cfg.extra.get("lora"), lengths)
    check_files(cfg.prompts, cfg.preferences, cfg.sft_data)
    return cfg


def check_flags(args: argparse.Namespace) -> None:
    """The flags that are no setting of the run (they apply to ``--resume`` too)."""
    check_threads(args.threads, low=1)
    if args.samples < 0:
        raise UsageError(f"--samples must be >= 0 (before/after samples to print; 0 = none), got {args.samples}")


def run(args: argparse.Namespace) -> int:
    check_flags(args)
    import torch  # the command boundary: `rlhf-gym text --help` imports none of the training stack

    from agents.loop.text.config import TextRLHFConfig
    from agents.loop.text.run import build_text_loop, print_samples, result_line, run_text_loop
    from rewardmodels.text.preferences import TextPreferenceError
    from textenv.prompts import PromptError
    from textenv.sources import ModelLoadError

    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the "Loading weights" bars of every model load: noise in a run's log
    # Errors of the user's inputs (files, model, prompts too long for --max-prompt-tokens) become one line.
    user_errors = (PromptError, TextPreferenceError, ModelLoadError, FileNotFoundError)
    with run_settings(args, TextRLHFConfig.load, lambda: validate(args)) as (cfg, out):
        start = time.perf_counter()
        with usage_errors(*user_errors, ValueError, TypeError):  # wiring the run: the inputs and settings do not fit
            loop, agent = build_text_loop(cfg, out)
        try:
            with usage_errors(*user_errors):
                result = run_text_loop(loop, agent, resume=args.resume, start=start)
        except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM (agents.cli.main): say how to go on
            raise RunInterrupted(resume_hint("text", out)) from err
    print_samples(result, n=args.samples)
    print(result_line(result, out))
    return 0
