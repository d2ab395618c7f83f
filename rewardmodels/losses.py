"""Bradley-Terry preference losses over summed segment rewards (pure functions: tensors in, loss + metrics out)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _check_noise(noise: float) -> None:
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise is the random-response probability and must be in [0, 1], got {noise}")


def preference_log_probs(returns_a: torch.Tensor, returns_b: torch.Tensor,
                         noise: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """log P(a > b) and log P(b > a) under the noisy Bradley-Terry model, computed stably.

    P(a > b) = noise / 2 + (1 - noise) * sigmoid(R_a - R_b). With noise = 0 this is ``logsigmoid(R_a - R_b)``;
    otherwise ``logaddexp(log(noise / 2), log(1 - noise) + logsigmoid(R_a - R_b))``, which never forms
    ``log(sigmoid(.))`` of an underflowed number, so large return gaps give finite losses and gradients.

    Shapes: returns_a, returns_b (B,) -> two (B,) tensors.
    """
    _check_noise(noise)
    d = returns_a - returns_b  # (B,)
    if noise == 0.0:
        return F.logsigmoid(d), F.logsigmoid(-d)
    floor = torch.full_like(d, math.log(noise / 2.0))
    scale = math.log1p(-noise) if noise < 1.0 else -math.inf
    return torch.logaddexp(floor, scale + F.logsigmoid(d)), torch.logaddexp(floor, scale + F.logsigmoid(-d))


def preference_probability(returns_a: torch.Tensor, returns_b: torch.Tensor, noise: float = 0.0) -> torch.Tensor:
    """P(a > b) = noise / 2 + (1 - noise) * sigmoid(R_a - R_b); shapes (B,), (B,) -> (B,)."""
    _check_noise(noise)
    return noise / 2.0 + (1.0 - noise) * torch.sigmoid(returns_a - returns_b)


def bradley_terry_loss(
    returns_a: torch.Tensor,
    returns_b: torch.Tensor,
    labels: torch.Tensor,
    noise: float = 0.0,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy between preference labels and the (noisy) Bradley-Terry model of summed segment rewards.

    Model (Bradley & Terry 1952; Christiano et al. 2017, "Deep reinforcement learning from human preferences",
    arXiv:1706.03741, section 2.2.3)::

        R_x = sum_t r(s_t, a_t)  over segment x (padded steps contribute the absorbing reward; see nets.py)
        P(a > b) = noise / 2 + (1 - noise) * sigmoid(R_a - R_b)

    ``noise`` is the paper's random-response rate: "a 10% chance that the human responds uniformly at random",
    i.e. noise = 0.1 gives P = 0.05 + 0.9 * sigmoid(R_a - R_b).

    Loss, with soft targets y (1 = a preferred, 0 = b preferred, 0.5 = tie) over the labelled pairs L (NaN labels,
    i.e. skipped queries, are excluded) and optional per-pair weights w (default 1)::

        loss = -sum_{i in L} w_i [y_i log P_i(a > b) + (1 - y_i) log P_i(b > a)] / sum_{i in L} w_i

    A tie therefore pulls R_a and R_b together (its minimum is at P = 0.5, with loss log 2 when noise = 0).

    Args:
        returns_a: (B,) predicted returns of the first segments.
        returns_b: (B,) predicted returns of the second segments.
        labels: (B,) in {0, 0.5, 1, NaN}.
        noise: random-response probability in [0, 1].
        weights: optional (B,) non-negative pair weights.

    Returns:
        ``(loss, metrics)``: a scalar loss (0 with a graph when no pair is labelled) and detached scalars
        ``accuracy`` (fraction of non-tie labelled pairs where sign(R_a - R_b) agrees with the label; a zero gap
        counts half; NaN if there is none), ``n_labelled``, ``n_ties``, ``prob_a_mean`` (mean model P(a > b)) and
        ``margin_abs`` (mean |R_a - R_b|), both over the labelled pairs.
    """
    if returns_a.shape != returns_b.shape or returns_a.shape != labels.shape or returns_a.ndim != 1:
        raise ValueError(f"returns_a, returns_b and labels must all be (B,); got {tuple(returns_a.shape)}, "
                         f"{tuple(returns_b.shape)}, {tuple(labels.shape)}")
    labels = labels.to(returns_a.dtype)
    valid = ~torch.isnan(labels)  # (B,)
    y = torch.where(valid, labels, torch.full_like(labels, 0.5))
    log_p_a, log_p_b = preference_log_probs(returns_a, returns_b, noise)  # (B,), (B,)
    nll = -(y * log_p_a + (1.0 - y) * log_p_b)  # (B,)
    w = valid.to(returns_a.dtype)
    if weights is not None:
        if weights.shape != labels.shape:
            raise ValueError(f"weights must be (B,) like labels, got {tuple(weights.shape)}")
        w = w * weights.to(returns_a.dtype)
    # where() rather than multiplying by 0: a NaN label's nll is finite anyway, but this keeps inf*0 out for sure.
    loss = torch.where(w > 0, nll * w, torch.zeros_like(nll)).sum() / w.sum().clamp_min(torch.finfo(w.dtype).tiny)

    with torch.no_grad():
        d = returns_a - returns_b
        decisive = valid & (y != 0.5)
        agree = torch.where(d == 0, torch.full_like(d, 0.5), ((d > 0) == (y > 0.5)).to(d.dtype))
        n_dec = decisive.sum()
        n_val = valid.sum()
        nan = torch.full((), float("nan"), dtype=d.dtype, device=d.device)
        metrics = {
            "accuracy": torch.where(n_dec > 0, (agree * decisive).sum() / n_dec.clamp_min(1), nan),
            "n_labelled": n_val.to(d.dtype),
            "n_ties": (valid & (y == 0.5)).sum().to(d.dtype),
            "prob_a_mean": torch.where(n_val > 0, (log_p_a.exp() * valid).sum() / n_val.clamp_min(1), nan),
            "margin_abs": torch.where(n_val > 0, (d.abs() * valid).sum() / n_val.clamp_min(1), nan),
        }
    return loss, metrics
