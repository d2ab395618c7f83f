"""``rlhf-gym sft``: supervised fine-tuning on demonstrations, the first stage of SFT -> reward model -> RL.

    rlhf-gym sft --model DIR --data demos.jsonl --out runs/sft     # TRL formats: text, prompt/completion, messages
    rlhf-gym sft --model DIR --data demos.jsonl --lora-r 8 --out runs/sft-lora
    rlhf-gym sft --out runs/sft --resume                                   # continue after the last finished epoch
    rlhf-gym text --model runs/sft/model --prompts P --preferences F --algo grpo --out runs/rl   # the next stages
    rlhf-gym text --model DIR --sft-data demos.jsonl --prompts P --preferences F --out runs/all # all in one run

The run directory holds config.json, metrics.jsonl, tb/, checkpoints/ (per epoch), summary.json (held-out completion
loss before and after), curves.png and ``model/`` (``save_pretrained`` + tokenizer; with LoRA the adapters merged in,
and the adapters alone in ``adapters/``).
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from agents.cli import UsageError, check_threads, resume_hint, run_settings
from agents.cli.settings import add_settings_flags, settings_from_args
from agents.rundir import RunError, RunInterrupted

if TYPE_CHECKING:
    from agents.loop.text.sft import SFTRunConfig

logger = logging.getLogger(__name__)

#: Flags that set the ``SFTRunConfig`` field named here (unset flags keep its defaults).
_CONFIG_FIELDS = {"model": "model", "tokenizer": "tokenizer", "data": "data", "epochs": "epochs",
                  "lr": "learning_rate", "batch_size": "batch_size", "max_length": "max_length",
                  "eval_fraction": "eval_fraction", "seed": "seed", "device": "device"}


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    g = parser.add_argument_group("run")
    g.add_argument("--out", required=True, help="run directory (summary.json, curves.png, model/, ...)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out with its saved settings")
    g.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out that holds an earlier run (its files are moved aside)")
    g.add_argument("--model", default=None, help="Hugging Face causal LM id or local directory (default: the "
                                                 "offline default LM)")
    g.add_argument("--tokenizer", default=None, help="tokenizer id or directory (default: the model's)")
    g.add_argument("--data", default=None, help="demonstrations: .jsonl / .json or a dataset directory (TRL SFT "
                                                "formats: text, prompt/completion, messages)")
    g.add_argument("--epochs", type=int, default=None, help="passes over the demonstrations (3)")
    g.add_argument("--lr", type=float, default=None, help="learning rate (2e-5)")
    g.add_argument("--batch-size", type=int, default=None, help="demonstrations per step (8)")
    g.add_argument("--max-length", type=int, default=None,
                   help="longest demonstration in tokens (default: the model's context); longer: an error")
    g.add_argument("--eval-fraction", type=float, default=None, help="share held out for the held-out loss (0.1)")
    g.add_argument("--full-loss", action="store_true",
                   help="prompt/completion records: train on the prompt too (default: the completion only)")
    g.add_argument("--assistant-only-loss", action="store_true",
                   help="conversations: train on the last assistant turn only (default: every token)")
    g.add_argument("--seed", type=int, default=None, help="seed of the split and batch order (0)")
    g.add_argument("--device", default=None, help="torch device (default: cpu, or cuda if available)")
    g.add_argument("--threads", type=int, default=1, help="torch CPU threads (1)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    t = parser.add_argument_group("training memory")
    t.add_argument("--lora-r", type=int, default=None, help="train LoRA adapters of this rank (merged into model/)")
    t.add_argument("--lora-alpha", type=float, default=None, help="LoRA scale numerator (default: 2 x rank)")
    t.add_argument("--lora-targets", default=None, help="comma-separated module names, or all-linear")
    t.add_argument("--gradient-checkpointing", action="store_true", default=None, help="recompute activations")
    t.add_argument("--grad-accum", type=int, default=None, help="split each minibatch into this many chunks")
    add_settings_flags(parser)


def training_extra(args: argparse.Namespace) -> dict:
    """The memory settings of the LoRA / checkpointing / accumulation flags (shared with ``rlhf-gym text``)."""
    from textenv.lora import LoraSettings

    extra: dict = {}
    if args.lora_r is not None:
        alpha = args.lora_alpha if args.lora_alpha is not None else 2.0 * args.lora_r
        extra["lora"] = LoraSettings(r=args.lora_r, alpha=alpha, targets=args.lora_targets)
    elif args.lora_alpha is not None or args.lora_targets is not None:
        raise UsageError("--lora-alpha and --lora-targets need --lora-r (the adapters' rank)")
    if args.gradient_checkpointing:
        extra["gradient_checkpointing"] = True
    if args.grad_accum is not None:
        extra["gradient_accumulation_steps"] = args.grad_accum
    return extra


def config_from_args(args: argparse.Namespace) -> SFTRunConfig:
    from agents.loop.text.sft import SFTRunConfig

    flags = {field: getattr(args, flag) for flag, field in _CONFIG_FIELDS.items() if getattr(args, flag) is not None}
    if args.full_loss:
        flags["completion_only_loss"] = False
    if args.assistant_only_loss:
        flags["assistant_only_loss"] = True
    extra = training_extra(args)
    return SFTRunConfig(**settings_from_args(args, SFTRunConfig, {**flags, **({"extra": extra} if extra else {})}))


def run(args: argparse.Namespace) -> int:
    check_threads(args.threads, low=1)
    import torch  # the command boundary

    from agents.loop.text.sft import SFTRunConfig, run_sft
    from rewardmodels.text.preferences import TextPreferenceError
    from textenv.models import ModelLoadError
    from textenv.prompts import PromptError

    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the "Loading weights" bars of every model load: noise in a run's log
    with run_settings(args, SFTRunConfig.load, lambda: config_from_args(args)) as (cfg, out):
        try:
            summary = run_sft(cfg, out, resume=args.resume)
        except RunError:
            raise
        except (PromptError, TextPreferenceError, ModelLoadError, FileNotFoundError) as err:
            raise UsageError(str(err)) from err
        except KeyboardInterrupt as err:
            raise RunInterrupted(resume_hint("sft", out)) from err
    print(f"sft: held-out completion loss {summary['heldout_loss_before']:.4f} -> {summary['heldout_loss_after']:.4f} "
          f"({summary['heldout_examples']} held-out, {summary['train_examples']} trained on, {summary['epochs']} "
          f"epochs) -> {out}/model")
    return 0
