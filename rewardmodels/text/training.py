"""Training and evaluating the LM reward model (``rewardmodels.text.lm_reward.LMRewardModel``) on text preference pairs.

The pairwise Bradley-Terry loss (Stiennon et al. 2020, arXiv:2009.01325; Ouyang et al. 2022, arXiv:2203.02155) with an
optional margin (Touvron et al. 2023, Llama 2, arXiv:2307.09288, eq. 2) and reward centering (Eisenstein et al. 2023,
"Helping or Herding?", arXiv:2312.09244), data-parallel under ``accelerate launch`` (``textenv.distributed``).
Import these from ``rewardmodels.text.lm_reward`` as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from rewardmodels.losses import bradley_terry_loss
from rewardmodels.text.common import NonFiniteLossError, TokenizerMismatchError, tokenizers_match
from rewardmodels.text.preferences import TextPreferencePairs, load_text_preferences
from textenv.distributed import DataParallel, data_parallel

__all__ = ["pairwise_accuracy", "pairwise_bt_loss", "train_reward_model"]


def _margins(margin: float | Sequence[float] | None, n: int) -> np.ndarray:
    if margin is None:
        return np.zeros(n, dtype=np.float32)
    arr = np.asarray(margin, dtype=np.float32)
    if arr.ndim == 0:
        arr = np.full(n, float(arr), dtype=np.float32)
    if arr.shape != (n,):
        raise ValueError(f"margin must be a number or one value per pair ({n}), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError("margins must be finite and >= 0 (how much the chosen reward should exceed the rejected)")
    return arr


def _check_train_args(epochs: int, lr: float, batch_size: int, center_coef: float, max_grad_norm: float | None) -> None:
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a finite number > 0, got {lr}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if center_coef < 0:
        raise ValueError(f"center_coef must be >= 0 (Eisenstein et al. 2023 use 0.01), got {center_coef}")
    if max_grad_norm is not None and max_grad_norm <= 0:
        raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm}")


def pairwise_bt_loss(
    rewards_a: torch.Tensor, rewards_b: torch.Tensor, labels: torch.Tensor, margin: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Pairwise Bradley-Terry loss with an optional margin, all ``(B,)``.

    For a strict label: ``-log sigmoid(r_chosen - r_rejected - m)`` (Llama 2's margin loss); a tie (0.5) gives
    ``-0.5 log sigmoid(r_a - r_b) - 0.5 log sigmoid(r_b - r_a)`` without margin; NaN labels are ignored. The margin is
    folded into ``r_a`` as ``r_a - m (2y - 1)`` (``2y - 1`` is +1, -1, 0 for a preferred, b preferred, tie), so the
    soft-label cross-entropy :func:`rewardmodels.losses.bradley_terry_loss` does the rest.
    """
    shift = 0.0 if margin is None else margin * (2.0 * labels - 1.0).nan_to_num(0.0)
    loss, metrics = bradley_terry_loss(rewards_a - shift, rewards_b, labels)
    _, unshifted = bradley_terry_loss(rewards_a.detach(), rewards_b.detach(), labels)
    return loss, {**metrics, "accuracy": unshifted["accuracy"]}


class _ScoreIds(nn.Module):
    """``model.score_ids`` as a module's forward, for DDP to wrap (``LMRewardModel.__call__`` is the text
    interface)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.score_ids(input_ids, attention_mask)


def _batch_loss(
    model: nn.Module,
    scorer: nn.Module,
    rows_a: list[list[int]],
    rows_b: list[list[int]],
    labels: torch.Tensor,
    margins: torch.Tensor | None,
    idx: torch.Tensor,
    center_coef: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of the pairs ``idx``: both sides in one forward pass of ``scorer`` (the model, or its DDP wrapper),
    BT loss (+ margin) + centering."""
    ids, mask = model.collate([rows_a[i] for i in idx.tolist()] + [rows_b[i] for i in idx.tolist()])
    scores = scorer(ids, mask)  # (2b,)
    r_a, r_b = scores[: len(idx)], scores[len(idx) :]
    loss, metrics = pairwise_bt_loss(r_a, r_b, labels[idx], None if margins is None else margins[idx])
    centering = ((r_a + r_b) ** 2).mean()
    if center_coef:
        loss = loss + center_coef * centering
    return loss, {
        "rm/loss": float(loss.detach()),
        "rm/accuracy": float(metrics["accuracy"]),
        "rm/margin_abs": float(metrics["margin_abs"]),
        "rm/reward_mean_sq": float(centering.detach()),
    }


