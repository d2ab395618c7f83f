"""An ensemble of reward nets fitted to preferences (Christiano et al. 2017, arXiv:1706.03741, section 2.2.3).

Each member is trained on its own bootstrap resample of the labelled pairs with the Bradley-Terry loss; members are
normalised separately (``RewardNet.fit_normalizer``) and their normalised rewards averaged for the agent.
Disagreement between members (std of their P(a > b)) drives query selection (``rewardmodels.selection``).

Typical use::

    ens = RewardEnsemble.mlp(env.observation_space, env.action_space, n_members=3, seed=0)
    metrics = ens.fit(dataset, FitConfig(epochs=30))          # {"loss", "accuracy", ...}
    r = ens.predict_reward(obs, acts)                          # numpy (n_envs,) -> numpy (n_envs,)
    spread = ens.disagreement(candidates)                      # (N,) std over members of P(a > b)
    ens.save("reward.safetensors"); ens.load_state("reward.safetensors")
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save as safetensors_save

from rewardmodels.losses import bradley_terry_loss
from rewardmodels.nets import FusedMLPs, MLPRewardNet, RewardNet, as_tensor, segment_returns, step_rewards
from rewardmodels.preferences import PreferenceDataset, space_from_json, space_to_json
from rewardmodels.segments import Segments
from rewardmodels.surf import crop_windows, pseudo_labels, window_weights
from textenv.files import atomic_write_bytes

logger = logging.getLogger(__name__)

FORMAT_NAME = "rlhf-gym-reward-ensemble"
FORMAT_VERSION = 1


class RewardModelFileError(ValueError):
    """A reward-model file that is missing, corrupted, or does not match this ensemble."""


@dataclass
class FitConfig:
    """How :meth:`RewardEnsemble.fit` trains (one call = one round of reward learning)."""

    epochs: int = 20
    """Passes over each member's (bootstrapped) training pairs per call; ignored when ``steps`` is set."""
    steps: int | None = None
    """Exact number of gradient steps per call (each step updates every member on one minibatch)."""
    batch_size: int = 64
    """Pairs per minibatch per member."""
    lr: float = 1e-3
    """Adam learning rate."""
    weight_decay: float = 0.0
    """L2 coefficient on the weights (not on biases or the absorbing reward); the start value when adaptive."""
    noise: float = 0.0
    """Bradley-Terry random-response rate (Christiano: 0.1, i.e. P = 0.05 + 0.9 sigmoid(R_a - R_b))."""
    bootstrap: bool = True
    """Train each member on its own resample (with replacement) of the training pairs."""
    val_fraction: float = 0.0
    """Share of labelled pairs held out for validation (Christiano: 1/e ~ 0.368). Membership is stable as the
    dataset grows by appending."""
    adaptive_l2: bool = False
    """Adapt each member's L2 coefficient after every epoch to keep val loss within ``l2_target`` x train loss
    (Christiano: 1.1-1.5). Needs ``val_fraction > 0``."""
    l2_target: tuple[float, float] = (1.1, 1.5)
    """Target band for val loss / train loss when ``adaptive_l2``."""
    l2_factor: float = 1.5
    """Multiplicative step of the adaptive L2 coefficient."""
    l2_min: float = 1e-6
    """Smallest L2 coefficient the adaptation restarts from when it has to grow from 0."""
    grad_clip: float | None = None
    """Clip the global gradient norm to this value (None = off)."""
    normalizer_steps: int = 50_000
    """At most this many steps (whole segments) of the dataset are used to fit each member's output normaliser."""
    stop_accuracy: float | None = None
    """End a fit early, after the first epoch in which the members order at least this share of their (non-tie)
    training pairs right, on average (Lee et al. 2021, PEBBLE, arXiv:2106.05091: 0.97). A warm-started refit then
    costs about one epoch when the new labels agree with the reward already learned, and ``epochs`` only when they
    do not. None = always run ``epochs`` (or ``steps``)."""
    pseudo_threshold: float | None = None
    """SURF's pseudo-labels (``rewardmodels.surf``; Park et al. 2022): on the unlabelled pairs given to ``fit``, a
    member's own P(a > b) becomes its label where max(P, 1 - P) >= this (SURF: 0.99). None = off."""
    pseudo_weight: float = 1.0
    """SURF's lambda: weight of the pseudo-label loss (SURF: 1)."""
    pseudo_ratio: int = 4
    """SURF's mu: unlabelled pairs per labelled pair in each minibatch (SURF: 4)."""
    crop: int = 0
    """SURF's temporal cropping: every time a pair is used for training, its two segments are cropped to one length
    drawn from H - crop .. H + crop (H the labelled length; the dataset's ``context`` steps allow more than H) at
    their own random starts (SURF: 5). 0 = off."""

    def __post_init__(self) -> None:
        if self.epochs < 1 and self.steps is None:
            raise ValueError(f"epochs must be >= 1 (or set steps), got {self.epochs}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1 or None, got {self.steps}")
        if self.batch_size < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("need batch_size >= 1, lr > 0 and weight_decay >= 0")
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"noise must be in [0, 1], got {self.noise}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), e.g. 1/e = 0.368; got {self.val_fraction}")
        if self.stop_accuracy is not None and not 0.0 < self.stop_accuracy <= 1.0:
            raise ValueError(f"stop_accuracy must be in (0, 1] or None (PEBBLE: 0.97), got {self.stop_accuracy}")
        if self.pseudo_threshold is not None and not 0.5 <= self.pseudo_threshold <= 1.0:
            raise ValueError(f"pseudo_threshold must be in [0.5, 1] or None (SURF: 0.99), got {self.pseudo_threshold}")
        if self.pseudo_weight < 0 or self.pseudo_ratio < 1 or self.crop < 0:
            raise ValueError("need pseudo_weight >= 0, pseudo_ratio >= 1 and crop >= 0 (SURF: 1, 4, 5)")
        if self.adaptive_l2 and self.val_fraction <= 0:
            raise ValueError("adaptive_l2 needs held-out pairs: set val_fraction > 0 (Christiano: 1/e)")
        lo, hi = self.l2_target
        if not 0 < lo < hi or self.l2_factor <= 1 or self.l2_min <= 0:
            raise ValueError("need 0 < l2_target[0] < l2_target[1], l2_factor > 1 and l2_min > 0")


