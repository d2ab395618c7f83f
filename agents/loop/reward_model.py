"""The loop's ``RewardModel``, one for both worlds: a reward ensemble fitted by Bradley-Terry on the labels so far.

``EnsembleRewardModel`` wraps a ``rewardmodels.ensemble.RewardEnsemble`` (MLP / CNN nets over segments) or a
``rewardmodels.text.ensemble.LMRewardEnsemble`` (LM reward models over completions): both fit on a dataset of
labelled pairs, give each member's P(a > b) (K, N) and a ``predict_reward`` the agent's env calls, and save to one
name inside a checkpoint. It predicts preferences with the ensemble mean, selects queries at random or by
disagreement (Christiano et al. 2017, Sec. 2.2.4), and hands the agent the members' normalised rewards, averaged.
Three options of Christiano et al. 2017's Atari protocol (A.2) are built in, off by
default: a longer first fit ("pretraining", ``pretrain_epochs``), fitting on only the most recent labels
(``label_buffer``), and a training rate tied to the env steps taken since the last fit (``fit_rate``). With an
``UnlabelledPool``, every fit also gets unlabelled pairs for SURF's pseudo-labels (Park et al. 2022; the ensemble's
``FitConfig.pseudo_threshold``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rewardmodels.preferences import PreferenceDataset
from rewardmodels.selection import select_pairs
from textenv.checks import check_number
from textenv.files import write_json

UNLABELLED_FILE = "unlabelled_pairs.npz"
UNLABELLED_STATE = "unlabelled_pool.json"


class UnlabelledPool:
    """Unlabelled pairs for SURF's pseudo-labels: after each batch of n new labels, ``per_label * n`` fresh pairs are
    drawn from the experience (SURF: ``get_queries(mb_size * inv_label_ratio)`` after every query; 10 per label on
    Meta-World, 100 on DMC, alinlab/SURF README) and kept, the most recent ``capacity`` of them (ours: SURF keeps
    up to 500,000; a bound keeps memory and checkpoints small).

    Args:
        draw: ``draw(n, rng)`` -> n unlabelled candidate pairs (a pair source's ``candidates``).
        per_label: pairs drawn per new label.
        capacity: pairs kept.
        seed: seeds the draws (their generator is checkpointed with the pool).
    """

    def __init__(self, draw: Callable[[int, np.random.Generator], Any], per_label: int, capacity: int = 4_096,
                 seed: int = 0):
        check_number("unlabelled_per_label", per_label, low=1, integer=True)
        check_number("unlabelled_capacity", capacity, low=1, integer=True)
        self.draw, self.per_label, self.capacity = draw, int(per_label), int(capacity)
        self.rng = np.random.default_rng([seed, 52_711])
        self.pairs: Any = None
        self.labels_seen = 0

    def update(self, n_labels: int) -> Any:
        """Draw pairs for the labels beyond those seen so far (``n_labels`` in all); returns the pool."""
        new = int(n_labels) - self.labels_seen
        if new > 0:
            fresh = self.draw(min(new * self.per_label, self.capacity), self.rng)
            self.pairs = fresh if self.pairs is None else self.pairs.append(fresh)
            if len(self.pairs) > self.capacity:
                self.pairs = self.pairs.subset(slice(len(self.pairs) - self.capacity, None))
            self.labels_seen = int(n_labels)
        return self.pairs

    def save(self, directory: Path) -> None:
        if self.pairs is not None:
            self.pairs.save(Path(directory) / UNLABELLED_FILE)
        write_json(Path(directory) / UNLABELLED_STATE, {"labels_seen": self.labels_seen,
                                                        "rng": self.rng.bit_generator.state})

    def load(self, directory: Path) -> None:
        state_file = Path(directory) / UNLABELLED_STATE
        if not state_file.exists():  # a checkpoint written before the pool existed: start it afresh
            return
        state = json.loads(state_file.read_text(encoding="utf-8"))
        self.labels_seen, self.rng.bit_generator.state = int(state["labels_seen"]), state["rng"]
        path = Path(directory) / UNLABELLED_FILE
        self.pairs = PreferenceDataset.load(path) if path.exists() else None


def _pseudo_label_metrics(probs: np.ndarray, pool: Any, threshold: float) -> dict[str, float]:
    """After a fit: the share of (member, unlabelled pair) predictions confident enough to be SURF pseudo-labels,
    and how often those agree with the TRUE preference (pairs whose true returns differ; a diagnostic the labeller
    never sees)."""
    confident = np.maximum(probs, 1.0 - probs) >= threshold  # (M, N)
    ret_a, ret_b = pool.true_returns()
    decided = ret_a != ret_b
    right = (probs > 0.5) == (ret_a > ret_b)[None, :]
    judged = confident & decided[None, :]
    return {"pseudo_confident": float(confident.mean()),
            "pseudo_true_accuracy": float(right[judged].mean()) if judged.any() else float("nan")}


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
        unlabelled: an ``UnlabelledPool`` whose pairs every fit gets (SURF's pseudo-labels); None = none.
    """

    def __init__(self, ensemble: Any, fit_config: Any = None,
                 pretrain_epochs: int | None = None, label_buffer: int | None = None, fit_rate: float | None = None,
                 env_steps: Callable[[], int] | None = None, shuffle_full_draw: bool = True,
                 unlabelled: UnlabelledPool | None = None):
        if fit_rate is not None and env_steps is None:
            raise ValueError("fit_rate needs env_steps (a callable returning the env steps taken so far)")
        self.ensemble = ensemble
        self.fit_config = fit_config if fit_config is not None else getattr(ensemble, "fit_config", None)
        self.pretrain_epochs, self.label_buffer = pretrain_epochs, label_buffer
        self.fit_rate, self.env_steps = fit_rate, env_steps
        self._steps_at_fit: int | None = None
        self.shuffle_full_draw = shuffle_full_draw
        self.unlabelled = unlabelled

    def fit(self, dataset: Any) -> dict[str, float]:
        n_labels = dataset.n_labelled if self.unlabelled is not None else 0  # before label_buffer cuts it
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
        if self.unlabelled is None:
            return self.ensemble.fit(dataset, cfg)
        pool = self.unlabelled.update(n_labels)
        metrics = self.ensemble.fit(dataset, cfg, unlabelled=pool)
        metrics["unlabelled_pairs"] = float(len(pool) if pool is not None else 0)
        if pool is not None and getattr(cfg, "pseudo_threshold", None) is not None:
            metrics.update(_pseudo_label_metrics(self.ensemble.preference_probs(pool), pool, cfg.pseudo_threshold))
        return metrics

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
        if self.unlabelled is not None:
            self.unlabelled.save(directory)

    def load(self, directory: Path) -> None:
        self.ensemble.load_state(Path(directory) / self.ensemble.checkpoint_name)
        if self.unlabelled is not None:
            self.unlabelled.load(directory)
