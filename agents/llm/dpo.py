"""DPO and its relatives, offline from labelled text pairs, against a frozen reference (no env, no reward model).

Direct Preference Optimization (Rafailov et al. 2023) trains the policy so that its implicit reward
``beta * (log pi(y|x) - log pi_ref(y|x))`` ranks the chosen response above the rejected one. ``loss_type`` picks the
sigmoid (DPO), ``"ipo"`` (Azar et al. 2023) or ``"hinge"`` (SLiC, Zhao et al. 2023) loss; ``label_smoothing`` is
conservative DPO (cDPO, Mitchell 2023) for noisy labels. The math lives in :func:`agents.llm.losses.dpo_loss`.

Pairs come from ``rewardmodels.text_preferences.TextPreferencePairs`` (or any iterable of
``(prompt, chosen, rejected)``); a ``label`` follows the project convention (1 = first response preferred,
0 = second, 0.5 = tie, NaN = skipped). Ties and skipped pairs carry no direction and are left out.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from agents.llm.base import _check, check_finite, save_checkpoint
from agents.llm.losses import dpo_loss
from agents.llm.rollout import sequence_forward
from agents.rundir import RunDir
from rewardmodels.text_preferences import EmptyResponseError, IdenticalResponsesError, TextPreferenceError

logger = logging.getLogger(__name__)

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


@dataclasses.dataclass
class DPOConfig:
    """DPO settings."""

    beta: float = 0.1
    """Strength of the implicit KL constraint: the implicit reward is ``beta * log(pi / pi_ref)``."""
    loss_type: str = "sigmoid"
    """``"sigmoid"`` (DPO), ``"ipo"`` (IPO) or ``"hinge"`` (SLiC)."""
    label_smoothing: float = 0.0
    """cDPO: assumed probability that a label is flipped, in [0, 0.5)."""
    learning_rate: float = 5e-6
    """Adam learning rate."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    epochs: int = 1
    """Passes over the pairs."""
    batch_size: int = 8
    """Pairs per gradient step."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip."""
    append_eos: bool = True
    """End each response with the tokenizer's EOS, so the policy also learns where preferred responses stop."""
    seed: int = 0
    """Seed of the pair shuffling."""

    def __post_init__(self) -> None:
        _check(self.beta > 0, f"beta must be > 0, got {self.beta}")
        _check(self.loss_type in LOSS_TYPES, f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        _check(0 <= self.label_smoothing < 0.5, f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        _check(
            self.label_smoothing == 0 or self.loss_type == "sigmoid",
            "label_smoothing (cDPO) applies to loss_type='sigmoid' only; set it to 0 for ipo/hinge",
        )
        _check(self.learning_rate > 0 and self.adam_eps > 0, "learning_rate and adam_eps must be > 0")
        _check(self.epochs >= 1 and self.batch_size >= 1, "epochs and batch_size must be >= 1")
        _check(self.max_grad_norm > 0, f"max_grad_norm must be > 0, got {self.max_grad_norm}")


def preference_triples(pairs) -> list[tuple[str, str, str]]:
    """``(prompt, chosen, rejected)`` triples from ``TextPreferencePairs`` or an iterable of triples.

    Raises ``EmptyResponseError`` / ``IdenticalResponsesError`` (``rewardmodels.text_preferences``) for an empty or
    identical response, ``TextPreferenceError`` for a label outside [0, 1] or when no strict preference is left; ties
    and NaN labels are dropped.
    """
    triples: list[tuple[str, str, str]] = []
    for i, (prompt, a, b, label) in enumerate(_rows(pairs)):
        if not str(a).strip() or not str(b).strip():
            raise EmptyResponseError(f"pair {i} has an empty response ({a!r} vs {b!r}); drop or regenerate it")
        if a.strip() == b.strip():
            raise IdenticalResponsesError(
                f"pair {i} compares a response with itself ({a!r}); a preference between identical responses carries "
                "no signal, drop it"
            )
        if label is None or math.isnan(label) or label == 0.5:
            continue
        if not 0.0 <= label <= 1.0:
            raise TextPreferenceError(f"pair {i} has label {label}; labels are in [0, 1] (1 = first preferred)")
        triples.append((prompt, a, b) if label > 0.5 else (prompt, b, a))
    if not triples:
        raise TextPreferenceError("no pair with a strict preference (every label is a tie or skipped)")
    return triples


def _rows(pairs) -> Iterable[tuple[str, str, str, float | None]]:
    for row in pairs:  # TextPreferencePairs iterates TextPair(prompt, response_a, response_b, label)
        if isinstance(row, dict):
            if "chosen" in row:
                yield row["prompt"], row["chosen"], row["rejected"], 1.0
            else:
                yield row["prompt"], row["response_a"], row["response_b"], float(row["label"])
        elif len(row) == 3:
            yield row[0], row[1], row[2], 1.0
        else:
            yield row[0], row[1], row[2], float(row[3])


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
        raise TextPreferenceError("a prompt encodes to no tokens; DPO needs a non-empty prompt")
    logprobs, _, _ = sequence_forward(model, q_ids, q_mask, r_ids, r_mask)
    return (logprobs * r_mask).sum(-1)


class DPOTrainer:
    """Offline DPO on labelled text pairs; ``learn()`` returns ``self`` and trains ``model`` in place."""

    algo = "dpo"

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        pairs,
        config: DPOConfig | None = None,
        ref_model: nn.Module | None = None,
        run_dir: RunDir | str | os.PathLike | None = None,
    ):
        self.config = config or DPOConfig()
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.triples = preference_triples(pairs)
        self.ref_model = ref_model if ref_model is not None else copy.deepcopy(model)
        self.ref_model.eval().requires_grad_(False)
        self.model.eval()  # dropout off: the implicit reward compares two deterministic log-probs
        self.run_dir = run_dir if isinstance(run_dir, RunDir) or run_dir is None else RunDir(run_dir)
        self.optimizer = torch.optim.Adam(
            [p for p in model.parameters() if p.requires_grad],
            lr=self.config.learning_rate,
            eps=self.config.adam_eps,
            foreach=True,
        )
        self.step = 0
        self.last_checkpoint: Path | None = None
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.ref_chosen, self.ref_rejected = self._reference_logps()
        if self.run_dir is not None:
            self.run_dir.write_config({"algo": self.algo, "config": self.config, "pairs": len(self.triples)})

    @torch.no_grad()
    def _reference_logps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen reference's log-probs of every chosen / rejected response, computed once."""
        chosen, rejected = [], []
        bs = self.config.batch_size
        for start in range(0, len(self.triples), bs):
            prompts, c, r = zip(*self.triples[start : start + bs], strict=True)
            chosen.append(self._logps(self.ref_model, prompts, c))
            rejected.append(self._logps(self.ref_model, prompts, r))
        return torch.cat(chosen), torch.cat(rejected)

    def _logps(self, model, prompts, responses) -> torch.Tensor:
        return sequence_logps(model, self.tokenizer, prompts, responses, self.config.append_eos, self.device)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Implicit-reward accuracy and margin over all training pairs (no update)."""
        margins = []
        for start in range(0, len(self.triples), self.config.batch_size):
            idx = torch.arange(start, min(start + self.config.batch_size, len(self.triples)))
            pc, pr = self._policy_logps(idx)
            margins.append(self.config.beta * ((pc - self.ref_chosen[idx]) - (pr - self.ref_rejected[idx])))
        m = torch.cat(margins)
        return {"eval/reward_margin": float(m.mean()), "eval/reward_accuracy": float((m > 0).float().mean())}

    def _policy_logps(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prompts, c, r = zip(*(self.triples[i] for i in idx.tolist()), strict=True)
        # One forward over chosen and rejected together (half the kernel launches of two calls).
        logps = self._logps(self.model, prompts + prompts, c + r)
        return logps[: len(idx)], logps[len(idx) :]

    def learn(self, epochs: int | None = None, callback=None) -> DPOTrainer:
        """``epochs`` passes (default ``config.epochs``); ``callback(trainer, step, metrics)`` -> False stops."""
        cfg = self.config
        epochs = cfg.epochs if epochs is None else int(epochs)
        for _ in range(epochs):
            order = torch.randperm(len(self.triples), generator=self.generator)
            for start in range(0, len(order), cfg.batch_size):
                t0 = time.perf_counter()
                idx = order[start : start + cfg.batch_size]
                pc, pr = self._policy_logps(idx)
                loss, metrics = dpo_loss(
                    pc,
                    pr,
                    self.ref_chosen[idx],
                    self.ref_rejected[idx],
                    beta=cfg.beta,
                    loss_type=cfg.loss_type,
                    label_smoothing=cfg.label_smoothing,
                )
                check_finite(loss, self.step, "the DPO loss", self.last_checkpoint)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                check_finite(grad_norm, self.step, "the gradient norm", self.last_checkpoint)
                self.optimizer.step()
                self.step += 1
                out = {f"losses/{k}": float(v) for k, v in metrics.items()}  # losses/rewards/margin, ...
                out["losses/loss"] = float(loss.detach())
                out["losses/grad_norm"] = float(grad_norm)
                out["charts/pairs_per_s"] = len(idx) / max(time.perf_counter() - t0, 1e-9)
                self.last_metrics = out
                if self.run_dir is not None:
                    self.run_dir.log(self.step, out)
                if callback is not None and callback(self, self.step, out) is False:
                    return self
        if self.run_dir is not None:
            self.save(self.run_dir.checkpoints / "last")
        return self

    def save(self, directory: str | os.PathLike) -> Path:
        """``save_pretrained`` of the model and tokenizer into ``directory`` (atomic swap)."""
        state = {"algo": self.algo, "step": self.step}
        self.last_checkpoint = save_checkpoint(Path(directory), self.model, self.tokenizer, {}, state)
        return self.last_checkpoint
