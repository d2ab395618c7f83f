"""SURF's two reward-learning options (Park, Seo, Shin, Lee, Abbeel & Lee 2022, "SURF: Semi-supervised Reward
Learning with Data Augmentation for Feedback-efficient Preference-based Reinforcement Learning", ICLR 2022,
arXiv:2203.10050), as pure functions; ``rewardmodels.ensemble.RewardEnsemble.fit`` uses them.

* **Pseudo-labels** (Sec. 4.1): on unlabelled pairs of segments, each ensemble member's own prediction
  P(a > b) = sigmoid(R_a - R_b) becomes a label, 1 or 0, where it is confident: max(P, 1 - P) >= tau. The loss on
  them is the cross-entropy against those labels, averaged over the whole unlabelled batch (unconfident pairs count
  as 0) and weighted by lambda. Constants, from the official code (alinlab/SURF, ``reward_model_semi_dataaug.py`` and
  the README's commands): tau = 0.99 (``threshold_u=0.99`` for both DMC walker and Meta-World; the config file's
  default is 0.95), lambda = 1 (``lambda_u``), mu = 4 unlabelled pairs per labelled pair in each minibatch (``mu=4``),
  and unlabelled pairs drawn from the replay buffer after every query, 10 per label on Meta-World and 100 on DMC
  (``inv_label_ratio``); the values are in ``rewardmodels.published``. The confidence is judged on the uncropped
  segments, the loss on cropped ones.
* **Temporal cropping** (Sec. 4.2): a labelled segment of H steps is stored with ``w`` more steps on each side
  (``dataaug_window=5``); every time a pair is used, one length L is drawn uniformly from H - c .. H + c
  (``crop_range=5``: 45-55 steps for B-Pref's H = 50) and each of the two segments is cropped to an L-step window
  at its own uniformly drawn start within its H + 2w steps (``get_cropping_mask``); the label stays. The pair keeps
  one length so that the two summed returns stay comparable; the starts move independently, which is the "shift"
  the paper argues a preference survives.
"""

from __future__ import annotations

import numpy as np
import torch

from textenv.checks import check, check_number


def pseudo_labels(returns_a: torch.Tensor, returns_b: torch.Tensor,
                  threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SURF's pseudo-labels: ``(labels, confident)``, both (B,), from predicted segment returns (B,), (B,).

    ``labels`` is 1.0 where P(a > b) = sigmoid(R_a - R_b) >= 0.5 (a preferred), else 0.0; ``confident`` is
    max(P, 1 - P) >= ``threshold``. No gradient flows through either."""
    check_number("threshold", threshold, low=0.5, high=1.0)
    with torch.no_grad():
        p = torch.sigmoid(returns_a - returns_b)
        labels = (p >= 0.5).to(returns_a.dtype)
        confident = torch.maximum(p, 1.0 - p) >= threshold
    return labels, confident


def crop_windows(n: int, core_len: int, total_len: int, crop: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SURF's temporal crops for ``n`` pairs: ``(start_a, start_b, length)``, each (n,) int64.

    ``length`` is uniform on core_len - crop .. core_len + crop, capped at ``total_len`` (the stored window: the
    labelled core plus its context on both sides); each start is uniform on 0 .. total_len - length, drawn
    separately for the two segments of a pair."""
    check_number("crop", crop, low=0, integer=True)
    check(0 < core_len <= total_len, f"need 0 < core_len <= total_len, got {core_len}, {total_len}")
    check(crop < core_len, f"crop={crop} must be shorter than the labelled segment ({core_len} steps)")
    length = np.minimum(rng.integers(core_len - crop, core_len + crop + 1, size=n), total_len)
    start_a = rng.integers(0, total_len - length + 1)
    start_b = rng.integers(0, total_len - length + 1)
    return start_a.astype(np.int64), start_b.astype(np.int64), length.astype(np.int64)


def window_weights(starts: np.ndarray, lengths: np.ndarray, total_len: int,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """(n, total_len) float: 1 on steps start .. start + length - 1 of each row, 0 elsewhere."""
    steps = torch.arange(total_len, device=device)[None, :]  # (1, T)
    start = torch.as_tensor(starts, device=device)[:, None]  # (n, 1)
    stop = start + torch.as_tensor(lengths, device=device)[:, None]
    return ((steps >= start) & (steps < stop)).float()
