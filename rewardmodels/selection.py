"""Choosing which segment pairs to ask about: random, or where the reward ensemble disagrees most.

Christiano et al. 2017 (arXiv:1706.03741, section 2.2.4): "sampling a large number of pairs of trajectory segments
of length k, using each reward predictor in our ensemble to predict which segment will be preferred from each pair,
and then selecting those trajectories for which the predictions have the highest variance across ensemble members";
their experiments draw 10 times more candidates than they query (``CANDIDATE_OVERSAMPLING``). B-Pref / PEBBLE
(Lee et al. 2021) also score by the entropy of the ensemble-mean preference (``method="entropy"``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rewardmodels.preferences import PreferenceDataset
from rewardmodels.segments import Segments

CANDIDATE_OVERSAMPLING = 10
"""Candidates drawn per query in Christiano et al. 2017."""

METHODS = ("random", "disagreement", "entropy")


def random_pairs(segments: Segments, n_pairs: int, rng: np.random.Generator | int | None = None,
                 **dataset_kwargs: Any) -> PreferenceDataset:
    """Unlabelled candidate pairs (labels NaN): ``n_pairs`` random pairs of two different segments.

    ``dataset_kwargs`` go to :class:`PreferenceDataset` (e.g. ``obs_space``, ``act_space``).
    """
    n = len(segments)
    if n < 2:
        raise ValueError(f"need at least 2 segments to make pairs, got {n}")
    rng = np.random.default_rng(rng)
    i = rng.integers(n, size=n_pairs)
    j = (i + rng.integers(1, n, size=n_pairs)) % n  # uniform over the other n - 1 segments
    return PreferenceDataset.from_segments(segments[i], segments[j], **dataset_kwargs)


def selection_scores(candidates: PreferenceDataset, method: str, ensemble: Any) -> np.ndarray:
    """(N,) informativeness of each candidate pair (higher = ask first)."""
    if method == "disagreement":
        return ensemble.disagreement(candidates)
    if method == "entropy":
        p = np.clip(ensemble.preference_probs(candidates).mean(axis=0), 1e-12, 1 - 1e-12)
        return -(p * np.log(p) + (1 - p) * np.log(1 - p))
    raise ValueError(f"unknown selection method {method!r}; choose one of {METHODS}")


def select_pairs(
    candidates: PreferenceDataset,
    n: int,
    method: str = "random",
    ensemble: Any = None,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Indices (n,) int64 of the candidate pairs to query, most informative first.

    Args:
        candidates: unlabelled pairs (draw ``CANDIDATE_OVERSAMPLING * n`` of them for the paper's setting).
        n: how many to query.
        method: "random" (uniform without replacement), "disagreement" (highest std across ensemble members of
            P(a > b)) or "entropy" (highest entropy of the ensemble-mean P(a > b)).
        ensemble: a :class:`rewardmodels.ensemble.RewardEnsemble` (anything with ``disagreement`` and
            ``preference_probs``); required unless method is "random".
        rng: breaks ties between equal scores and drives "random".

    Use ``candidates.subset(idx)`` for the selected pairs.
    """
    if method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}; choose one of {METHODS}")
    if not 0 <= n <= len(candidates):
        raise ValueError(f"cannot select {n} pairs out of {len(candidates)} candidates; draw more candidates")
    rng = np.random.default_rng(rng)
    if method == "random":
        return rng.choice(len(candidates), size=n, replace=False).astype(np.int64)
    if ensemble is None:
        raise ValueError(f"method={method!r} needs the reward ensemble (ensemble=...)")
    scores = selection_scores(candidates, method, ensemble)
    # A random permutation first, then a stable sort: equal scores are broken at random, not by position.
    perm = rng.permutation(len(candidates))
    order = perm[np.argsort(-scores[perm], kind="stable")]
    return order[:n].astype(np.int64)
