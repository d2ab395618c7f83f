"""What the generation engine hands back: one step of N rows (``StepResult``) and N whole episodes (``Episodes``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Episodes", "StepResult"]


@dataclass
class StepResult:
    """What one engine step produced. Device tensors are ``(N,)``; host arrays are NumPy ``(N,)``."""

    reward: torch.Tensor  # float32, KL penalty + score at episode end
    policy_logprob: torch.Tensor  # float32, log pi(a|s) of the taken token (temperature-scaled)
    ref_logprob: torch.Tensor | None  # float32, log pi_ref(a|s); None without a reference model
    active: np.ndarray  # bool, rows that took an action (False: the row was reset at this step)
    terminated: np.ndarray  # bool
    truncated: np.ndarray  # bool
    terminated_t: torch.Tensor | None  # the same on the device, when the actions came as a tensor (no host copy)
    truncated_t: torch.Tensor | None
    ended: np.ndarray  # row indices whose episode ended at this step
    prompts: list[str]  # for the ended rows
    responses: list[str]  # for the ended rows
    scores: np.ndarray  # float64, reward_fn scores of the ended rows (plus, multi-turn, the environment's rewards)
    kl_sums: np.ndarray  # float64, sum over the episode of log pi - log pi_ref, for the ended rows


@dataclass
class Episodes:
    """One whole episode per row, as :meth:`GenerationEngine.play` returns it. Device tensors are ``(N, T)`` with
    ``T`` the longest episode's tokens after its prompt; host arrays are NumPy ``(N,)``.

    Single-turn, those tokens are the actions. Multi-turn (an environment that answers), the environment's replies
    sit between them, marked by ``context_mask``: part of the sequence the policy reads, never actions (``mask``
    False, log-probs and rewards 0 there)."""

    tokens: torch.Tensor  # long, the tokens after the prompt; padding after a row's last
    mask: torch.Tensor  # bool, True on the actions taken (an ending EOS included)
    policy_logprob: torch.Tensor  # float32, log pi(a_t|s_t) (temperature-scaled), 0 off the actions
    ref_logprob: torch.Tensor | None  # float32, log pi_ref(a_t|s_t), 0 off the actions; None without a reference
    reward: torch.Tensor  # float32, what step() returns at each step: KL penalty, the environment's reward at the
    # end of each turn, the score at the last
    terminated: np.ndarray  # bool, ended with EOS or by the environment (else truncated)
    prompts: list[str]
    responses: list[str]  # multi-turn: the whole conversation after the prompt
    scores: np.ndarray  # float64, reward_fn scores (plus, multi-turn, the environment's rewards)
    kl_sums: np.ndarray  # float64, sum over the episode of log pi - log pi_ref
    context_mask: torch.Tensor | None = None  # bool, multi-turn: True on the environment's tokens; None single-turn
    turns: np.ndarray | None = None  # int, multi-turn: the policy's turns the environment answered
