"""An ensemble of LM reward models with the interface of ``rewardmodels.ensemble.RewardEnsemble``, so that the
preference loop fits, queries and saves text and segment reward models through one adapter
(``agents.loop.reward_model.EnsembleRewardModel``).

``LMRewardEnsemble.fit(pairs)`` refits every member from the same initial backbone (a copy of ``base``; for RLHF the
initial policy) with a fresh scalar head on all labels so far (each member on a bootstrap of them when there are
several: Christiano et al. 2017, Sec. 2.2.3), with Bradley-Terry (``rewardmodels.text.training``), and normalises each
to mean 0, std 1 on the labelled responses (``NormalizedReward``). ``predict_reward(prompts, responses)`` is the mean
of the normalised members: the ``reward_fn`` of ``TextGen-v0``. ``preference_probs`` (K, N) and ``disagreement``
(N,) serve query selection (``rewardmodels.selection``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rewardmodels.text.lm_reward import LMRewardModel
from rewardmodels.text.preferences import TextPreferencePairs
from rewardmodels.text.training import train_reward_model
from textenv.checks import check_number
from textenv.files import write_json
from textenv.lora import base_copy

__all__ = ["LMRewardEnsemble", "NormalizedReward"]

NORM_FILE = "reward_norm.json"


class NormalizedReward:
    """``(r(x, y) - mean) / std`` of a reward function, with mean and std measured on the initial policy's samples.

    "Reward normalisation": the learned reward's offset and scale are arbitrary (Bradley-Terry sees only differences),
    so it is normalised to mean 0, std 1 on reference-policy responses before RL, which keeps the KL coefficient
    meaningful (The N Implementation Details of RLHF with PPO, Huang et al. 2024; Ziegler et al. 2019).
    """

    def __init__(self, reward_fn: Any, prompts: list[str], responses: list[str]):
        scores = torch.as_tensor(reward_fn(prompts, responses), dtype=torch.float64).cpu()
        self.reward_fn, self.mean, self.std = reward_fn, float(scores.mean()), float(scores.std().clamp(min=1e-6))

    @classmethod
    def with_stats(cls, reward_fn: Any, mean: float, std: float) -> NormalizedReward:
        """The normalised reward with known statistics (a reloaded checkpoint's)."""
        self = cls.__new__(cls)
        self.reward_fn, self.mean, self.std = reward_fn, float(mean), float(std)
        return self

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        scores = torch.as_tensor(self.reward_fn(prompts, responses)).float()
        return (scores - self.mean) / self.std


class LMRewardEnsemble:
    """``n_members`` LM reward models refitted on every label so far (module docstring).

    Args:
        base: the transformer whose copy each member starts from (a causal LM or a bare backbone; for a LoRA policy its
            base without adapters, ``textenv.lora.base_copy``); never trained.
        tokenizer: its tokenizer (the policy's, so that scores need no re-tokenising).
        n_members: K; with K > 1 each member fits a bootstrap of the labels and the reward is their mean.
        seed: seeds the members' heads, bootstraps and batch orders (a refit with the same labels is the same).
        epochs, learning_rate, batch_size: of each member's Bradley-Terry fit.
        val_fraction: share of the labelled pairs held out for each fit's validation metrics.
        device: where members live (default: the base's device).
        log: ``log(step, metrics)`` of the fits' steps, counted over all fits (the ``rm/`` curves continue).
    """

    checkpoint_name = "reward_model"
    """What ``agents.loop.reward_model.EnsembleRewardModel`` saves it as inside a checkpoint (a directory)."""

    def __init__(self, base: nn.Module, tokenizer: Any, n_members: int = 1, seed: int = 0, epochs: int = 3,
                 learning_rate: float = 3e-4, batch_size: int = 16, val_fraction: float = 0.15,
                 device: torch.device | None = None, log: Callable[[int, dict[str, float]], Any] | None = None):
        check_number("n_members", n_members, low=1, integer=True)
        check_number("val_fraction", val_fraction, low=0, high=1, high_open=True)
        self.base, self.tokenizer, self.n_members, self.seed = base, tokenizer, int(n_members), int(seed)
        self.epochs, self.learning_rate, self.batch_size, self.val_fraction = epochs, learning_rate, batch_size, \
            val_fraction
        self.device = device if device is not None else torch.device("cpu")
        self.log = log
        self.members: list[NormalizedReward] = []
        self.fits = self.steps = 0
        self.last_metrics: dict[str, float] = {}

    @property
    def fit_count(self) -> int:
        return self.fits

    def _fit_member(self, pairs: TextPreferencePairs, seed: int) -> tuple[LMRewardModel, dict[str, float]]:
        """A fresh scalar head on a copy of ``base``, fitted with Bradley-Terry on the labelled ``pairs``
        (``val_fraction`` held out), with its metrics."""
        labelled = pairs.labelled()
        n_val = int(round(len(labelled) * self.val_fraction))
        order = np.random.default_rng(seed).permutation(len(labelled))
        val, train = labelled[order[:n_val]], labelled[order[n_val:]]
        offset = self.steps
        log = None if self.log is None else (lambda step, m: self.log(offset + step, m))
        # The head's init and the dropout masks depend on the seed only, not on what ran before (a resumed run refits
        # the same model).
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            model = LMRewardModel(base_copy(self.base).requires_grad_(True), self.tokenizer,
                                  policy_tokenizer=self.tokenizer)
            result = train_reward_model(model, train, epochs=self.epochs, lr=self.learning_rate,
                                        batch_size=self.batch_size, seed=seed, eval_pairs=val if n_val else None,
                                        log_fn=log)
        return model.eval().requires_grad_(False), result

    def fit(self, dataset: TextPreferencePairs) -> dict[str, float]:
        """Refit every member on ``dataset`` (module docstring); returns the members' mean metrics."""
        members, metrics = [], {}
        for k in range(self.n_members):
            data, seed = dataset, self.seed + 7919 * k + 104_729 * self.fits
            if self.n_members > 1:  # bootstrap the labels of each member
                data = dataset[np.random.default_rng(seed).integers(len(dataset), size=len(dataset))]
            model, result = self._fit_member(data, seed)
            self.steps += int(result["steps"])
            members.append(NormalizedReward(model, dataset.prompts * 2, dataset.responses_a + dataset.responses_b))
            for key, value in result.items():
                metrics[key] = metrics.get(key, 0.0) + float(value) / self.n_members
        self.members = members
        metrics.update({"reward_norm_mean": members[0].mean, "reward_norm_std": members[0].std})
        self.fits += 1
        self.last_metrics = metrics
        return metrics

    def predict_reward(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """(B,) the mean of the normalised members' scores: the reward the policy trains on."""
        if len(self.members) == 1:
            return self.members[0](prompts, responses)
        return torch.stack([m(prompts, responses) for m in self.members]).mean(0)

    def member_scores(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """(K, N) raw scores of every member."""
        return np.stack([torch.as_tensor(m.reward_fn(prompts, responses), dtype=torch.float64).cpu().numpy()
                         for m in self.members])

    def preference_probs(self, pairs: TextPreferencePairs) -> np.ndarray:
        """(K, N) Bradley-Terry P(a > b) of each member."""
        diff = self.member_scores(pairs.prompts, pairs.responses_a) - self.member_scores(pairs.prompts,
                                                                                         pairs.responses_b)
        return 1.0 / (1.0 + np.exp(-diff))

    def disagreement(self, pairs: TextPreferencePairs) -> np.ndarray:
        """(N,) std over members of P(a > b): the query-selection score of ``rewardmodels.selection``."""
        return self.preference_probs(pairs).std(0)

    def save(self, path: str | Path) -> Path:
        """Each member as a Hugging Face sequence-classification checkpoint ``path/member-k``, and the fit state."""
        path = Path(path)
        for k, member in enumerate(self.members):
            member.reward_fn.save_pretrained(path / f"member-{k}")
        write_json(path / NORM_FILE, {"fits": self.fits, "rm_steps": self.steps, "last_metrics": self.last_metrics,
                                      "norm": [[m.mean, m.std] for m in self.members]})
        return path

    def load_state(self, path: str | Path) -> LMRewardEnsemble:
        """The members and fit state :meth:`save` wrote; returns ``self``."""
        path = Path(path)
        state = json.loads((path / NORM_FILE).read_text(encoding="utf-8"))
        self.fits, self.steps, self.last_metrics = state["fits"], state["rm_steps"], state["last_metrics"]
        self.members = []
        for k, (mean, std) in enumerate(state["norm"]):
            model = LMRewardModel.from_pretrained(path / f"member-{k}", policy_tokenizer=self.tokenizer,
                                                  device=self.device)
            self.members.append(NormalizedReward.with_stats(model.requires_grad_(False), mean, std))
        return self
