"""DPO and its relatives, offline from labelled text pairs, against a frozen reference (no env, no reward model).

Direct Preference Optimization (Rafailov et al. 2023) trains the policy so that its implicit reward
``beta * (log pi(y|x) - log pi_ref(y|x))`` ranks the chosen response above the rejected one. ``loss_type`` picks the
sigmoid (DPO), ``"ipo"`` (Azar et al. 2023) or ``"hinge"`` (SLiC, Zhao et al. 2023) loss; ``label_smoothing`` is
conservative DPO (cDPO, Mitchell 2023) for noisy labels. The math lives in :func:`agents.llm.losses.dpo_loss`, the
training loop, encoding and checkpoints in :mod:`agents.llm.offline`.

Pairs come from ``rewardmodels.text.preferences.TextPreferencePairs`` (or any iterable of
``(prompt, chosen, rejected)``); a ``label`` follows the project convention (1 = first response preferred,
0 = second, 0.5 = tie, NaN = skipped). Ties and skipped pairs carry no direction and are left out.
"""

from __future__ import annotations

import dataclasses

import torch

from agents.llm.losses import dpo_loss
from agents.llm.offline import OfflineConfig, OfflineTrainer, preference_triples
from textenv.checks import check

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


@dataclasses.dataclass
class DPOConfig(OfflineConfig):
    """DPO settings (and, keyword-only, the optimiser and batching settings of :class:`OfflineConfig`)."""

    beta: float = 0.1
    """Strength of the implicit KL constraint: the implicit reward is ``beta * log(pi / pi_ref)``."""
    loss_type: str = "sigmoid"
    """``"sigmoid"`` (DPO), ``"ipo"`` (IPO) or ``"hinge"`` (SLiC)."""
    label_smoothing: float = 0.0
    """cDPO: assumed probability that a label is flipped, in [0, 0.5)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.beta > 0, f"beta must be > 0, got {self.beta}")
        check(self.loss_type in LOSS_TYPES, f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        check(0 <= self.label_smoothing < 0.5, f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        check(
            self.label_smoothing == 0 or self.loss_type == "sigmoid",
            "label_smoothing (cDPO) applies to loss_type='sigmoid' only; set it to 0 for ipo/hinge",
        )


class DPOTrainer(OfflineTrainer):
    """Offline DPO on labelled text pairs (``data``: see :func:`agents.llm.offline.preference_triples`); ``learn()``
    returns ``self`` and trains ``model`` in place."""

    algo = "dpo"
    unit = "pairs"
    config: DPOConfig
    config_class = DPOConfig

    def __init__(self, model, tokenizer, pairs, config: DPOConfig | None = None, ref_model=None, run_dir=None):
        super().__init__(model, tokenizer, pairs, config, ref_model, run_dir)  # ``pairs=``, as in rlhf-gym 0.1

    def read_data(self, data) -> int:
        self.triples = preference_triples(data, self.tokenizer)
        return len(self.triples)

    def compute_reference(self) -> None:
        prompts, chosen, rejected = (list(column) for column in zip(*self.triples, strict=True))
        self.ref_chosen = self.reference_logps(prompts, chosen)
        self.ref_rejected = self.reference_logps(prompts, rejected)

    def _policy_logps(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prompts, c, r = zip(*(self.triples[i] for i in idx.tolist()), strict=True)
        # One forward over chosen and rejected together (half the kernel launches of two calls).
        logps = self.logps(self.model, prompts + prompts, c + r)
        return logps[: len(idx)], logps[len(idx) :]

    def batch_loss(self, rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.config
        pc, pr = self._policy_logps(rows)
        return dpo_loss(
            pc,
            pr,
            self.ref_chosen[rows],
            self.ref_rejected[rows],
            beta=cfg.beta,
            loss_type=cfg.loss_type,
            label_smoothing=cfg.label_smoothing,
        )

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Implicit-reward accuracy and margin over all training pairs (no update)."""
        margins = []
        for idx in self.chunks():
            pc, pr = self._policy_logps(idx)
            margins.append(self.config.beta * ((pc - self.ref_chosen[idx]) - (pr - self.ref_rejected[idx])))
        m = torch.cat(margins)
        return {"eval/reward_margin": float(m.mean()), "eval/reward_accuracy": float((m > 0).float().mean())}