def _tensors(ds: PreferenceDataset, device: torch.device) -> dict[str, Any]:
    # as_tensor shares memory with the numpy arrays on CPU: image datasets are not copied.
    data: dict[str, Any] = {k: as_tensor(getattr(ds, k), device) for k in
                            ("obs_a", "obs_b", "acts_a", "acts_b", "mask_a", "mask_b", "labels")}
    data["context"] = ds.context
    return data


def _pair_segments(data: dict[str, Any], idx: torch.Tensor, core: bool) -> tuple[torch.Tensor, ...]:
    """obs (2B, T, *obs), acts (2B, T, *act), mask (2B, T) of pairs ``idx``, a's then b's; ``core``: without the
    dataset's context steps."""
    window = slice(data["context"], data["mask_a"].shape[1] - data["context"]) if core else slice(None)
    return tuple(torch.cat([data[f"{k}_a"][idx][:, window], data[f"{k}_b"][idx][:, window]])
                 for k in ("obs", "acts", "mask"))


def _pair_returns(net: RewardNet, data: dict[str, Any], idx: torch.Tensor,
                  crop: tuple[np.ndarray, ...] | None = None) -> tuple[torch.Tensor, ...]:
    """Returns of a and b for pairs ``idx`` in ONE forward pass over the 2B segments: over their labelled steps, or
    with ``crop`` = (start_a, start_b, length) (``rewardmodels.surf.crop_windows``) over those windows."""
    if crop is None:
        ret = segment_returns(net, *_pair_segments(data, idx, core=True))  # (2B,)
    else:
        steps = step_rewards(net, *_pair_segments(data, idx, core=False))  # (2B, T)
        starts, lengths = np.concatenate(crop[:2]), np.concatenate([crop[2], crop[2]])
        ret = (steps * window_weights(starts, lengths, steps.shape[1], steps.device)).sum(1)
    return ret[: len(idx)], ret[len(idx):]


