"""Shared RL math for the LLM agents: masked statistics, GAE and KL estimators (the env's KL penalty
itself, fixed or adaptive, is ``textenv.kl.KLPenalty``).

Every function here is a pure function of tensors (no optimiser, logger or device moves) and works batched on
whatever device its inputs live on. Shapes follow one convention: ``B`` sequences (rows) by ``T`` response tokens,
with a boolean (or 0/1) ``mask`` of shape ``(B, T)`` that is True on valid response tokens and False on padding.
"""

from __future__ import annotations

import torch

__all__ = [
    "entropy_from_logits",
    "gae",
    "kl_estimate",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "whiten",
]


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is True.

    ``sum(x * mask) / sum(mask)`` over all elements (``dim=None``, a 0-d tensor) or along ``dim``.

    Args:
        x: values, any shape, e.g. ``(B, T)``.
        mask: same shape as ``x`` (or broadcastable to it); True / 1 marks valid entries.
        dim: reduce along this dimension only; ``None`` reduces over everything.

    Returns:
        The masked mean. Where no entry is valid the result is 0 (not NaN), so an empty minibatch cannot poison
        a loss; the denominator is clamped to at least 1.
    """
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over the valid positions of ``mask`` (all dimensions reduced; 0-d tensor).

    ``var = mean_m((x - mean_m(x))^2)``, times Bessel's correction ``n / (n - 1)`` when ``unbiased`` (``n`` = number
    of valid entries). With ``n <= 1`` the result is 0 (no spread can be measured).

    Args:
        x: values, e.g. ``(B, T)``.
        mask: same shape as ``x``; True marks valid entries.
        unbiased: apply Bessel's correction (as ``torch.var`` does by default).
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.to(x.dtype).sum()
        var = var * n / (n - 1).clamp(min=1.0)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise ``x`` to unit variance (and zero mean) using statistics of the valid positions only.

    ``y = (x - mean_m(x)) / sqrt(var_m(x) + eps)``; with ``shift_mean=False`` the mean is added back,
    ``y = (x - mean) / std + mean``, which rescales rewards without changing their sign structure (the "N
    implementation details of RLHF with PPO", Huang et al. 2024, whiten rewards without shifting the mean; advantage
    normalisation is detail #7 of "The 37 implementation details of PPO", Huang et al. 2022).

    Args:
        x: values, e.g. rewards or advantages ``(B, T)``.
        mask: ``(B, T)``; True marks valid entries. Padded positions of the output are 0.
        shift_mean: subtract the mean (True) or keep it (False).
        eps: added to the variance before the square root.

    Returns:
        Whitened tensor with the shape of ``x``.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(x.dtype)


whiten = masked_whiten  # short alias


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
    last_values: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2015, "High-Dimensional Continuous Control Using
    Generalized Advantage Estimation", arXiv:1506.02438).

    For the valid tokens of each row, with ``V(s_next)`` the value at the row's next valid token::

        delta_t = r_t + gamma * V(s_next) - V(s_t)
        A_t     = delta_t + gamma * lam * A_next
        R_t     = A_t + V(s_t)          (the value target, "returns")

    Episode ends: a row's episode is the sequence of its valid tokens; invalid positions are skipped as if absent
    (left or right padding both work). After the last valid token nothing is bootstrapped: ``V = 0`` and ``A = 0``
    there, because an LM episode ends on EOS (terminal) and, as in RLHF practice, a truncated response is scored as it
    is. The one exception: if a row's last valid token is the final column ``T - 1`` and ``last_values`` is given, its
    ``last_values`` entry is used as ``V(s_T)`` (a window that cut a longer episode); set it to 0 for rows that
    terminated exactly at ``T - 1``.

    Args:
        rewards: ``(B, T)`` per-token rewards (e.g. the KL penalty plus the score at the last token).
        values: ``(B, T)`` value estimates ``V(s_t)`` of the states in which each token was chosen.
        mask: ``(B, T)`` True on valid response tokens.
        gamma: discount (1.0 is the default for text: the episode is short and the reward comes at the end).
        lam: GAE lambda (0.95, Ziegler et al. 2019 / Huang et al. 2024).
        last_values: optional ``(B,)`` bootstrap values, see above.

    Returns:
        ``(advantages, returns)``, both ``(B, T)``, 0 on invalid positions. Computed without gradient flow into
        ``values`` being required (callers usually pass detached values).
    """
    if rewards.shape != values.shape or rewards.shape != mask.shape or rewards.dim() != 2:
        raise ValueError(
            f"gae expects rewards, values and mask of the same (B, T) shape; got {tuple(rewards.shape)}, "
            f"{tuple(values.shape)}, {tuple(mask.shape)}"
        )
    mask = mask.bool()
    B, T = rewards.shape
    next_value = torch.zeros(B, dtype=values.dtype, device=values.device)
    if last_values is not None:
        next_value = torch.where(mask[:, -1], last_values.to(values.dtype), next_value)
    next_adv = torch.zeros_like(next_value)
    advantages = torch.zeros_like(values)
    # Python loop over T is fine here: this runs once per rollout batch, not inside the per-token env loop.
    for t in reversed(range(T)):
        valid = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = delta + gamma * lam * next_adv
        advantages[:, t] = torch.where(valid, adv, torch.zeros_like(adv))
        # invalid positions pass the carried state through unchanged (they are not part of the episode)
        next_value = torch.where(valid, values[:, t], next_value)
        next_adv = torch.where(valid, adv, next_adv)
    returns = (advantages + values) * mask.to(values.dtype)
    return advantages, returns


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-sample estimators of ``KL(pi || pi_ref)`` from log-probabilities of tokens sampled from ``pi``
    (Schulman 2020, "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html).

    With ``log_r = ref_logp - logp`` (log of ``pi_ref / pi`` at the sampled token):

    - ``"k1"``: ``-log_r = logp - ref_logp``; unbiased, high variance, can be negative (the RLHF per-token penalty,
      Ziegler et al. 2019).
    - ``"k2"``: ``0.5 * log_r^2``; biased, low variance, always >= 0.
    - ``"k3"``: ``exp(log_r) - log_r - 1``; unbiased and always >= 0 (the GRPO KL term, Shao et al. 2024).

    Args:
        logp: ``(B, T)`` (any shape) log-probabilities of the sampled tokens under the policy.
        ref_logp: same shape, under the reference model.
        kind: ``"k1"``, ``"k2"`` or ``"k3"``.

    Returns:
        Element-wise estimates, same shape as ``logp``; mask and average them with :func:`masked_mean`.
    """
    log_r = ref_logp - logp
    if kind == "k1":
        return -log_r
    if kind == "k2":
        return 0.5 * log_r**2
    if kind == "k3":
        return torch.expm1(log_r) - log_r  # exp(x) - 1 - x, accurate for small x
    raise ValueError(f"unknown KL estimator kind={kind!r}; use 'k1', 'k2' or 'k3'")


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy ``H = logsumexp(z) - sum_v softmax(z)_v z_v`` of the categorical distributions in ``logits``
    ``(B, T, V)``; returns ``(B, T)``."""
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)
