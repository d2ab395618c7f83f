"""Simulated teachers: preference labels from true rewards, with the B-Pref models of human irrationality.

B-Pref (Lee, Smith, Dragan & Abbeel 2021, "B-Pref: Benchmarking Preference-Based Reinforcement Learning",
arXiv:2111.03026, section 3.2) models a teacher by five parameters, applied in this order:

1. myopia ``gamma``: the teacher sums rewards with weight gamma^(T-1-t) on step t of a T-step segment, so the most
   recent steps weigh most (gamma = 1: plain sum);
2. rationality ``beta``: P(a preferred) = sigmoid(beta * (R_a - R_b)) on those sums, sampled (Boltzmann /
   Bradley-Terry); beta = inf is the perfectly rational teacher (the larger sum wins; exactly equal sums tie);
3. mistakes ``eps``: a decided label is flipped with probability eps;
4. equality ``equal_threshold``: |R_a - R_b| < threshold (undiscounted sums) -> 0.5 (tie);
5. skipping ``skip_threshold``: max(R_a, R_b) <= threshold (undiscounted; neither segment is any good) -> NaN.

Labels follow the toolkit convention: 1.0 = first segment (a) preferred, 0.0 = second, 0.5 = tie, NaN = skipped.
Rewards on padded steps (mask False) count as 0: nothing is earned after termination.

B-Pref's presets (its ``scripts/*/run_PEBBLE.sh``), available through :func:`make_teacher`:

==========  ==================================================================
oracle      beta=inf, gamma=1, eps=0, no skip, no equal
noisy       beta=1 ("Stoc" in the paper)
myopic      gamma=0.9
mistake     eps=0.1
skip        skip_threshold = 0.1 * return_scale
equal       equal_threshold = 0.1 * return_scale
==========  ==================================================================

B-Pref sets the skip/equal thresholds relative to the typical return of a segment, ``return_scale`` = mean
episode return * segment_len / episode length (:func:`bpref_return_scale`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rewardmodels.preferences import PreferenceDataset, SegmentShapeError


@runtime_checkable
class PreferenceLabeller(Protocol):
    """Anything that labels candidate pairs: synthetic teachers here, a human labelling queue elsewhere."""

    def label_pairs(self, pairs: PreferenceDataset) -> np.ndarray:
        """(N,) float32 labels in {1, 0, 0.5, NaN} for ``pairs`` (1 = first segment preferred)."""
        ...


def _as_rewards(rew: Any, mask: Any, name: str) -> np.ndarray:
    r = np.asarray(rew, dtype=np.float64)
    if r.ndim != 2:
        raise SegmentShapeError(f"{name} must have shape (B, T), got {r.shape}")
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != r.shape:
            raise SegmentShapeError(f"mask for {name} must have shape {r.shape}, got {m.shape}")
        r = np.where(m, r, 0.0)
    return r


@dataclass
class Teacher:
    """A B-Pref simulated teacher (see the module docstring for the model and the order of its effects)."""

    beta: float = math.inf
    """Rationality: P(a) = sigmoid(beta (R_a - R_b)); inf = always prefer the larger return, 0 = coin flips."""
    gamma: float = 1.0
    """Myopic discount in (0, 1]: step t of T weighs gamma^(T-1-t)."""
    eps: float = 0.0
    """Probability of flipping a decided (non-tie) label."""
    skip_threshold: float | None = None
    """Skip (NaN) when both undiscounted segment returns are <= this; None = never skip."""
    equal_threshold: float | None = None
    """Tie (0.5) when |R_a - R_b| < this (undiscounted); None = only exactly equal returns tie (when beta = inf)."""
    seed: int | None = None
    """Seed of the teacher's own random stream (Boltzmann draws and mistakes)."""
    _rng: np.random.Generator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (self.beta >= 0):
            raise ValueError(f"beta must be >= 0 (math.inf for a rational teacher), got {self.beta}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if not 0 <= self.eps <= 1:
            raise ValueError(f"eps is a probability in [0, 1], got {self.eps}")
        for name in ("skip_threshold", "equal_threshold"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number or None, got {value}")
        if self.equal_threshold is not None and self.equal_threshold < 0:
            raise ValueError(f"equal_threshold must be >= 0, got {self.equal_threshold}")
        self._rng = np.random.default_rng(self.seed)

    def myopic_weights(self, t: int) -> np.ndarray:
        """(T,) weights gamma^(T-1-t): 1 for the last step, gamma^(T-1) for the first."""
        return self.gamma ** np.arange(t - 1, -1, -1, dtype=np.float64)

    def prob_first(self, rew_a: Any, rew_b: Any, mask_a: Any = None, mask_b: Any = None) -> np.ndarray:
        """(B,) probability that the (mistake-free) teacher prefers a: sigmoid(beta * (R_a - R_b)), discounted sums."""
        ra, rb = _as_rewards(rew_a, mask_a, "rew_a"), _as_rewards(rew_b, mask_b, "rew_b")
        if ra.shape != rb.shape:
            raise SegmentShapeError(f"rew_a {ra.shape} and rew_b {rb.shape} must have the same shape")
        w = self.myopic_weights(ra.shape[1])
        d = ra @ w - rb @ w  # (B,)
        if math.isinf(self.beta):
            return np.where(d > 0, 1.0, np.where(d < 0, 0.0, 0.5))
        x = self.beta * d
        return 0.5 * (1.0 + np.tanh(0.5 * x))  # sigmoid without overflow warnings

    def label(self, rew_a: Any, rew_b: Any, mask_a: Any = None, mask_b: Any = None) -> np.ndarray:
        """Labels (B,) float32 in {1, 0, 0.5, NaN} for pairs of per-step true rewards (B, T) (masks (B, T) bool)."""
        p = self.prob_first(rew_a, rew_b, mask_a, mask_b)  # validates shapes
        b = p.shape[0]
        u_choice, u_mistake = self._rng.random((2, b))  # always both draws: the stream depends only on call sizes
        if math.isinf(self.beta):
            labels = p.copy()  # 1, 0, or 0.5 for exactly equal sums
        else:
            labels = (u_choice < p).astype(np.float64)
        flip = (u_mistake < self.eps) & (labels != 0.5)
        labels = np.where(flip, 1.0 - labels, labels)
        if self.equal_threshold is not None or self.skip_threshold is not None:
            ra = _as_rewards(rew_a, mask_a, "rew_a").sum(axis=1)
            rb = _as_rewards(rew_b, mask_b, "rew_b").sum(axis=1)
            if self.equal_threshold is not None:
                labels = np.where(np.abs(ra - rb) < self.equal_threshold, 0.5, labels)
            if self.skip_threshold is not None:
                labels = np.where(np.maximum(ra, rb) <= self.skip_threshold, np.nan, labels)
        return labels.astype(np.float32)

    def label_pairs(self, pairs: PreferenceDataset) -> np.ndarray:
        """Label a :class:`PreferenceDataset`'s pairs from their true rewards and masks (its labels are ignored)."""
        return self.label(pairs.true_rew_a, pairs.true_rew_b, pairs.mask_a, pairs.mask_b)


TEACHER_PRESETS: dict[str, dict[str, float]] = {
    "oracle": {},
    "noisy": {"beta": 1.0},
    "myopic": {"gamma": 0.9},
    "mistake": {"eps": 0.1},
    "skip": {"skip_fraction": 0.1},
    "equal": {"equal_fraction": 0.1},
}
"""B-Pref's teacher presets; ``*_fraction`` values are multiplied by ``return_scale`` to give the thresholds."""


def bpref_return_scale(mean_episode_return: float, episode_length: int, segment_len: int) -> float:
    """B-Pref's threshold unit: the return of a typical segment, mean episode return * segment_len / length."""
    return float(mean_episode_return) * segment_len / episode_length


def make_teacher(name: str, *, return_scale: float | None = None, seed: int | None = None,
                 **overrides: Any) -> Teacher:
    """A :class:`Teacher` from a B-Pref preset name (module docstring), with ``overrides`` of any field.

    ``skip`` and ``equal`` need ``return_scale`` (see :func:`bpref_return_scale`) unless ``skip_threshold`` /
    ``equal_threshold`` is given directly.
    """
    if name not in TEACHER_PRESETS:
        raise ValueError(f"unknown teacher {name!r}; choose one of {sorted(TEACHER_PRESETS)}")
    params: dict[str, Any] = dict(TEACHER_PRESETS[name])
    for kind in ("skip", "equal"):
        fraction = params.pop(f"{kind}_fraction", None)
        if fraction is not None and f"{kind}_threshold" not in overrides:
            if return_scale is None:
                raise ValueError(
                    f"the {name!r} teacher sets its threshold relative to a typical segment return: pass "
                    f"return_scale=... (e.g. bpref_return_scale(mean_episode_return, episode_length, segment_len)) "
                    f"or {kind}_threshold=...")
            params[f"{kind}_threshold"] = fraction * float(return_scale)
    params.update(overrides)
    return Teacher(seed=seed, **params)