def _minibatch_loss(
    dp: DataParallel,
    model: nn.Module,
    scorer: nn.Module,
    batch: tuple[list[list[int]], list[list[int]], torch.Tensor, torch.Tensor | None],
    idx: torch.Tensor,
    center_coef: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss this process backpropagates for the minibatch ``idx``, and the minibatch's metrics.

    Data-parallel: this process's every world_size-th pair, its loss weighted by its share of the minibatch, so that
    DDP's gradient average is the combined minibatch's gradient; a process left without a pair (minibatch <
    processes) runs one with weight 0 to take part in the gradient all-reduce."""
    if not dp.active:
        return _batch_loss(model, scorer, *batch, idx, center_coef)
    local = dp.shard(idx)
    n_local = len(local)
    loss, metrics = _batch_loss(model, scorer, *batch, local if n_local else idx[:1], center_coef)
    loss = loss * (n_local * dp.world_size / len(idx))
    return loss, _combine_metrics(dp, metrics, n_local, model.device)


def _combine_metrics(
    dp: DataParallel, metrics: dict[str, float], n_local: int, device: torch.device
) -> dict[str, float]:
    """The processes' metrics of one global minibatch, each a mean weighted by the pairs it covers: the loss is then
    exactly the combined minibatch's (a non-finite loss in any process makes it non-finite), the accuracy the mean of
    the processes' strict-pair accuracies (a process without a strict pair, NaN, left out)."""
    values = torch.tensor(list(metrics.values()), dtype=torch.float64, device=device)
    is_loss = torch.tensor([key == "rm/loss" for key in metrics], device=device)
    valid = (is_loss | ~values.isnan()).double() * n_local
    values = torch.where(is_loss, values, values.nan_to_num(0.0))
    totals = dp.sum(torch.cat([values * valid, valid]))
    k = len(metrics)
    means = totals[:k] / totals[k:]
    return {key: float(v) for key, v in zip(metrics, means.tolist(), strict=True)}


def train_reward_model(
    model: nn.Module,
    pairs: TextPreferencePairs | Any,
    tokenizer: Any = None,
    epochs: int = 1,
    lr: float = 5e-5,
    batch_size: int = 8,
    margin: float | Sequence[float] | None = None,
    center_coef: float = 0.0,
    *,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
    seed: int = 0,
    eval_pairs: TextPreferencePairs | Any = None,
    log_fn: Callable[[int, dict[str, float]], Any] | None = None,
) -> dict[str, float]:
    """Fit ``model`` to text preference pairs with the pairwise Bradley-Terry loss (AdamW, gradient clipping).

    Loss per batch: :func:`pairwise_bt_loss` ``+ center_coef * mean((r_a + r_b)^2)`` (the reward-centering auxiliary
    loss of Eisenstein et al. 2023, which pins the reward's mean near 0 without changing preferences). Both responses
    of a batch go through the backbone in one forward pass. Skipped pairs (label NaN) are dropped; ties (0.5) train
    the two rewards towards each other.

    Under ``accelerate launch --num_processes N`` (``textenv.distributed``) every process reads the same pairs and
    shuffles them alike, trains on every N-th pair of each minibatch under DDP, and ends with the parameters one
    process gets on the whole minibatches (to float rounding); the logged metrics are the combined minibatch's, in
    every process (log from the main one: ``data_parallel().is_main``).

    Args:
        model: the reward model (trained in place; left in the train/eval mode it had).
        pairs: the training pairs: anything ``rewardmodels.text.preferences.load_text_preferences`` reads (a
            JSONL path, a ``datasets.Dataset``, records in this toolkit's or TRL's standard/conversational formats,
            explicit or implicit prompt, or ``TextPreferencePairs``), read with the model's tokenizer and context.
        tokenizer: must be the model's tokenizer (checked); default ``model.tokenizer``.
        epochs, lr, batch_size: optimisation settings.
        margin: None, one margin for all strict pairs, or one per pair of ``pairs`` (e.g. from rating gaps).
        center_coef: weight of the centering loss (0.01 in Eisenstein et al.).
        weight_decay: AdamW weight decay.
        max_grad_norm: gradient-norm clip, or None.
        seed: shuffling seed.
        eval_pairs: held-out pairs (any source, as ``pairs``); their accuracy is reported as ``eval_accuracy``.
        log_fn: called as ``log_fn(step, {"rm/loss": ..., "rm/accuracy": ..., ...})`` after every step
            (``RunDir.log`` fits).

    Returns:
        Final metrics: ``loss`` and ``accuracy`` (means over the last epoch), ``steps``, ``pairs_used``, and
        ``eval_accuracy`` if ``eval_pairs`` was given.

    Raises:
        TokenizerMismatchError: ``tokenizer`` is not the model's tokenizer.
        NonFiniteLossError: the loss became NaN/inf; that step is not applied (weights keep their last finite values).
        ValueError: bad settings, or no labelled pair.
        TextPreferenceError: bad data (``rewardmodels.text.preferences``; the message names the file and line), e.g.
            a prompt that fills the model's whole context.
    """
    _check_train_args(epochs, lr, batch_size, center_coef, max_grad_norm)
    if tokenizer is not None and not tokenizers_match(tokenizer, model.tokenizer):
        raise TokenizerMismatchError(
            "train_reward_model got a tokenizer that differs from the reward model's own; the model can only read "
            "ids from its own tokenizer (leave tokenizer=None to use model.tokenizer)"
        )
    pairs = load_text_preferences(pairs, model.tokenizer, max_length=model.max_length)
    if eval_pairs is not None:
        eval_pairs = load_text_preferences(eval_pairs, model.tokenizer, max_length=model.max_length)
    margins_all = _margins(margin, len(pairs))
    keep = np.flatnonzero(~np.isnan(pairs.labels))
    if keep.size == 0:
        raise ValueError("no labelled pair to train on (all labels are NaN = skipped)")
    data = pairs[keep]
    margins = torch.as_tensor(margins_all[keep], device=model.device) if margin is not None else None
    labels = torch.as_tensor(data.labels, device=model.device)
    rows_a = model.encode(data.prompts, data.responses_a)
    rows_b = model.encode(data.prompts, data.responses_b)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)  # the same order in every process of a data-parallel launch
    dp = data_parallel()
    scorer = dp.wrap(_ScoreIds(model)) if dp.active else model.score_ids
    was_training = model.training
    model.train()
    step, n = 0, len(data)
    history: list[dict[str, float]] = []
    try:
        for _ in range(epochs):
            history = []  # the returned means cover the last epoch
            order = rng.permutation(n)
            for start in range(0, n, batch_size):
                idx = torch.as_tensor(order[start : start + batch_size], device=model.device)
                batch = (rows_a, rows_b, labels, margins)
                loss, metrics = _minibatch_loss(dp, model, scorer, batch, idx, center_coef)
                if not math.isfinite(metrics["rm/loss"]):  # the combined loss: every process stops together
                    raise NonFiniteLossError(
                        f"reward-model loss is {metrics['rm/loss']} at step {step}; the update was not applied. "
                        "Lower lr (or enable max_grad_norm), and check the data for extreme margins."
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                optimizer.step()
                step += 1
                history.append(metrics)
                if log_fn is not None:
                    log_fn(step, metrics)
    finally:
        model.train(was_training)
    accs = [m["rm/accuracy"] for m in history if not math.isnan(m["rm/accuracy"])]
    epoch_loss = [m["rm/loss"] for m in history]
    result = {
        "loss": float(np.mean(epoch_loss)),
        "accuracy": float(np.mean(accs)) if accs else float("nan"),
        "steps": float(step),
        "pairs_used": float(n),
    }
    if eval_pairs is not None:
        result["eval_accuracy"] = pairwise_accuracy(model, eval_pairs)
    return result


def pairwise_accuracy(model: Callable[[list[str], list[str]], Any], pairs: TextPreferencePairs | Any) -> float:
    """Fraction of strict pairs (labels 0/1) on which ``model`` scores the preferred response higher (a zero gap
    counts half). ``model`` is any ``(prompts, responses) -> (B,)`` scorer; ``pairs`` any source
    ``load_text_preferences`` reads (conversations rendered with ``model.tokenizer``). NaN if there is no strict
    pair."""
    strict = load_text_preferences(pairs, getattr(model, "tokenizer", None)).strict()
    if len(strict) == 0:
        return float("nan")
    r_c = torch.as_tensor(model(strict.prompts, strict.chosen), dtype=torch.float64).cpu()
    r_r = torch.as_tensor(model(strict.prompts, strict.rejected), dtype=torch.float64).cpu()
    return float(((r_c > r_r).double() + 0.5 * (r_c == r_r).double()).mean())
