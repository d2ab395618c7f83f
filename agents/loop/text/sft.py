"""The SFT stage of the text pipeline (``rlhf-gym sft``; ``rlhf-gym text --sft-data`` runs it first): a model
fine-tuned on demonstrations (``agents.llm.sft``), with its own run directory, resumable epoch by epoch.

    cfg = SFTRunConfig(model="models/my-llama", data="demos.jsonl", epochs=3)
    summary = run_sft(cfg, "runs/sft")          # runs/sft/model: the SFT model, save_pretrained + tokenizer

The run directory holds config.json, metrics.jsonl (``sft/loss``, ``sft/heldout_loss`` per epoch), tb/, checkpoints/
(the last two epochs), summary.json (the held-out completion loss before and after), curves.png and ``model/``: the
whole fine-tuned model (with LoRA, the adapters merged into it; the adapters alone in ``adapters/``), which the next
stage loads as ``--model``. A share of the demonstrations (``eval_fraction``) never trains: the held-out loss is
measured on it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.llm.base import save_checkpoint
from agents.llm.sft import SFTConfig, SFTTrainer, read_demonstrations
from agents.loop.config import RunConfig
from agents.rundir import RunDir, check_device, lock_run_dir, signals_deferred
from textenv.checks import check, check_number
from textenv.files import atomic_directory, atomic_write, write_json
from textenv.lora import is_peft_model, load_adapter_weights, merged_copy
from textenv.models import load_policy

__all__ = ["MODEL_DIR", "SFTRunConfig", "run_sft", "sft_done"]

logger = logging.getLogger(__name__)

MODEL_DIR = "model"
ADAPTER_DIR = "adapters"


@dataclasses.dataclass
class SFTRunConfig(RunConfig):
    """Every setting of one SFT run (module docstring); ``extra`` holds further ``SFTConfig`` fields (``lora``,
    ``gradient_checkpointing``, ``gradient_accumulation_steps``, ``bf16``, ...)."""

    data: str | None = None
    """Demonstrations: .jsonl / .json, or a dataset directory, in TRL's SFT formats (``agents.llm.sft``)."""
    model: str | None = None
    """The model to fine-tune: a Hugging Face causal LM id or local directory; None = the offline default LM."""
    tokenizer: str | None = None
    """Tokenizer id or directory; None = the model's own."""
    epochs: int = 3
    """Passes over the training demonstrations (TRL's default)."""
    learning_rate: float = 2e-5
    """Adam learning rate (TRL's default)."""
    batch_size: int = 8
    """Demonstrations per gradient step."""
    completion_only_loss: bool = True
    """Prompt-completion records: the loss on the completion only (TRL's default)."""
    assistant_only_loss: bool = False
    """Conversations: the loss on the last assistant turn only (False: every token, TRL's default)."""
    max_length: int | None = None
    """Longest demonstration in tokens (None: the model's context); longer ones are an error, never truncated."""
    eval_fraction: float = 0.1
    """Share of the demonstrations held out to measure the completion loss before and after (none below 5)."""
    seed: int = 0
    """Seed of the held-out split and the batch order."""
    device: str | None = None
    """Torch device; None = CUDA if available, else CPU."""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Further ``agents.llm.sft.SFTConfig`` fields (e.g. ``{"lora": LoraSettings(8)}``)."""
    progress_bar: bool | None = None
    """Unused by SFT (kept for the run-config interface)."""

    def __post_init__(self) -> None:
        check(self.data is not None, "SFT needs demonstrations: pass data=FILE (--data)")
        self.check_run()
        check_number("epochs", self.epochs, low=1, integer=True)
        check_number("eval_fraction", self.eval_fraction, low=0, high=1, high_open=True)
        check_number("seed", self.seed, low=0, high=2**32 - 1, integer=True)
        check_device(self.device)
        self.sft_config()  # validates the trainer's settings (learning rate, batch, max_length, extra) where they live

    def sft_config(self) -> SFTConfig:
        fields = dict(learning_rate=self.learning_rate, epochs=self.epochs, batch_size=self.batch_size,
                      completion_only_loss=self.completion_only_loss, assistant_only_loss=self.assistant_only_loss,
                      max_length=self.max_length, seed=self.seed)
        names = {f.name for f in dataclasses.fields(SFTConfig)}
        unknown = sorted(set(self.extra) - names)
        check(not unknown, f"{', '.join(unknown)}: not a setting of SFTConfig; its settings: "
              f"{', '.join(sorted(names))}", TypeError)
        return SFTConfig(**{**fields, **self.extra})


def sft_done(out: str | Path) -> bool:
    """Whether ``out`` holds a finished SFT run (its ``model/`` complete, its summary saying so)."""
    try:
        summary = json.loads((Path(out) / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(summary.get("finished")) and (Path(out) / MODEL_DIR / "config.json").is_file()


def _split(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    n_held = int(round(len(examples) * fraction)) if len(examples) >= 5 else 0
    order = np.random.default_rng(seed).permutation(len(examples))
    return [examples[i] for i in order[n_held:]], [examples[i] for i in order[:n_held]]


def run_sft(cfg: SFTRunConfig, out: str | Path, resume: bool = False, model: Any = None,
            tokenizer: Any = None) -> dict[str, Any]:
    """Fine-tune ``cfg.model`` (or the ``model`` object, in place) on ``cfg.data`` into run directory ``out``
    (module docstring); returns summary.json's content. With ``resume``, continue after the last finished epoch.
    Holds ``out``'s lock (``agents.rundir.lock_run_dir``: another process running in it raises ``RunDirBusy``)."""
    with lock_run_dir(out):
        return _run_sft(cfg, out, resume, model, tokenizer)


