"""The reward ensemble as the loop's ``RewardModel``, and the ensemble a ``PrefsConfig`` asks for.

``EnsembleRewardModel`` fits a ``rewardmodels.ensemble.RewardEnsemble`` by Bradley-Terry on the labels so far,
predicts preferences with the ensemble mean, selects queries by disagreement, and hands the agent the members'
normalised rewards, averaged. Three options of Christiano et al. 2017's Atari protocol (A.2) are built in, off by
default: a longer first fit ("pretraining", ``pretrain_epochs``), fitting on only the most recent labels
(``label_buffer``), and a training rate tied to the env steps taken since the last fit (``fit_rate``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from agents.loop.control.config import PrefsConfig
from rewardmodels.cnn import CNNRewardNet
from rewardmodels.ensemble import FitConfig, RewardEnsemble
from rewardmodels.preferences import PreferenceDataset
from rewardmodels.selection import select_pairs

REWARD_MODEL_FILE = "reward_model.safetensors"


class EnsembleRewardModel:
    """The loop's ``RewardModel`` over a ``RewardEnsemble`` (module docstring).

    Args:
        ensemble: the reward nets.
        fit_config: settings of every fit (default: the ensemble's own).
        pretrain_epochs: epochs of the first fit, on the initial labels (A.2: 200); None = as any other fit.
        label_buffer: fit on only the last this many labels (A.2: 3,000); None = all.
        fit_rate: labels processed per env step: each fit after the first runs ``fit_rate * new env steps /
            batch_size`` gradient steps (A.2: 0.1); None = ``fit_config``'s epochs. Needs ``env_steps``.
        env_steps: returns the env steps taken so far (the pair source's count).
    """

    def __init__(self, ensemble: RewardEnsemble, fit_config: FitConfig | None = None,
                 pretrain_epochs: int | None = None, label_buffer: int | None = None, fit_rate: float | None = None,
                 env_steps: Callable[[], int] | None = None):
        if fit_rate is not None and env_steps is None:
            raise ValueError("fit_rate needs env_steps (a callable returning the env steps taken so far)")
        self.ensemble = ensemble
        self.fit_config = fit_config or ensemble.fit_config
        self.pretrain_epochs, self.label_buffer = pretrain_epochs, label_buffer
        self.fit_rate, self.env_steps = fit_rate, env_steps
        self._steps_at_fit: int | None = None

    def fit(self, dataset: Any) -> dict[str, float]:
        if self.label_buffer is not None and len(dataset) > self.label_buffer:
            dataset = dataset.subset(slice(len(dataset) - self.label_buffer, None))
        cfg = self.fit_config
        now = int(self.env_steps()) if self.env_steps is not None else None
        if self.pretrain_epochs and int(self.ensemble.fit_count) == 0:  # survives resume: fit_count is saved
            cfg = dataclasses.replace(cfg, epochs=self.pretrain_epochs, steps=None)
        elif self.fit_rate and now is not None and self._steps_at_fit is not None:
            steps = round((now - self._steps_at_fit) * self.fit_rate / cfg.batch_size)
            cfg = dataclasses.replace(cfg, steps=max(1, steps))
        self._steps_at_fit = now
        return self.ensemble.fit(dataset, cfg)

    def preference_probs(self, pairs: PreferenceDataset) -> np.ndarray:
        return self.ensemble.preference_probs(pairs).mean(axis=0)

    def select(self, candidates: PreferenceDataset, n: int, method: str, rng: np.random.Generator):
        return candidates.subset(select_pairs(candidates, n, method, self.ensemble, rng))

    def reward_fn(self):
        return self.ensemble.predict_reward

    def save(self, directory: Path) -> None:
        self.ensemble.save(Path(directory) / REWARD_MODEL_FILE)

    def load(self, directory: Path) -> None:
        self.ensemble.load_state(Path(directory) / REWARD_MODEL_FILE)


def build_reward_ensemble(cfg: PrefsConfig, obs_space: gym.Space, act_space: gym.Space) -> RewardEnsemble:
    """The ``RewardEnsemble`` of ``cfg``: MLPs over (observation, action) (A.1) or the paper's CNN (A.2)."""
    fit = FitConfig(epochs=cfg.reward_epochs, **cfg.fit)
    if cfg.reward_net == "mlp":
        return RewardEnsemble.mlp(obs_space, act_space, n_members=cfg.ensemble, seed=cfg.seed,
                                  hidden=cfg.reward_hidden, activation=cfg.reward_activation,
                                  reward_scale=cfg.reward_scale, fit_config=fit, **cfg.reward_net_kwargs)
    ens = RewardEnsemble.from_factory(lambda: CNNRewardNet(obs_space, act_space, **cfg.reward_net_kwargs),
                                      n_members=cfg.ensemble, seed=cfg.seed, reward_scale=cfg.reward_scale,
                                      fit_config=fit)
    ens.net_config = {"class": "CNNRewardNet", "kwargs": dict(cfg.reward_net_kwargs)}
    return ens
