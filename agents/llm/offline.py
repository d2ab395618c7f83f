"""What the offline trainers (DPO, KTO) share: labelled text in, no env and no reward model, a frozen reference.

- :func:`preference_triples` reads labelled pairs (``rewardmodels.text.preferences.TextPreferencePairs``, a JSONL
  path, a ``datasets.Dataset``, triples or dicts in TRL's formats) into ``(prompt, chosen, rejected)``.
- :func:`encode_pairs` / :func:`sequence_logps` turn (prompt, response) text into token ids and score
  ``log pi(response | prompt)``.
- :class:`OfflineConfig` holds the optimiser and batching settings; :class:`OfflineTrainer` the frozen reference,
  the optimiser, ``learn()`` (shuffled minibatches, one gradient step each, a non-finite loss refused before the
  step), metrics in the run dir and checkpoints. A trainer implements :meth:`OfflineTrainer.batch_loss`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from agents.llm.base import check_finite, clip_and_step, save_checkpoint, weighted_mean
from agents.llm.distributed import data_parallel
from agents.llm.rollout import sequence_forward
from agents.llm.training import (
    TrainingSettings,
    backward_chunks,
    check_bf16,
    chunk_weights,
    frozen_reference,
    prepare_policy,
    split_rows,
)
from agents.rundir import RunDir
from rewardmodels.text.preferences import (
    EmptyResponseError,
    IdenticalResponsesError,
    TextPreferenceError,
    read_preference_rows,
)
from textenv.checks import check


@dataclasses.dataclass(kw_only=True)
class OfflineConfig(TrainingSettings):
    """Optimiser and batching settings of the offline trainers (keyword-only), with the memory settings of
    :class:`agents.llm.training.TrainingSettings` (``lora``, ``gradient_checkpointing``, ``bf16``,
    ``gradient_accumulation_steps``)."""

    learning_rate: float = 5e-6
    """Adam learning rate."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    epochs: int = 1
    """Passes over the data."""
    batch_size: int = 8
    """Rows (pairs for DPO, examples for KTO) per gradient step."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip."""
    append_eos: bool = True
    """End each response with the tokenizer's EOS, so the policy also learns where responses stop."""
    seed: int = 0
    """Seed of the shuffling."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.learning_rate > 0 and self.adam_eps > 0, "learning_rate and adam_eps must be > 0")
        check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.max_grad_norm > 0, f"max_grad_norm must be > 0, got {self.max_grad_norm}")


def preference_triples(pairs, tokenizer=None) -> list[tuple[str, str, str]]:
    """``(prompt, chosen, rejected)`` triples from any preference source.

    ``pairs`` is anything ``rewardmodels.text.preferences.read_preference_rows`` reads: ``TextPreferencePairs``, a
    JSONL/JSON path, a ``datasets.Dataset``, or a list of records (dicts in this toolkit's format or TRL's standard
    and conversational formats, explicit or implicit prompt; ``(prompt, chosen, rejected)`` triples;
    ``(prompt, a, b, label)`` tuples). Conversational records are rendered with ``tokenizer``'s chat template.

    A ``label`` follows the project convention (1 = first response preferred, 0 = second, 0.5 = tie, NaN = skipped);
    ties and skipped pairs carry no direction and are dropped. Raises ``EmptyResponseError`` /
    ``IdenticalResponsesError`` (``rewardmodels.text.preferences``) for an empty or identical response,
    ``TextPreferenceFileError`` for a record in no known format, ``TextPreferenceError`` for a label outside [0, 1]
    or when no strict preference is left; each names the record (``path:line``, ``dataset row i``, ``record #i``).
    """
    triples: list[tuple[str, str, str]] = []
    for prompt, a, b, label, where in read_preference_rows(pairs, tokenizer):
        if not str(a).strip() or not str(b).strip():
            raise EmptyResponseError(f"{where} has an empty response ({a!r} vs {b!r}); drop or regenerate it")
        if a.strip() == b.strip():
            raise IdenticalResponsesError(
                f"{where} compares a response with itself ({a!r}); a preference between identical responses carries "
                "no signal, drop it"
            )
        if label is None or math.isnan(label) or label == 0.5:
            continue
        if not 0.0 <= label <= 1.0:
            raise TextPreferenceError(f"{where} has label {label}; labels are in [0, 1] (1 = first preferred)")
        triples.append((prompt, a, b) if label > 0.5 else (prompt, b, a))
    if not triples:
        raise TextPreferenceError("no pair with a strict preference (every label is a tie or skipped)")
    return triples


def encode_pairs(tokenizer, prompts: Sequence[str], responses: Sequence[str], append_eos: bool, device):
    """Left-padded prompt ids/mask (B, Lq) and right-padded response ids/mask (B, T)."""
    q = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    eos = [tokenizer.eos_token_id] if append_eos and tokenizer.eos_token_id is not None else []
    r = [tokenizer(x, add_special_tokens=False)["input_ids"] + eos for x in responses]
    lq, lr = max(map(len, q)), max(map(len, r))
    q_ids = torch.zeros(len(q), lq, dtype=torch.long)
    q_mask = torch.zeros(len(q), lq, dtype=torch.bool)
    r_ids = torch.zeros(len(r), lr, dtype=torch.long)
    r_mask = torch.zeros(len(r), lr, dtype=torch.bool)
    for i, (qi, ri) in enumerate(zip(q, r, strict=True)):
        if qi:
            q_ids[i, lq - len(qi) :] = torch.tensor(qi)
            q_mask[i, lq - len(qi) :] = True
        r_ids[i, : len(ri)] = torch.tensor(ri)
        r_mask[i, : len(ri)] = True
    return q_ids.to(device), q_mask.to(device), r_ids.to(device), r_mask.to(device)


def sequence_logps(model, tokenizer, prompts, responses, append_eos: bool, device) -> torch.Tensor:
    """(B,) ``log pi(response | prompt)``: the sum of the response's token log-probs."""
    q_ids, q_mask, r_ids, r_mask = encode_pairs(tokenizer, prompts, responses, append_eos, device)
    if not bool(q_mask.any(1).all()):
        raise TextPreferenceError("a prompt encodes to no tokens; the response must be conditioned on a prompt")
    logprobs, _, _ = sequence_forward(model, q_ids, q_mask, r_ids, r_mask)
    return (logprobs * r_mask).sum(-1)


def minibatches(order: torch.Tensor, size: int, min_size: int = 1) -> list[torch.Tensor]:
    """``order`` cut into consecutive minibatches of ``size``; a last one smaller than ``min_size`` joins the one
    before it (when there is one)."""
    starts = list(range(0, len(order), size))
    if len(starts) > 1 and len(order) - starts[-1] < min_size:
        starts.pop()
    ends = [*starts[1:], len(order)]
    return [order[s:e] for s, e in zip(starts, ends, strict=True)]


class OfflineTrainer:
    """Base of the offline trainers: ``learn()`` trains ``model`` in place against a frozen reference.

    ``data`` is what the trainer reads (:meth:`read_data`); ``config`` defaults to ``config_class()``; ``ref_model``
    defaults to a frozen copy of ``model`` as it is at construction (for a LoRA model, ``config.lora`` or a ``peft``
    model passed in, the base with the adapters disabled: no copy). A trainer implements :meth:`read_data`,
    :meth:`compute_reference` (what it needs from the reference, computed once) and :meth:`batch_loss`. Under a
    multi-process launch (``agents.llm.distributed``) each process trains on every N-th row of each minibatch.
    """

    algo = "offline"
    unit = "examples"
    """What one row of the data is: ``charts/<unit>_per_s`` and the row count in ``config.json``."""
    min_batch = 1
    """Smallest minibatch the loss can use; a smaller remainder of an epoch joins the minibatch before it."""
    uses_reference = True
    """Whether the loss compares with a frozen reference (SFT's does not: no copy of the model is made)."""
    config: OfflineConfig
    config_class: type[OfflineConfig] = OfflineConfig

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        data,
        config: OfflineConfig | None = None,
        ref_model: nn.Module | None = None,
        run_dir: RunDir | str | os.PathLike | None = None,
    ):
        self.config = config = config if config is not None else self.config_class()
        self.parallel = data_parallel()
        self.model = model = prepare_policy(model, config)
        self.tokenizer = tokenizer
        self.num_rows = self.read_data(data)
        self.device = next(model.parameters()).device
        check_bf16(config, self.device)
        self.ref_model = frozen_reference(model, ref_model) if self.uses_reference else None
        self.model.eval()  # dropout off: the losses compare deterministic log-probs of policy and reference
        run_dir = run_dir if self.parallel.is_main else None  # one writer per run: the main process
        self.run_dir = run_dir if isinstance(run_dir, RunDir) or run_dir is None else RunDir(run_dir)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=config.learning_rate, eps=config.adam_eps, foreach=True)
        self.train_model = self.parallel.wrap(model)  # DDP under a multi-process launch, else the model itself
        self.step = 0
        self.last_checkpoint: Path | None = None
        self.last_metrics: dict[str, float] = {}
        self.generator = torch.Generator().manual_seed(config.seed)
        self.compute_reference()
        if self.run_dir is not None:
            self.run_dir.write_config({"algo": self.algo, "config": config, self.unit: self.num_rows})

    # ----------------------------------------------------------------- to override
    def read_data(self, data) -> int:
        """Check and keep ``data``; return its number of rows."""
        raise NotImplementedError

    def compute_reference(self) -> None:
        """What the loss needs from the frozen reference, computed once (:meth:`reference_logps`)."""
        raise NotImplementedError

    def batch_loss(self, rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss to minimise on the data rows ``rows`` (1-D long tensor) and its named metrics."""
        raise NotImplementedError

    # ----------------------------------------------------------------- shared
    def logps(self, model: nn.Module, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """(B,) ``log model(response | prompt)`` (:func:`sequence_logps`, with the config's ``append_eos``)."""
        model = self.train_model if model is self.model and torch.is_grad_enabled() else model
        return sequence_logps(model, self.tokenizer, prompts, responses, self.config.append_eos, self.device)

    def chunks(self) -> Iterator[torch.Tensor]:
        """Every row, in order, as index tensors of at most ``batch_size`` (for passes without updates)."""
        for start in range(0, self.num_rows, self.config.batch_size):
            yield torch.arange(start, min(start + self.config.batch_size, self.num_rows))

    @torch.no_grad()
    def reference_logps(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """(N,) reference log-probs of every (prompt, response) row, computed once, ``batch_size`` rows a forward."""
        out = []
        for idx in self.chunks():
            rows = idx.tolist()
            out.append(self.logps(self.ref_model, [prompts[i] for i in rows], [responses[i] for i in rows]))
        return torch.cat(out)

    def learn(self, epochs: int | None = None, callback=None):
        """``epochs`` passes (default ``config.epochs``) over the shuffled rows, one gradient step per minibatch;
        ``callback(trainer, step, metrics)`` returning False stops. Returns ``self``."""
        cfg = self.config
        epochs = cfg.epochs if epochs is None else int(epochs)
        for _ in range(epochs):
            order = torch.randperm(self.num_rows, generator=self.generator)
            # Every process needs rows of each minibatch: a remainder too small to share joins the one before.
            for rows in minibatches(order, cfg.batch_size, self.min_batch * self.parallel.world_size):
                t0 = time.perf_counter()
                loss, metrics, grad_norm = self.update(rows)
                self.step += 1
                out = {f"losses/{k}": float(v) for k, v in metrics.items()}  # losses/rewards/margin, ...
                out["losses/loss"] = float(loss.detach())
                out["losses/grad_norm"] = float(grad_norm)
                out[f"charts/{self.unit}_per_s"] = len(rows) / max(time.perf_counter() - t0, 1e-9)
                self.last_metrics = out
                if self.run_dir is not None:
                    self.run_dir.log(self.step, out)
                if callback is not None and callback(self, self.step, out) is False:
                    return self
        if self.run_dir is not None:
            self.save(self.run_dir.checkpoints / "last")
        return self

    def update(self, rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """One optimizer step on the minibatch ``rows``: this process's share of it (all of it in one process) in
        ``gradient_accumulation_steps`` chunks, each loss weighted by its share of the minibatch's rows, so that the
        accumulated, process-averaged gradient is the whole minibatch's. Returns loss, metrics and gradient norm."""
        cfg, where = self.config, f"the {self.algo.upper()} loss"
        chunks = split_rows(self.parallel.shard(rows), cfg.gradient_accumulation_steps)
        exact = len(chunks) == 1 and not self.parallel.active  # the plain step: no weights, the same numbers
        sizes = [torch.tensor(float(len(c))) for c in chunks]
        weights = None if exact else chunk_weights(sizes, torch.tensor(float(len(rows))), self.parallel.world_size)
        self.optimizer.zero_grad(set_to_none=True)
        outs = backward_chunks(
            [functools.partial(self.batch_loss, chunk) for chunk in chunks],
            weights,
            cfg,
            self.device,
            lambda loss: check_finite(loss, self.step, where, self.last_checkpoint),
            lambda skip: self.parallel.no_sync([self.train_model], skip),
        )
        grad_norm = clip_and_step(self.optimizer, self.params, cfg.max_grad_norm, self.step, self.last_checkpoint)
        metrics = weighted_mean(outs, [len(c) for c in chunks])
        return metrics.pop(""), metrics, grad_norm

    def save(self, directory: str | os.PathLike) -> Path:
        """``save_pretrained`` of the model and tokenizer into ``directory`` (an atomic swap)."""
        state = {"algo": self.algo, "step": self.step}
        self.last_checkpoint = save_checkpoint(Path(directory), self.model, self.tokenizer, {}, state)
        return self.last_checkpoint