def _run_sft(cfg: SFTRunConfig, out: str | Path, resume: bool, model: Any, tokenizer: Any) -> dict[str, Any]:
    start = time.perf_counter()
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if model is None:
        model, tokenizer = load_policy(cfg.model, cfg.tokenizer, device)
    sft = cfg.sft_config()
    train, held = _split(read_demonstrations(cfg.data, tokenizer, sft), cfg.eval_fraction, cfg.seed)
    check(bool(train), "no demonstration is left to train on after the held-out share: give more, or lower "
          "eval_fraction", ValueError)
    run_dir = RunDir(out, report_to=cfg.report_to)
    trainer = SFTTrainer(model, tokenizer, train, sft)
    state = _resume(run_dir, trainer) if resume else None
    if state is None:
        run_dir.write_config({"config": cfg, "title": f"rlhf-gym sft ({len(train)} demonstrations)"})
        state = {"epoch": 0, "heldout_loss_before": trainer.heldout_loss(held) if held else math.nan}
        run_dir.log(0, {"sft/heldout_loss": state["heldout_loss_before"]})
    try:
        losses: list[float] = []

        def log(_trainer: Any, step: int, metrics: dict[str, float]) -> None:
            losses.append(metrics["losses/loss"])
            run_dir.log(step, {"sft/loss": metrics["losses/loss"], "sft/grad_norm": metrics["losses/grad_norm"]})

        for epoch in range(state["epoch"], cfg.epochs):
            losses.clear()
            trainer.learn(1, callback=log)
            state["epoch"] = epoch + 1
            state["heldout_loss"] = trainer.heldout_loss(held) if held else math.nan
            run_dir.log(trainer.step, {"sft/heldout_loss": state["heldout_loss"], "sft/epoch": epoch + 1})
            logger.info("sft epoch %d/%d: train loss %.4f, held-out loss %.4f", epoch + 1, cfg.epochs,
                        float(np.mean(losses)) if losses else math.nan, state["heldout_loss"])
            _checkpoint(run_dir, trainer, state)
    except BaseException:
        run_dir.close()
        raise
    return _finish(run_dir, trainer, state, len(train), len(held), time.perf_counter() - start)


def _checkpoint(run_dir: RunDir, trainer: SFTTrainer, state: dict[str, Any]) -> None:
    """``checkpoints/epoch-NNNN``: the model (adapters with LoRA), the optimiser, the batch-order RNG, the state."""
    name = f"epoch-{state['epoch']:04d}"
    full = {**state, "step": trainer.step, "generator": trainer.generator.get_state().tolist()}
    with signals_deferred():
        with atomic_directory(run_dir.checkpoints / name) as tmp:
            trainer.model.save_pretrained(tmp / MODEL_DIR)
            atomic_write(tmp / "optimizer.pt", lambda f: torch.save(trainer.optimizer.state_dict(), f))
            write_json(tmp / "state.json", full)
        run_dir.commit_checkpoint(name)


def _resume(run_dir: RunDir, trainer: SFTTrainer) -> dict[str, Any] | None:
    """Load the newest checkpoint into ``trainer``; None when there is none (a fresh start)."""
    for ckpt in run_dir.checkpoint_candidates():
        try:
            state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
            if is_peft_model(trainer.model):
                load_adapter_weights(trainer.model, ckpt / MODEL_DIR)
            else:
                from transformers import AutoModelForCausalLM

                saved = AutoModelForCausalLM.from_pretrained(ckpt / MODEL_DIR)
                trainer.model.load_state_dict(saved.state_dict())
            trainer.optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            logger.warning("checkpoint %s cannot be loaded (%s); trying an older one", ckpt, err)
            continue
        trainer.step = int(state.pop("step"))
        trainer.generator.set_state(torch.tensor(state.pop("generator"), dtype=torch.uint8))
        logger.info("resumed %s after epoch %d", run_dir.path, state["epoch"])
        return state
    return None


def _finish(run_dir: RunDir, trainer: SFTTrainer, state: dict[str, Any], n_train: int, n_held: int,
            wall_s: float) -> dict[str, Any]:
    """``model/`` (merged), ``adapters/`` (LoRA), summary.json and curves.png."""
    model = trainer.model
    if is_peft_model(model):
        save_checkpoint(run_dir.path / ADAPTER_DIR, model, trainer.tokenizer, {}, {"algo": "sft"})
        model = merged_copy(model)
    save_checkpoint(run_dir.path / MODEL_DIR, model, trainer.tokenizer, {}, {"algo": "sft", "epochs": state["epoch"]})
    summary = {"heldout_loss_before": state["heldout_loss_before"], "heldout_loss_after": state.get(
        "heldout_loss", state["heldout_loss_before"]), "train_examples": n_train, "heldout_examples": n_held,
        "epochs": state["epoch"], "steps": trainer.step, "wall_s": wall_s, "finished": True}
    run_dir.write_summary(summary)
    run_dir.plot([("SFT loss (completion tokens)", ["sft/loss", "sft/heldout_loss"])], title="rlhf-gym sft")
    run_dir.close()
    return summary