def _crops(data: dict[str, Any], n: int, cfg: FitConfig, rng: np.random.Generator | None):
    """SURF's crop windows for ``n`` pairs of ``data``, or None when cropping is off."""
    if not cfg.crop or rng is None:
        return None
    total = data["mask_a"].shape[1]
    return crop_windows(n, total - 2 * data["context"], total, cfg.crop, rng)


class RewardEnsemble(nn.Module):
    """Reward nets trained on bootstrap resamples of the same preferences; see the module docstring.

    Args:
        members: the reward nets (any :class:`RewardNet`, e.g. :class:`MLPRewardNet` or a CNN).
        seed: seeds the bootstraps, minibatch order and dropout of every :meth:`fit` (deterministic per call index).
        reward_scale: target standard deviation of the agent's reward (Christiano: 1 for MuJoCo, 0.05 for Atari).
        fit_config: default :class:`FitConfig` of :meth:`fit`.
    """

    checkpoint_name = "reward_model.safetensors"
    """What ``agents.loop.reward_model.EnsembleRewardModel`` saves it as inside a checkpoint."""

    def __init__(self, members: Sequence[RewardNet], seed: int = 0, reward_scale: float = 1.0,
                 fit_config: FitConfig | None = None):
        super().__init__()
        if len(members) < 1:
            raise ValueError("a RewardEnsemble needs at least one member")
        if reward_scale <= 0:
            raise ValueError(f"reward_scale must be > 0, got {reward_scale}")
        self.members = nn.ModuleList(members)
        self.seed = int(seed)
        self.reward_scale = float(reward_scale)
        self.fit_config = fit_config or FitConfig()
        self.register_buffer("l2", torch.full((len(members),), float("nan")))  # adaptive L2 state per member
        self.register_buffer("fit_count", torch.zeros((), dtype=torch.int64))
        self.net_config: dict[str, Any] | None = None  # set by .mlp() so that .load() can rebuild the nets
        self._can_fuse = FusedMLPs.supports(self.members)
        self._fused: FusedMLPs | None = None
        self._fused_key: tuple | None = None
        self._tensor_list: list[torch.Tensor] | None = None
        self.eval()  # inference mode by default; fit() switches to train mode and back

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_factory(cls, factory: Callable[[], RewardNet], n_members: int = 3, seed: int = 0,
                     **kwargs: Any) -> RewardEnsemble:
        """Build ``n_members`` nets with ``factory()``, member i initialised under torch seed ``seed * 1000 + i``."""
        members = []
        for i in range(n_members):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed * 1000 + i)
                members.append(factory())
        return cls(members, seed=seed, **kwargs)

    @classmethod
    def mlp(cls, obs_space: gym.Space, act_space: gym.Space, n_members: int = 3, seed: int = 0,
            hidden: Sequence[int] = (64, 64), activation: str = "leaky_relu", dropout: float = 0.0,
            use_action: bool = True, output_activation: str | None = None, **kwargs: Any) -> RewardEnsemble:
        """An ensemble of :class:`MLPRewardNet` (Christiano's 2x64 leaky-ReLU by default); ``kwargs`` go to
        the constructor (``reward_scale``, ``fit_config``)."""
        net_kw = {"hidden": [int(h) for h in hidden], "activation": activation, "dropout": dropout,
                  "use_action": use_action, "output_activation": output_activation}
        ens = cls.from_factory(lambda: MLPRewardNet(obs_space, act_space, **net_kw), n_members, seed, **kwargs)
        ens.net_config = {"class": "MLPRewardNet", "obs_space": space_to_json(obs_space),
                          "act_space": space_to_json(act_space), "kwargs": net_kw}
        return ens

    @property
    def n_members(self) -> int:
        return len(self.members)

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    # ------------------------------------------------------------------ training
    def fit(self, dataset: PreferenceDataset, config: FitConfig | None = None,
            unlabelled: PreferenceDataset | None = None, **overrides: Any) -> dict[str, float]:
        """Train every member on the labelled pairs of ``dataset`` (NaN labels are skipped), warm-starting from the
        current weights, then refit the output normalisers on all of ``dataset``'s segments.

        Args:
            dataset: the preferences; raises ``EmptyDatasetError`` if none is labelled.
            config: a :class:`FitConfig` (default: the ensemble's ``fit_config``); ``overrides`` replace its fields,
                e.g. ``fit(ds, epochs=50, lr=3e-4)``.
            unlabelled: pairs without labels for SURF's pseudo-labels (``FitConfig.pseudo_threshold``); each
                minibatch adds ``pseudo_ratio`` of them per labelled pair, drawn uniformly without replacement.

        Returns:
            Floats: ``loss`` (mean member BT loss on its training pairs), ``accuracy`` (ensemble on all labelled
            non-tie pairs vs their labels), ``train_accuracy``, ``val_loss`` / ``val_accuracy`` (NaN without a
            validation split), ``l2`` (mean L2 coefficient), ``steps``, ``n_labelled``, ``n_train``, ``n_val``.
        """
        cfg = dataclasses.replace(config or self.fit_config, **overrides)
        dataset.require_labelled("RewardEnsemble.fit")
        labelled = np.flatnonzero(dataset.labelled)
        n_lab = len(labelled)
        train_idx, val_idx = self._split(dataset, labelled, cfg.val_fraction)
        data = _tensors(dataset.subset(labelled), self.device)
        udata = None
        if cfg.pseudo_threshold is not None and unlabelled is not None and len(unlabelled):
            udata = _tensors(unlabelled, self.device)
        rng = np.random.default_rng([self.seed, int(self.fit_count)])
        self._init_l2(cfg)
        opt = torch.optim.Adam(self._param_groups(cfg), lr=cfg.lr)
        boots = [rng.choice(train_idx, size=len(train_idx), replace=True) if cfg.bootstrap else train_idx
                 for _ in self.members]
        per_epoch = math.ceil(len(train_idx) / cfg.batch_size)
        total_steps = cfg.steps if cfg.steps is not None else cfg.epochs * per_epoch
        step = 0
        self.train()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(int(rng.integers(2**31)))
            while step < total_steps:
                perms = [torch.from_numpy(rng.permutation(b)).to(self.device) for b in boots]
                hits = torch.zeros(2, device=self.device)  # (right, counted) over the epoch, all members
                for b in range(per_epoch):
                    if step >= total_steps:
                        break
                    idx = [p[b * cfg.batch_size:(b + 1) * cfg.batch_size] for p in perms]
                    loss, hits = self._step_loss(data, idx, udata, cfg, rng, hits)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.grad_clip is not None:
                        nn.utils.clip_grad_norm_(self.parameters(), cfg.grad_clip)
                    opt.step()
                    step += 1
                if cfg.adaptive_l2 and len(val_idx):
                    self._adapt_l2(opt, data, train_idx, val_idx, cfg)
                if cfg.stop_accuracy is not None and float(hits[0]) >= cfg.stop_accuracy * float(hits[1]):
                    break
        self.eval()
        self.fit_count += 1
        metrics = self._fit_metrics(data, train_idx, val_idx, cfg)
        metrics.update(steps=float(step), n_labelled=float(n_lab), n_train=float(len(train_idx)),
                       n_val=float(len(val_idx)), l2=float(self.l2.mean()))
        self.fit_normalizers(dataset, cfg.normalizer_steps, rng)
        logger.debug("reward fit %d: %s", int(self.fit_count), metrics)
        return metrics

    def _split(self, dataset: PreferenceDataset, labelled: np.ndarray,
               val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
        """Train / validation positions within ``labelled``. Stable: pair i's uniform draw is element i of one
        seeded stream, so a pair never moves between the sets as the dataset grows by appending."""
        u = np.random.default_rng([self.seed, 7919]).random(len(dataset))[labelled]
        is_val = u < val_fraction
        if is_val.all():
            is_val[np.argmax(u)] = False  # keep at least one training pair
        return np.flatnonzero(~is_val), np.flatnonzero(is_val)

    def _step_loss(self, data: dict[str, Any], idx: list[torch.Tensor], udata: dict[str, Any] | None,
                   cfg: FitConfig, rng: np.random.Generator, hits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One gradient step's loss, summed over members (member m on its pairs ``idx[m]``, cropped when
        ``cfg.crop``), plus SURF's pseudo-label loss on ``udata``; ``hits`` gains the stop-accuracy counts."""
        loss = torch.zeros((), device=self.device)
        for net, i in zip(self.members, idx, strict=True):
            if cfg.stop_accuracy is None:  # nothing to count
                loss = loss + self._batch_loss(net, data, i, cfg, rng=rng)
            else:
                member_loss, member_hits = self._batch_loss(net, data, i, cfg, count=True, rng=rng)
                loss, hits = loss + member_loss, hits + member_hits
            if udata is not None:
                n_u = len(udata["labels"])
                u = torch.from_numpy(rng.choice(n_u, size=min(n_u, len(i) * cfg.pseudo_ratio), replace=False))
                loss = loss + cfg.pseudo_weight * self._pseudo_loss(net, udata, u.to(self.device), cfg, rng)
        return loss, hits

    def _pseudo_loss(self, net: RewardNet, udata: dict[str, Any], idx: torch.Tensor, cfg: FitConfig,
                     rng: np.random.Generator) -> torch.Tensor:
        """SURF's pseudo-label loss (``rewardmodels.surf``) of one member on unlabelled pairs ``idx``: its labels
        and confidence from the uncropped segments, the BT loss on (cropped) ones, averaged over all ``idx``."""
        crop = _crops(udata, len(idx), cfg, rng)
        if crop is None:
            ret_a, ret_b = _pair_returns(net, udata, idx)
            labels, confident = pseudo_labels(ret_a, ret_b, cfg.pseudo_threshold)
        else:
            with torch.no_grad():
                labels, confident = pseudo_labels(*_pair_returns(net, udata, idx), cfg.pseudo_threshold)
            ret_a, ret_b = _pair_returns(net, udata, idx, crop)
        loss = bradley_terry_loss(ret_a, ret_b, labels, noise=cfg.noise, weights=confident.float())[0]
        return loss * confident.float().mean()  # SURF: mean over the whole batch, unconfident pairs as 0

    def _batch_loss(self, net: RewardNet, data: dict[str, Any], idx: torch.Tensor,
                    cfg: FitConfig, count: bool = False, rng: np.random.Generator | None = None) -> Any:
        """The member's BT loss on pairs ``idx`` (cropped when ``cfg.crop`` and an ``rng`` draws the windows); with
        ``count``, also (2,) = (pairs ordered right, non-tie labelled pairs), the training accuracy's parts (equal
        returns count as wrong)."""
        ret_a, ret_b = _pair_returns(net, data, idx, _crops(data, len(idx), cfg, rng))
        y = data["labels"][idx]
        loss = bradley_terry_loss(ret_a, ret_b, y, noise=cfg.noise)[0]
        if not count:
            return loss
        with torch.no_grad():
            decided = ~torch.isnan(y) & (y != 0.5)
            right = decided & torch.where(y > 0.5, ret_a > ret_b, ret_b > ret_a)
            return loss, torch.stack([right.sum(), decided.sum()]).float()

    def _init_l2(self, cfg: FitConfig) -> None:
        if not cfg.adaptive_l2 or bool(torch.isnan(self.l2).any()):
            self.l2.fill_(cfg.weight_decay)

    def _param_groups(self, cfg: FitConfig) -> list[dict[str, Any]]:
        groups = []
        for m, net in enumerate(self.members):
            decay = [p for n, p in net.named_parameters() if p.ndim >= 2]  # weights; not biases / absorbing reward
            rest = [p for n, p in net.named_parameters() if p.ndim < 2]
            groups.append({"params": decay, "weight_decay": float(self.l2[m]), "member": m})
            groups.append({"params": rest, "weight_decay": 0.0})
        return groups

    @torch.no_grad()
    def _member_losses(self, data: dict[str, torch.Tensor], idx: np.ndarray, cfg: FitConfig,
                       chunk: int = 1024) -> list[float]:
        """Each member's mean BT loss over pairs ``idx`` (all labelled), in chunks, in eval mode."""
        was = self.training
        self.eval()
        totals = np.zeros(self.n_members)
        for i in range(0, len(idx), chunk):
            t = torch.from_numpy(idx[i:i + chunk]).to(self.device)
            totals += [float(self._batch_loss(net, data, t, cfg)) * len(t) for net in self.members]
        self.train(was)
        return (totals / max(len(idx), 1)).tolist()

    def _adapt_l2(self, opt: torch.optim.Optimizer, data: dict[str, torch.Tensor], train_idx: np.ndarray,
                  val_idx: np.ndarray, cfg: FitConfig) -> None:
        """Christiano et al. 2017 (A.1): keep validation loss between 1.1 and 1.5 times the training loss."""
        train_l = self._member_losses(data, train_idx, cfg)
        val_l = self._member_losses(data, val_idx, cfg)
        lo, hi = cfg.l2_target
        for group in opt.param_groups:
            m = group.get("member")
            if m is None:
                continue
            ratio = val_l[m] / max(train_l[m], 1e-8)
            wd = group["weight_decay"]
            if ratio > hi:
                wd = max(wd, cfg.l2_min) * cfg.l2_factor  # overfitting: regularise more
            elif ratio < lo:
                wd = wd / cfg.l2_factor
            group["weight_decay"] = wd
            self.l2[m] = wd

    def _fit_metrics(self, data: dict[str, torch.Tensor], train_idx: np.ndarray, val_idx: np.ndarray,
                     cfg: FitConfig) -> dict[str, float]:
        n = data["labels"].shape[0]
        p = self._mean_probs(data, np.arange(n))  # (n,)
        y = data["labels"]
        nan = float("nan")
        return {
            "loss": float(np.mean(self._member_losses(data, train_idx, cfg))),
            "val_loss": float(np.mean(self._member_losses(data, val_idx, cfg))) if len(val_idx) else nan,
            "accuracy": _agreement(p, y),
            "train_accuracy": _agreement(p[train_idx], y[train_idx]),
            "val_accuracy": _agreement(p[val_idx], y[val_idx]) if len(val_idx) else nan,
        }

    @torch.no_grad()
    def fit_normalizers(self, data: PreferenceDataset | Segments, max_steps: int = 50_000,
                        rng: np.random.Generator | int | None = 0) -> None:
        """Refit every member's output normaliser on (a subsample of) segments: both sides of a
        :class:`PreferenceDataset`, or a :class:`Segments` batch (e.g. cut from the agent's latest rollouts).
        ``fit`` calls this on its dataset; call it again to normalise over other states."""
        if len(data) == 0:
            return
        sides = [data] if isinstance(data, Segments) else [data.segments("a"), data.segments("b")]
        rows = max(1, max_steps // (len(sides) * sides[0].segment_len))
        idx = np.arange(len(data))
        if len(idx) > rows:
            idx = np.sort(np.random.default_rng(rng).choice(idx, size=rows, replace=False))
        obs = np.concatenate([s.obs[idx] for s in sides])
        acts = np.concatenate([s.acts[idx] for s in sides])
        mask = np.concatenate([s.mask[idx] for s in sides])
        for net in self.members:
            net.fit_normalizer(obs, acts, mask)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_reward(self, obs: Any, acts: Any) -> Any:
        """The agent's reward: each member's normalised reward, averaged over members, times ``reward_scale``.

        Shapes: obs (*batch, *obs_shape), acts (*batch, *act_shape) -> (*batch), e.g. (n_envs,) per env step or
        (S, n_envs) for a whole rollout buffer. numpy in -> numpy float32 out; torch in -> torch out on the
        ensemble's device (no host round-trip).
        """
        torch_in = isinstance(obs, torch.Tensor)
        dev = self.device
        o, a = as_tensor(obs, dev), as_tensor(acts, dev)
        fused = self._fused_members()
        if fused is not None:
            r = fused(o, a).mean(0) * self.reward_scale
        else:
            r = self.members[0].normalized_reward(o, a)
            for net in self.members[1:]:
                r = r + net.normalized_reward(o, a)
            r = r * (self.reward_scale / self.n_members)
        return r if torch_in else r.cpu().numpy().astype(np.float32, copy=False)

    predict = predict_reward  # the name SPEC.md uses

    def _fused_members(self) -> FusedMLPs | None:
        """The fused MLP path when every member is an identical MLP and the ensemble is in eval mode.

        The cache key holds every tensor's storage pointer and in-place version counter, so optimizer steps,
        ``load_state_dict``, ``.to(device)`` or a hand edit of a weight all trigger a rebuild.
        """
        if self.training or not self._can_fuse:
            return None
        if self._tensor_list is None:  # reset by _apply / load_state_dict, which may swap tensor objects
            self._tensor_list = [*self.parameters(), *self.buffers()]
        key = tuple((t.data_ptr(), t._version) for t in self._tensor_list)
        if key != self._fused_key:
            self._fused, self._fused_key = FusedMLPs(self.members), key
        return self._fused

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> RewardEnsemble:
        self._tensor_list, self._fused_key = None, None  # .to() / .cuda() / .float() may replace tensors
        return super()._apply(fn, *args, **kwargs)

    def load_state_dict(self, state_dict: Any, *args: Any, **kwargs: Any) -> Any:
        self._tensor_list, self._fused_key = None, None  # assign=True replaces tensors
        return super().load_state_dict(state_dict, *args, **kwargs)

    @torch.no_grad()
    def member_returns(self, obs: Any, acts: Any, mask: Any) -> torch.Tensor:
        """Raw (unnormalised) segment returns of every member, (M, B), from (B, T, ...) segments."""
        o, a, m = as_tensor(obs, self.device), as_tensor(acts, self.device), as_tensor(mask, self.device).bool()
        return torch.stack([segment_returns(net, o, a, m) for net in self.members])

    @torch.no_grad()
    def preference_probs(self, pairs: PreferenceDataset, chunk: int = 1024) -> np.ndarray:
        """(M, N) each member's P(a > b) = sigmoid(R_a - R_b) for the pairs (labels are ignored; their labelled
        steps, without ``context``)."""
        pairs = pairs.core()
        out = []
        for i in range(0, len(pairs), chunk):
            sl = slice(i, i + chunk)
            ra = self.member_returns(pairs.obs_a[sl], pairs.acts_a[sl], pairs.mask_a[sl])
            rb = self.member_returns(pairs.obs_b[sl], pairs.acts_b[sl], pairs.mask_b[sl])
            out.append(torch.sigmoid(ra - rb).cpu().numpy())
        return np.concatenate(out, axis=1) if out else np.zeros((self.n_members, 0), np.float32)

    def disagreement(self, pairs: PreferenceDataset) -> np.ndarray:
        """(N,) standard deviation across members of P(a > b): Christiano's query-selection score."""
        return self.preference_probs(pairs).std(axis=0)

    @torch.no_grad()
    def _mean_probs(self, data: dict[str, torch.Tensor], idx: np.ndarray, chunk: int = 1024) -> torch.Tensor:
        """(len(idx),) ensemble-mean P(a > b) of the pairs ``idx`` of ``data``."""
        out = []
        for i in range(0, len(idx), chunk):
            t = torch.from_numpy(idx[i:i + chunk]).to(self.device)
            out.append(torch.stack([torch.sigmoid(torch.sub(*_pair_returns(net, data, t)))
                                    for net in self.members]).mean(0))
        return torch.cat(out)

    @torch.no_grad()
    def evaluate(self, pairs: PreferenceDataset) -> dict[str, float]:
        """Ensemble-mean P(a > b) on ``pairs`` against their labels and against their true returns.

        Returns ``accuracy`` (labelled non-tie pairs vs labels; NaN if none), ``true_accuracy`` (pairs with unequal
        true returns, vs the true preference: the "agreement with the true preferences"; NaN if none) and ``n``.
        """
        p = torch.from_numpy(self.preference_probs(pairs).mean(0))
        ra, rb = pairs.true_returns()
        true_y = torch.from_numpy(np.where(ra > rb, 1.0, np.where(ra < rb, 0.0, np.nan)).astype(np.float32))
        return {"accuracy": _agreement(p, torch.from_numpy(pairs.labels)),
                "true_accuracy": _agreement(p, true_y), "n": float(len(pairs))}

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write all weights, normalisers and fit state to a ``.safetensors`` file, atomically."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        meta = {"format": FORMAT_NAME, "version": str(FORMAT_VERSION), "n_members": str(self.n_members),
                "member_class": type(self.members[0]).__name__, "seed": str(self.seed),
                "reward_scale": repr(self.reward_scale), "net_config": json.dumps(self.net_config)}
        data = safetensors_save(state, metadata=meta)
        return atomic_write_bytes(path, data)

    @staticmethod
    def _read(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
        path = Path(path)
        if not path.is_file():
            raise RewardModelFileError(f"reward-model file {path} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        except Exception as e:  # safetensors raises its own error types for corrupt headers/truncation
            raise RewardModelFileError(f"reward-model file {path} is corrupted or truncated: {e}") from e
        if meta.get("format") != FORMAT_NAME:
            raise RewardModelFileError(f"{path} is not a {FORMAT_NAME} file (format {meta.get('format')!r})")
        return meta, tensors

    def load_state(self, path: str | os.PathLike) -> RewardEnsemble:
        """Load weights saved by :meth:`save` into this (identically built) ensemble; returns ``self``."""
        meta, tensors = self._read(path)
        if int(meta.get("n_members", -1)) != self.n_members:
            raise RewardModelFileError(f"{path} holds {meta.get('n_members')} members, this ensemble has "
                                       f"{self.n_members}; build the ensemble with the same settings")
        try:
            self.load_state_dict(tensors, strict=True)
        except RuntimeError as e:
            raise RewardModelFileError(f"{path} does not match this ensemble's architecture: {e}") from e
        return self

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str | None = None) -> RewardEnsemble:
        """Rebuild an ensemble made by :meth:`mlp` from its file (others: build it, then :meth:`load_state`)."""
        meta, _ = cls._read(path)
        cfg = json.loads(meta.get("net_config") or "null")
        if not cfg or cfg.get("class") != "MLPRewardNet":
            raise RewardModelFileError(f"{path} does not describe how to rebuild its nets; construct the ensemble "
                                       "and call load_state(path)")
        ens = cls.mlp(space_from_json(cfg["obs_space"]), space_from_json(cfg["act_space"]),
                      n_members=int(meta["n_members"]), seed=int(meta["seed"]),
                      reward_scale=float(meta["reward_scale"]), **cfg["kwargs"])
        if device is not None:
            ens.to(device)
        return ens.load_state(path)


def _agreement(p: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of non-tie, non-NaN labels y whose side P(a > b) = p picks (p = 0.5 counts half)."""
    y = y.to(p.device)
    keep = ~torch.isnan(y) & (y != 0.5)
    if not bool(keep.any()):
        return float("nan")
    p, y = p[keep], y[keep]
    hit = torch.where(p == 0.5, torch.full_like(p, 0.5), ((p > 0.5) == (y > 0.5)).to(p.dtype))
    return float(hit.mean())
