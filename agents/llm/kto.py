"""KTO (Kahneman-Tversky Optimization; Ethayarajh et al. 2024, arXiv:2402.01306), offline from unpaired examples.

Each example is a prompt, a completion and one bit: desirable or undesirable. With the implied reward
``r = log pi(y|x) - log pi_ref(y|x)`` and the reference point ``z0 = max(0, mean r(x, y'))`` estimated on mismatched
pairs of the same minibatch, the loss is ``w_D (1 - sigmoid(beta (r - z0)))`` on desirable completions and
``w_U (1 - sigmoid(beta (z0 - r)))`` on undesirable ones (:func:`agents.llm.losses.kto_loss`): the policy raises the
likelihood of desirable completions above what it gives other prompts' completions, and lowers undesirable ones below.

Data: unpaired ``(prompt, completion, desirable)`` rows, or preference pairs, each of which gives two rows (chosen
desirable, rejected undesirable), as TRL's ``KTOTrainer`` does with paired data. The training loop, encoding and
checkpoints are :mod:`agents.llm.offline`'s, shared with DPO.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from agents.llm.losses import kto_kl_ref_point, kto_loss
from agents.llm.math import masked_mean
from agents.llm.offline import OfflineConfig, OfflineTrainer, preference_triples
from rewardmodels.text.preferences import (
    EmptyResponseError,
    TextPreferenceError,
    TextPreferencePairs,
    iter_records,
    render_conversation,
)
from textenv.checks import check

logger = logging.getLogger(__name__)


@dataclasses.dataclass(kw_only=True)
class KTOConfig(OfflineConfig):
    """KTO settings (keyword-only). ``batch_size`` must be >= 2: the reference point of a minibatch pairs each
    prompt with another row's completion."""

    beta: float = 0.1
    """Scale of the implied reward ``beta * log(pi / pi_ref)`` inside the sigmoid: larger values saturate the loss
    sooner and keep the policy closer to the reference (the paper's and TRL's default: 0.1)."""
    desirable_weight: float = 1.0
    """``w_D``, the weight of the loss on desirable examples. The paper (section 4.2) advises weights such that
    ``w_D n_D / (w_U n_U)`` lies in [1, 4/3] for ``n_D`` desirable and ``n_U`` undesirable examples; the trainer logs
    a warning when the data falls outside."""
    undesirable_weight: float = 1.0
    """``w_U``, the weight of the loss on undesirable examples (see ``desirable_weight``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.beta > 0, f"beta must be > 0, got {self.beta}")
        check(
            self.desirable_weight > 0 and self.undesirable_weight > 0,
            f"desirable_weight and undesirable_weight must be > 0, got {self.desirable_weight} and "
            f"{self.undesirable_weight}; to train on one kind only, give data of that kind only",
        )
        check(
            self.batch_size >= 2,
            f"batch_size must be >= 2 for KTO, got {self.batch_size}: the reference point z0 of a minibatch pairs "
            "each prompt with another row's completion, which a minibatch of one does not have",
        )


def kto_examples(data, tokenizer=None) -> list[tuple[str, str, bool]]:
    """``(prompt, completion, desirable)`` rows from unpaired examples and/or preference pairs.

    ``data`` is a list, a .jsonl/.json path or a ``datasets.Dataset`` of rows. Unpaired rows are ``(prompt,
    completion, desirable)`` tuples whose third item is a bool, or dicts with ``prompt``, ``completion`` and ``label``
    (TRL's unpaired format, also conversational: message lists rendered with ``tokenizer``'s chat template) or
    ``desirable``. Any other row is a preference pair as :func:`agents.llm.offline.preference_triples` reads it
    (``TextPreferencePairs``, ``(prompt, chosen, rejected)`` triples, dicts with ``chosen``/``rejected``); each gives
    its chosen response as desirable and its rejected one as undesirable (ties and skipped pairs are dropped).

    Raises:
        TextPreferenceError: a label that is not True/False, or no example at all; the message names the row.
        EmptyResponseError: an empty completion.
    """
    if isinstance(data, TextPreferencePairs):
        return _pair_examples(data, tokenizer)
    examples: list[tuple[str, str, bool]] = []
    pairs = []
    for row, where in iter_records(data):
        unpaired = _unpaired(row)
        if unpaired is None:
            pairs.append(row)
            continue
        prompt, completion, label = unpaired
        if not isinstance(label, (bool, np.bool_)):
            raise TextPreferenceError(f"{where} has desirable={label!r}; give True (desirable) or False (undesirable)")
        if isinstance(prompt, list) or isinstance(completion, list):
            prompt, completion, _ = render_conversation(list(prompt), list(completion), list(completion), tokenizer,
                                                        where)
        if not str(completion).strip():
            raise EmptyResponseError(f"{where} has an empty completion; drop or regenerate it")
        examples.append((prompt, completion, bool(label)))
    if pairs:
        examples += _pair_examples(pairs, tokenizer)
    if not examples:
        raise TextPreferenceError("no examples: give (prompt, completion, desirable) rows or preference pairs")
    return examples


def _pair_examples(pairs, tokenizer) -> list[tuple[str, str, bool]]:
    examples = []
    for prompt, chosen, rejected in preference_triples(pairs, tokenizer):
        examples += [(prompt, chosen, True), (prompt, rejected, False)]
    return examples


def _unpaired(row) -> tuple | None:
    if isinstance(row, dict):
        if "completion" not in row:
            return None
        return row["prompt"], row["completion"], row["label"] if "label" in row else row.get("desirable")
    if len(row) == 3 and isinstance(row[2], (bool, np.bool_)):
        return tuple(row)
    return None


class KTOTrainer(OfflineTrainer):
    """Offline KTO on unpaired examples or preference pairs (``data``: see :func:`kto_examples`); ``learn()`` returns
    ``self`` and trains ``model`` in place against ``ref_model`` (default: a frozen copy of ``model`` at
    construction)."""

    algo = "kto"
    unit = "examples"
    min_batch = 2  # the reference point needs another row's completion (TRL refuses batches of one likewise)
    config: KTOConfig
    config_class = KTOConfig

    def read_data(self, data) -> int:
        self.examples = kto_examples(data, self.tokenizer)
        if len(self.examples) < 2:
            raise TextPreferenceError(
                "KTO needs at least 2 examples: the reference point pairs each prompt with another completion"
            )
        return len(self.examples)

    def compute_reference(self) -> None:
        prompts, completions, desirable = zip(*self.examples, strict=True)
        self.desirable = torch.tensor(desirable, dtype=torch.bool, device=self.device)  # (N,)
        self.ref_logps = self.reference_logps(list(prompts), list(completions))  # (N,)
        self._check_balance(sum(desirable), len(desirable) - sum(desirable))

    def _check_balance(self, n_desirable: int, n_undesirable: int) -> None:
        cfg = self.config
        ratio = cfg.desirable_weight * n_desirable / max(cfg.undesirable_weight * n_undesirable, 1e-12)
        if not 1.0 <= ratio <= 4.0 / 3.0:  # Ethayarajh et al. 2024, section 4.2
            logger.warning(
                "KTO: desirable_weight * n_desirable / (undesirable_weight * n_undesirable) = %.3g * %d / (%.3g * %d) "
                "is outside the paper's advised [1, 4/3]; adjust the weights to the data's balance",
                cfg.desirable_weight,
                n_desirable,
                cfg.undesirable_weight,
                n_undesirable,
            )

    def _text(self, rows: torch.Tensor) -> tuple[list[str], list[str]]:
        picked = [self.examples[i] for i in rows.tolist()]
        return [p for p, _, _ in picked], [c for _, c, _ in picked]

    def batch_loss(self, rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.config
        prompts, completions = self._text(rows)
        logps = self.logps(self.model, prompts, completions)  # (B,), with gradient
        with torch.no_grad():  # z0 carries no gradient (Ethayarajh et al. 2024, section 4.1)
            # TRL's mismatched pairs: row i's prompt with row i-1's completion, the same completions shifted by one.
            shifted = completions[-1:] + completions[:-1]
            z0 = kto_kl_ref_point(
                self.logps(self.model, prompts, shifted), self.logps(self.ref_model, prompts, shifted)
            )
        return kto_loss(
            logps,
            self.ref_logps[rows],
            self.desirable[rows],
            z0,
            beta=cfg.beta,
            desirable_weight=cfg.desirable_weight,
            undesirable_weight=cfg.undesirable_weight,
        )

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean implied reward ``beta * (log pi - log pi_ref)`` of the desirable and of the undesirable examples, and
        their difference (no update)."""
        ratios = torch.cat([self.logps(self.model, *self._text(idx)) - self.ref_logps[idx] for idx in self.chunks()])
        desirable = float(self.config.beta * masked_mean(ratios, self.desirable))
        undesirable = float(self.config.beta * masked_mean(ratios, ~self.desirable))
        return {
            "eval/rewards_desirable": desirable,
            "eval/rewards_undesirable": undesirable,
            "eval/reward_margin": desirable - undesirable,
        }
