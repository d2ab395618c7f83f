"""Pure loss functions of the LLM agents: PPO, GRPO, RLOO, DPO (and IPO / hinge / cDPO) and KTO.

Each loss takes tensors and returns ``(loss, metrics)``: a scalar loss to minimise and a dict of named, detached
scalar tensors (``approx_kl``, ``clipfrac``, ...). No optimiser, logging or device moves happen here; callers add a
namespace (``losses/approx_kl``) when they log. Shapes: ``B`` sequences, ``T`` response tokens, ``V`` vocabulary;
``mask`` ``(B, T)`` is True on valid response tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from agents.llm.math import kl_estimate, masked_mean

__all__ = [
    "GroupSizeError",
    "dpo_loss",
    "grpo_advantages",
    "grpo_loss",
    "kto_kl_ref_point",
    "kto_loss",
    "ppo_policy_loss",
    "ppo_value_loss",
    "rloo_advantages",
    "sequence_logprobs",
]

Metrics = dict[str, torch.Tensor]


class GroupSizeError(ValueError):
    """A group-baseline method (GRPO, RLOO) was given a group size it cannot use."""


def _check_group(rewards: torch.Tensor, group_size: int, method: str) -> None:
    if int(group_size) != group_size or group_size < 2:
        raise GroupSizeError(
            f"{method} needs group_size >= 2 completions per prompt (the baseline comes from the other samples of "
            f"the group), got group_size={group_size!r}; sample at least 2 completions per prompt"
        )
    if rewards.dim() != 1 or rewards.shape[0] % group_size != 0:
        raise GroupSizeError(
            f"{method} expects rewards of shape (B,) with B a multiple of group_size={group_size}, laid out as "
            f"contiguous groups (prompt 0's samples, then prompt 1's, ...); got shape {tuple(rewards.shape)}"
        )


def sequence_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of ``labels`` under ``logits``, per token and summed per sequence.

    ``logp[b, t] = log softmax(logits[b, t])[labels[b, t]] * mask[b, t]`` and ``total[b] = sum_t logp[b, t]``
    (the sequence log-likelihood ``log pi(y | x)`` used by DPO, KTO and the PPO ratio).

    Args:
        logits: ``(B, T, V)``, already aligned with ``labels``: ``logits[:, t]`` is the distribution over
            ``labels[:, t]``. For a causal LM on ``input_ids`` pass ``logits[:, :-1]`` and ``input_ids[:, 1:]``.
        labels: ``(B, T)`` token ids; masked positions may hold anything (``-100`` or pad ids).
        mask: ``(B, T)`` True on the tokens to score (usually the response tokens).

    Returns:
        ``(per_token, total)``: ``(B, T)`` (0 where masked) and ``(B,)``. Half-precision logits are scored in float32.
    """
    if logits.shape[:2] != labels.shape or labels.shape != mask.shape:
        raise ValueError(
            f"sequence_logprobs expects logits (B, T, V) aligned with labels and mask (B, T); got "
            f"{tuple(logits.shape)}, {tuple(labels.shape)}, {tuple(mask.shape)} (did you forget to shift by one?)"
        )
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    mask = mask.bool()
    safe_labels = torch.where(mask, labels, torch.zeros_like(labels))
    # gather - logsumexp avoids materialising the full (B, T, V) log_softmax
    picked = torch.gather(logits, -1, safe_labels.unsqueeze(-1)).squeeze(-1)
    per_token = (picked - torch.logsumexp(logits, dim=-1)) * mask.to(logits.dtype)
    return per_token, per_token.sum(-1)


