"""The loop's ``RewardModel``, one for both worlds: a reward ensemble fitted by Bradley-Terry on the labels so far.

``EnsembleRewardModel`` wraps a ``rewardmodels.ensemble.RewardEnsemble`` (MLP / CNN nets over segments) or a
``rewardmodels.text.ensemble.LMRewardEnsemble`` (LM reward models over completions): both fit on a dataset of
labelled pairs, give each member's P(a > b) (K, N) and a ``predict_reward`` the agent's env calls, and save to one
name inside a checkpoint. It predicts preferences with the ensemble mean, selects queries at random or by
disagreement (Christiano et al. 2017, Sec. 2.2.4), and hands the agent the members' normalised rewards, averaged.
Three options of Christiano et al. 2017's Atari protocol (A.2) are built in, off by
default: a longer first fit ("pretraining", ``pretrain_epochs``), fitting on only the most recent labels
(``label_buffer``), and a training rate tied to the env steps taken since the last fit (``fit_rate``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rewardmodels.selection import select_pairs


class EnsembleRewardModel:
    """The loop's ``RewardModel`` over a reward ensemble (module docstring).

    Args:
        ensemble: a ``RewardEnsemble`` or an ``LMRewardEnsemble``.
        fit_config: a ``RewardEnsemble``'s settings of every fit (default: the ensemble's own; an
            ``LMRewardEnsemble`` holds its own and takes none).
        pretrain_epochs: epochs of the first fit, on the initial labels (A.2: 200); None = as any other fit.
        label_buffer: fit on only the last this many labels (A.2: 3,000); None = all.
        fit_rate: labels processed per env step: each fit after the first runs ``fit_rate * new env steps /
            batch_size`` gradient steps (A.2: 0.1); None = ``fit_config``'s epochs. Needs ``env_steps``.
        env_steps: returns the env steps taken so far (the pair source's count).
        shuffle_full_draw: when all candidates are selected at random, return them permuted (the control loop's
            random stream, and its measured results, depend on it); False keeps their order (text: the candidates
            are fresh samples of the policy already).
    """

    def __init__(self, ensemble: Any, fit_config: Any = None,
                 pretrain_epochs: int | None = None, label_buffer: int | None = None, fit_rate: float | None = None,
                 env_steps: Callable[[], int] | None = None, shuffle_full_draw: bool = True):
        if fit_rate is not None and env_steps is None:
            raise ValueError("fit_rate needs env_steps (a callable returning the env steps taken so far)")
        self.ensemble = ensemble
        self.fit_config = fit_config if fit_config is not None else getattr(ensemble, "fit_config", None)
        self.pretrain_epochs, self.label_buffer = pretrain_epochs, label_buffer
        self.fit_rate, self.env_steps = fit_rate, env_steps
        self._steps_at_fit: int | None = None
        self.shuffle_full_draw = shuffle_full_draw

    def fit(self, dataset: Any) -> dict[str, float]:
        if self.label_buffer is not None and len(dataset) > self.label_buffer:
            dataset = dataset.subset(slice(len(dataset) - self.label_buffer, None))
        cfg = self.fit_config
        if cfg is None:  # an ensemble that holds its own fit settings
            return self.ensemble.fit(dataset)
        now = int(self.env_steps()) if self.env_steps is not None else None
        if self.pretrain_epochs and int(self.ensemble.fit_count) == 0:  # survives resume: fit_count is saved
            cfg = dataclasses.replace(cfg, epochs=self.pretrain_epochs, steps=None)
        elif self.fit_rate and now is not None and self._steps_at_fit is not None:
            steps = round((now - self._steps_at_fit) * self.fit_rate / cfg.batch_size)
            cfg = dataclasses.replace(cfg, steps=max(1, steps))
        self._steps_at_fit = now
        return self.ensemble.fit(dataset, cfg)

    def preference_probs(self, pairs: Any) -> np.ndarray:
        return self.ensemble.preference_probs(pairs).mean(axis=0)

    def select(self, candidates: Any, n: int, method: str, rng: np.random.Generator):
        if n >= len(candidates) and not self.shuffle_full_draw:
            return candidates
        return candidates.subset(select_pairs(candidates, n, method, self.ensemble, rng))

    def reward_fn(self):
        return self.ensemble.predict_reward

    def save(self, directory: Path) -> None:
        self.ensemble.save(Path(directory) / self.ensemble.checkpoint_name)

    def load(self, directory: Path) -> None:
        self.ensemble.load_state(Path(directory) / self.ensemble.checkpoint_name)