def ppo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, Metrics]:
    """PPO clipped surrogate objective (Schulman et al. 2017, arXiv:1707.06347, eq. 7), per token.

    ``rho_t = exp(logp_t - old_logp_t)``;
    ``L = mean_m( max(-A_t * rho_t, -A_t * clip(rho_t, 1 - eps, 1 + eps)) )`` over all valid tokens of the batch.

    Args:
        logp: ``(B, T)`` log-probabilities of the taken tokens under the current policy (with gradient).
        old_logp: ``(B, T)`` the same under the policy that sampled them.
        advantages: ``(B, T)`` (or ``(B, 1)`` for one advantage per sequence).
        mask: ``(B, T)`` True on valid response tokens.
        clip_eps: the clip range epsilon.

    Returns:
        ``(loss, metrics)`` with ``approx_kl`` (the k3 estimator ``(rho - 1) - log rho`` of KL(old || new), as in
        "The 37 implementation details of PPO", Huang et al. 2022), ``clipfrac`` (fraction of tokens with
        ``|rho - 1| > eps``) and ``ratio`` (mean ``rho``).
    """
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(pg1, pg2), mask)
    with torch.no_grad():
        metrics = {
            "approx_kl": masked_mean(ratio - 1.0 - log_ratio, mask),
            "clipfrac": masked_mean(((ratio - 1.0).abs() > clip_eps).to(logp.dtype), mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, metrics


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float | None = 0.2,
) -> tuple[torch.Tensor, Metrics]:
    """Clipped value loss ("The 37 implementation details of PPO", Huang et al. 2022, detail #9; used by the
    OpenAI RLHF code, "The N implementation details of RLHF with PPO", Huang et al. 2024).

    ``V_clip = old_V + clip(V - old_V, -eps, eps)``;
    ``L = 0.5 * mean_m( max((V - R)^2, (V_clip - R)^2) )``;
    with ``clip_eps=None`` the plain ``0.5 * mean_m((V - R)^2)``.

    Args:
        values: ``(B, T)`` current value predictions (with gradient).
        old_values: ``(B, T)`` predictions at rollout time.
        returns: ``(B, T)`` value targets (from :func:`agents.llm.math.gae`).
        mask: ``(B, T)`` True on valid tokens.
        clip_eps: clip range for the value change, or None for no clipping.

    Returns:
        ``(loss, metrics)`` with ``vf_clipfrac`` (fraction of tokens where the clipped branch is larger) and
        ``value_mean``.
    """
    unclipped = (values - returns) ** 2
    if clip_eps is None:
        loss = 0.5 * masked_mean(unclipped, mask)
        clipfrac = torch.zeros((), dtype=values.dtype, device=values.device)
    else:
        v_clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
        clipped = (v_clipped - returns) ** 2
        loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
        clipfrac = masked_mean((clipped > unclipped).to(values.dtype), mask).detach()
    return loss, {"vf_clipfrac": clipfrac, "value_mean": masked_mean(values.detach(), mask)}


def grpo_advantages(
    rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """Group-relative advantages of GRPO (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300, section 4.1.2).

    For the ``G = group_size`` completions ``i`` of one prompt: ``A_i = (r_i - mean_g(r)) / (std_g(r) + eps)``, with
    the unbiased group standard deviation (as TRL). With ``scale=False``: ``A_i = r_i - mean_g(r)``, the Dr. GRPO
    correction (Liu et al. 2025, "Understanding R1-Zero-Like Training", arXiv:2503.20783), which removes the bias
    towards prompts of low reward variance. A group whose rewards are all equal gets advantages of exactly 0.

    Args:
        rewards: ``(B,)`` sequence rewards, ``B = n_prompts * G``, laid out as contiguous groups.
        group_size: ``G >= 2``.
        scale: divide by the group std.
        eps: added to the std.

    Returns:
        ``(B,)`` advantages (one per sequence; broadcast over its tokens).

    Raises:
        GroupSizeError: ``group_size < 2`` or ``B`` not a multiple of it.
    """
    _check_group(rewards, group_size, "GRPO")
    grouped = rewards.view(-1, group_size)  # (n_prompts, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    beta: float = 0.04,
    aggregation: str = "token-mean",
    max_tokens: int | None = None,
    kl_ratio: bool = False,
) -> tuple[torch.Tensor, Metrics]:
    """GRPO objective (Shao et al. 2024, arXiv:2402.03300, eq. 3) with a choice of token aggregation.

    Per token: ``l_t = -min(rho_t * A, clip(rho_t, 1-eps, 1+eps) * A) + beta * k3_t``, where ``rho_t =
    exp(logp_t - old_logp_t)`` and ``k3_t = exp(ref_logp_t - logp_t) - (ref_logp_t - logp_t) - 1`` (the unbiased,
    non-negative KL estimator of Schulman 2020). Aggregation over the valid tokens ``m``:

    - ``"sequence-mean"``: ``mean_i( sum_t l_it / |o_i| )`` (the original paper: long and short answers weigh the
      same per sequence, so each token of a long answer counts less).
    - ``"token-mean"``: ``sum_it l_it / sum_i |o_i|`` (DAPO, Yu et al. 2025, arXiv:2503.14476; every token counts the
      same).
    - ``"dr-grpo"``: ``sum_it l_it / (B * max_tokens)`` (Liu et al. 2025, arXiv:2503.20783: a constant normaliser
      removes the length bias).

    With ``kl_ratio`` the KL term is ``beta * rho_t * k3_t`` (DeepSeek-AI 2025, "DeepSeek-V3.2", arXiv:2512.02556,
    the unbiased KL estimate under importance sampling; TRL's ``use_bias_correction_kl``). Its value is unchanged
    on-policy (``rho = 1``) but its gradient becomes ``beta * (logp_t - ref_logp_t) * grad logp_t``, the unbiased
    gradient of the reverse KL, where plain k3 gives ``beta * (1 - pi_ref/pi) * grad logp_t``: tokens far less likely
    under the policy than under the reference then no longer get a pull of size ``pi_ref/pi``.

    Args:
        logp: ``(B, T)`` current log-probabilities of the sampled tokens (with gradient).
        old_logp: ``(B, T)`` at sampling time, or None for a single on-policy update (then ``rho = 1`` with the
            gradient of ``logp``).
        ref_logp: ``(B, T)`` under the frozen reference model; may be None only when ``beta == 0``.
        advantages: ``(B,)`` per-sequence advantages (:func:`grpo_advantages`), or ``(B, T)``.
        mask: ``(B, T)`` True on valid response tokens.
        clip_eps: PPO clip range.
        beta: weight of the KL term (0.04 in the paper).
        aggregation: ``"token-mean"``, ``"sequence-mean"`` or ``"dr-grpo"``.
        max_tokens: the constant of ``"dr-grpo"`` (the generation budget); defaults to ``T``.
        kl_ratio: weight the k3 term by the (differentiable) ratio ``rho_t``.

    Returns:
        ``(loss, metrics)`` with ``kl`` (mean k3 over valid tokens), ``clipfrac``, ``approx_kl`` (old vs new).
    """
    if aggregation not in ("token-mean", "sequence-mean", "dr-grpo"):
        raise ValueError(f"unknown aggregation={aggregation!r}; use 'token-mean', 'sequence-mean' or 'dr-grpo'")
    if beta != 0 and ref_logp is None:
        raise ValueError("grpo_loss got ref_logp=None with beta != 0; pass the reference log-probs or set beta=0")
    if old_logp is None:
        old_logp = logp.detach()
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)  # (B, 1), broadcast over tokens
    maskf = mask.to(logp.dtype)
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    per_token = -torch.minimum(ratio * advantages, torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages)
    if ref_logp is not None:
        kl = kl_estimate(logp, ref_logp, "k3")
        if beta != 0:
            per_token = per_token + beta * (kl * ratio if kl_ratio else kl)
    else:
        kl = torch.zeros_like(logp)
    if aggregation == "token-mean":
        loss = masked_mean(per_token, maskf)
    elif aggregation == "sequence-mean":
        loss = ((per_token * maskf).sum(1) / maskf.sum(1).clamp(min=1.0)).mean()
    else:
        denom = logp.shape[1] if max_tokens is None else max_tokens
        if denom <= 0:
            raise ValueError(f"max_tokens must be > 0 for aggregation='dr-grpo', got {max_tokens!r}")
        loss = (per_token * maskf).sum() / (logp.shape[0] * denom)
    with torch.no_grad():
        metrics = {
            "kl": masked_mean(kl, maskf),
            "clipfrac": masked_mean(((ratio - 1.0).abs() > clip_eps).to(logp.dtype), maskf),
            "approx_kl": masked_mean(ratio - 1.0 - log_ratio, maskf),
        }
    return loss, metrics


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out advantages (Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline for free!";
    Ahmadian et al. 2024, "Back to Basics", arXiv:2402.14740, eq. 6).

    For the ``k = group_size`` samples of a prompt: ``A_i = r_i - 1/(k-1) * sum_{j != i} r_j
    = k/(k-1) * (r_i - mean(r))``. The baseline of sample ``i`` does not depend on ``r_i``, so the estimator is
    unbiased.

    Args:
        rewards: ``(B,)`` sequence rewards as contiguous groups of ``group_size``.
        group_size: ``k >= 2``.

    Returns:
        ``(B,)`` advantages.

    Raises:
        GroupSizeError: ``group_size < 2`` or ``B`` not a multiple of it.
    """
    _check_group(rewards, group_size, "RLOO")
    grouped = rewards.view(-1, group_size)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - baseline).reshape(-1)


def dpo_loss(
    policy_chosen_logp: torch.Tensor,
    policy_rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, Metrics]:
    """Direct preference optimisation and relatives, on sequence log-probabilities (all ``(B,)``).

    With ``h = (logp_c - ref_logp_c) - (logp_r - ref_logp_r)`` (policy log-ratio margin):

    - ``"sigmoid"`` (DPO, Rafailov et al. 2023, arXiv:2305.18290, eq. 7), with conservative label smoothing
      ``ls`` (cDPO, Mitchell 2023): ``L = -(1 - ls) log sigmoid(beta h) - ls log sigmoid(-beta h)``.
    - ``"ipo"`` (Azar et al. 2023, arXiv:2310.12036, eq. 17): ``L = (h - 1 / (2 beta))^2``.
    - ``"hinge"`` (SLiC, Zhao et al. 2023, arXiv:2305.10425): ``L = max(0, 1 - beta h)``.

    The loss is the batch mean. Implicit rewards (Rafailov et al. section 5): ``r_c = beta (logp_c - ref_logp_c)``,
    ``r_r = beta (logp_r - ref_logp_r)``.

    Returns:
        ``(loss, metrics)`` with ``rewards/chosen``, ``rewards/rejected`` (batch means), ``rewards/margin``
        (mean ``r_c - r_r``) and ``rewards/accuracy`` (fraction with ``r_c > r_r``).
    """
    if loss_type not in ("sigmoid", "ipo", "hinge"):
        raise ValueError(f"unknown loss_type={loss_type!r}; use 'sigmoid', 'ipo' or 'hinge'")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5) (the assumed label-flip rate), got {label_smoothing}")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(f"label_smoothing applies to loss_type='sigmoid' (cDPO) only, got loss_type={loss_type!r}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    chosen_logratio = policy_chosen_logp - ref_chosen_logp
    rejected_logratio = policy_rejected_logp - ref_rejected_logp
    h = chosen_logratio - rejected_logratio
    if loss_type == "sigmoid":
        losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    else:
        losses = torch.relu(1.0 - beta * h)
    with torch.no_grad():
        r_c = beta * chosen_logratio
        r_r = beta * rejected_logratio
        metrics = {
            "rewards/chosen": r_c.mean(),
            "rewards/rejected": r_r.mean(),
            "rewards/margin": (r_c - r_r).mean(),
            "rewards/accuracy": (r_c > r_r).to(h.dtype).mean(),
        }
    return losses.mean(), metrics


def kto_kl_ref_point(policy_logp_mismatched: torch.Tensor, ref_logp_mismatched: torch.Tensor) -> torch.Tensor:
    """The KTO reference point ``z0 = max(0, mean(logp(y'|x) - ref_logp(y'|x)))`` from mismatched pairs ``(x, y')``
    (Ethayarajh et al. 2024, arXiv:2402.01306, section 4.1); detached: no gradient flows through ``z0``."""
    return (policy_logp_mismatched - ref_logp_mismatched).mean().clamp(min=0).detach()


def kto_loss(
    policy_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    desirable: torch.Tensor,
    kl_ref_point: torch.Tensor | float,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, Metrics]:
    """Kahneman-Tversky optimisation (Ethayarajh et al. 2024, arXiv:2402.01306, eq. 8) on unpaired examples.

    With ``r = logp(y|x) - ref_logp(y|x)`` and reference point ``z0`` (:func:`kto_kl_ref_point`, treated as constant):
    ``L_i = w_D (1 - sigmoid(beta (r_i - z0)))`` for desirable ``y`` and ``L_i = w_U (1 - sigmoid(beta (z0 - r_i)))``
    for undesirable ``y``; the loss is the batch mean.

    Args:
        policy_logp: ``(B,)`` sequence log-probabilities under the policy.
        ref_logp: ``(B,)`` under the reference model.
        desirable: ``(B,)`` bool, True for desirable examples.
        kl_ref_point: scalar ``z0`` (detached here in any case).
        beta: the KTO temperature.
        desirable_weight, undesirable_weight: ``w_D``, ``w_U`` (the paper balances them so that
            ``w_D n_D / (w_U n_U)`` lies in [1, 4/3]).

    Returns:
        ``(loss, metrics)`` with ``rewards/desirable`` and ``rewards/undesirable`` (mean ``beta r`` of each kind, 0 if
        the kind is absent) and ``kl`` (``z0``).
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    desirable = desirable.bool()
    z0 = torch.as_tensor(kl_ref_point, dtype=policy_logp.dtype, device=policy_logp.device).detach()
    r = policy_logp - ref_logp
    loss_d = desirable_weight * (1.0 - torch.sigmoid(beta * (r - z0)))
    loss_u = undesirable_weight * (1.0 - torch.sigmoid(beta * (z0 - r)))
    losses = torch.where(desirable, loss_d, loss_u)
    with torch.no_grad():
        metrics = {
            "rewards/desirable": masked_mean(beta * r, desirable),
            "rewards/undesirable": masked_mean(beta * r, ~desirable),
            "kl": z0,
        }
    return losses.mean(), metrics
