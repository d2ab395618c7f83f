"""Reward networks r(s, a) with a learned absorbing-state reward and an output normaliser.

Every reward net (the MLP here, the CNN of ``rewardmodels/cnn.py``) subclasses :class:`RewardNet` and implements
``forward(obs (*batch, *obs_shape), acts (*batch, *act_shape)) -> (*batch)``, the raw per-step reward; for segments
the batch is (B, T). The base class adds:

* ``absorbing_reward``: a learned scalar used for padded steps after a terminal state, so that
  ``segment_returns = sum_valid r(s, a) + n_padded * r_absorb`` can rank a segment that ends in failure below one
  that survives. The Bradley-Terry loss only sees differences of returns of equally long segments, so it determines
  r(s, a) - r_absorb but not a common offset: that difference is the meaningful reward.
* an output normaliser (``norm_shift``, ``norm_scale`` buffers, set by :meth:`RewardNet.fit_normalizer` after each
  fit): the reward given to the agent is ``(r(s, a) - r_absorb) / std`` (Christiano et al. 2017 normalise the
  predictor's output to standard deviation 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "leaky_relu": nn.LeakyReLU, "relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU,
}


class UnsupportedSpaceError(ValueError):
    """A space the reward net cannot encode."""


def space_feature_dim(space: gym.Space) -> int:
    """Width of the flat float encoding of one element of ``space`` (one-hot for discrete spaces)."""
    if isinstance(space, gym.spaces.Box):
        return int(np.prod(space.shape))
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return int(np.sum(space.nvec))
    if isinstance(space, gym.spaces.MultiBinary):
        return int(np.prod(space.shape))
    raise UnsupportedSpaceError(
        f"cannot encode {space!r} for an MLP reward net; supported: Box, Discrete, MultiDiscrete, MultiBinary "
        "(flatten Dict/Tuple spaces first, or write a RewardNet subclass)")


def encode_space(x: torch.Tensor, space: gym.Space) -> torch.Tensor:
    """(*batch, *space.shape) -> (*batch, space_feature_dim(space)) float32: flatten Box (uint8 scaled to [0, 1]),
    one-hot Discrete / MultiDiscrete."""
    batch = x.shape[: x.ndim - len(space.shape)]
    if isinstance(space, gym.spaces.Discrete):
        return F.one_hot(x.long() - int(space.start), int(space.n)).float()
    if isinstance(space, gym.spaces.MultiDiscrete):
        nvec = np.asarray(space.nvec).ravel()
        start = np.broadcast_to(np.asarray(space.start), np.shape(space.nvec)).ravel()
        flat = x.long().reshape(*batch, -1)
        return torch.cat([F.one_hot(flat[..., i] - int(start[i]), int(n))
                          for i, n in enumerate(nvec)], dim=-1).float()
    if isinstance(space, gym.spaces.Box) and space.dtype == np.uint8:
        return x.reshape(*batch, -1).float() / 255.0
    if isinstance(space, (gym.spaces.Box, gym.spaces.MultiBinary)):
        return x.reshape(*batch, -1).float()
    raise UnsupportedSpaceError(f"cannot encode {space!r}")


def as_tensor(x: Any, device: torch.device | str | None = None) -> torch.Tensor:
    """numpy/array-like -> tensor on ``device`` without a copy when possible (float64 becomes float32)."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.dtype == torch.float64:
        t = t.float()
    return t.to(device) if device is not None else t


class RewardNet(nn.Module):
    """Base class: per-step reward ``forward``, absorbing reward, segment returns and output normalisation."""

    def __init__(self, obs_space: gym.Space, act_space: gym.Space):
        super().__init__()
        self.obs_space, self.act_space = obs_space, act_space
        self.absorbing_reward = nn.Parameter(torch.zeros(()))
        self.register_buffer("norm_shift", torch.zeros(()))
        self.register_buffer("norm_scale", torch.ones(()))

    @property
    def device(self) -> torch.device:
        return self.absorbing_reward.device

    def forward(self, obs: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Raw per-step reward r(s, a): (*batch, *obs_shape), (*batch, *act_shape) -> (*batch)."""
        raise NotImplementedError

    def segment_returns(self, obs: torch.Tensor, acts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, ...), (B, T, ...), (B, T) bool -> (B,): sum of r(s, a) on real steps + r_absorb on padded ones."""
        return segment_returns(self, obs, acts, mask)

    def normalized_reward(self, obs: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
        """The agent's reward (r(s, a) - norm_shift) / norm_scale, shape (*batch)."""
        return (self(obs, acts) - self.norm_shift) / self.norm_scale

    @torch.no_grad()
    def fit_normalizer(self, obs: Any, acts: Any, mask: Any, chunk: int = 4096) -> None:
        """Set ``norm_shift`` / ``norm_scale`` from segments (B, T, ...) with mask (B, T).

        shift = r_absorb: the agent's reward is then 0 in the absorbing state and a step is worth more than
        terminating exactly when r(s, a) > r_absorb. scale = the root mean square of r(s, a) - shift over the real
        (unpadded) steps: the reward the agent sees has magnitude 1 on the states the labels cover (Christiano et
        al. 2017 normalise to standard deviation 1; without termination the two are the same).

        Why not shift the mean to 0 (the usual normalisation)? On CartPole the true reward is +1 for every step
        alive and 0 after the pole falls. A learned reward centred on the visited states is negative on the
        below-average half of them; an agent that collects negative reward per step learns to end the episode as
        early as possible, the opposite of the task. Anchoring the absorbing state at 0 keeps "staying alive beats
        terminating" exactly as learned. When the data holds no padded step, r_absorb was never trained and says
        nothing; then the shift falls back to the mean of r(s, a) (a constant offset does not change the optimal
        policy of a task without termination).

        Why not the standard deviation over all steps, padded ones counting r_absorb? Then the survival reward of a
        task like CartPole comes out as 1 / sqrt(p (1 - p)), p the share of padded steps in the labelled segments:
        a property of the segment length and of how early the labelled episodes ended, not of the task. It was 2 to
        3 per step here, it moved with every refit, and PPO tuned for unit rewards stalled at that scale
        (benchmarks/RESULTS.md, "Preference learning on CartPole: why runs stalled").
        """
        was_training = self.training
        self.eval()
        dev = self.device
        mask = as_tensor(mask, dev).bool()
        rewards = []
        for i in range(0, mask.shape[0], chunk):
            rewards.append(self(as_tensor(obs[i:i + chunk], dev), as_tensor(acts[i:i + chunk], dev)))
        self.train(was_training)
        if not rewards:
            return
        r = torch.cat(rewards).float()  # (B, T)
        absorb = self.absorbing_reward.detach().float()
        real = r[mask]
        shift = absorb if bool((~mask).any()) else real.mean()
        scale = (real - shift).pow(2).mean().sqrt() if real.numel() > 1 else torch.ones(())
        if not torch.isfinite(scale) or scale <= 1e-8 * max(1.0, float(real.abs().max())):
            scale = torch.ones(())  # constant rewards: nothing to rescale
        self.norm_shift.copy_(shift)
        self.norm_scale.copy_(scale)


def segment_returns(net: RewardNet, obs: torch.Tensor, acts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Predicted segment returns (B,) = sum_t [mask_t r(s_t, a_t) + (1 - mask_t) r_absorb].

    Shapes: obs (B, T, *obs_shape), acts (B, T, *act_shape), mask (B, T) bool (False = padding after termination).

    The net runs on the real steps only (gathered into one (K,) batch): padded steps cost nothing, which matters
    early in episodic tasks where most of a segment can be padding.
    """
    mask = mask.bool()
    rows, _ = mask.nonzero(as_tuple=True)  # (K,) segment index of each real step, in row-major order
    r = net(obs[mask], acts[mask])  # (K,)
    n_pad = (~mask).sum(dim=-1).to(r.dtype)  # (B,)
    real = torch.zeros(mask.shape[0], dtype=r.dtype, device=r.device).index_add_(0, rows, r)
    return real + n_pad * net.absorbing_reward.to(r.dtype)


def step_rewards(net: RewardNet, obs: torch.Tensor, acts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Predicted per-step rewards (B, T): r(s_t, a_t) on real steps, r_absorb on padded ones, so that
    ``step_rewards(...).sum(1) == segment_returns(...)`` and a weighted sum over steps is the return of a window
    (SURF's temporal crops, ``rewardmodels.surf``). Shapes as ``segment_returns``."""
    mask = mask.bool()
    r = net(obs[mask], acts[mask])  # (K,)
    out = net.absorbing_reward.to(r.dtype).expand(mask.shape).clone()  # (B, T)
    out[mask] = r
    return out


class MLPRewardNet(RewardNet):
    """r(s, a) = MLP([flatten(s), onehot_or_flatten(a)]) for Box / Discrete / MultiDiscrete / MultiBinary spaces.

    Defaults follow Christiano et al. 2017 (appendix A.1, MuJoCo): two hidden layers of 64 units with leaky ReLU
    (alpha = 0.01) and no output nonlinearity.

    Args:
        obs_space, act_space: the env's spaces.
        hidden: hidden layer widths.
        activation: a name in ``ACTIVATIONS`` or an ``nn.Module`` class.
        dropout: dropout probability after each hidden layer (0 = off; active only in ``train()`` mode).
        use_action: False for a state-only reward r(s).
        output_activation: a name in ``ACTIVATIONS`` applied to the output (PEBBLE: ``tanh``, BPref
            ``reward_model.py``: 3 x 256 leaky-ReLU layers and a tanh output), or None (Christiano: none).
    """

    def __init__(
        self,
        obs_space: gym.Space,
        act_space: gym.Space,
        hidden: Sequence[int] = (64, 64),
        activation: str | type[nn.Module] = "leaky_relu",
        dropout: float = 0.0,
        use_action: bool = True,
        output_activation: str | None = None,
    ):
        super().__init__(obs_space, act_space)
        if output_activation is not None and output_activation not in ACTIVATIONS:
            raise ValueError(f"unknown output_activation {output_activation!r}; choose one of {sorted(ACTIVATIONS)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if isinstance(activation, str):
            if activation not in ACTIVATIONS:
                raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
            activation = ACTIVATIONS[activation]
        self.use_action = use_action
        in_dim = space_feature_dim(obs_space) + (space_feature_dim(act_space) if use_action else 0)
        layers: list[nn.Module] = []
        for width in hidden:
            layers.append(nn.Linear(in_dim, int(width)))
            layers.append(activation())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            in_dim = int(width)
        layers.append(nn.Linear(in_dim, 1))
        if output_activation is not None:
            layers.append(ACTIVATIONS[output_activation]())
        self.mlp = nn.Sequential(*layers)
        self.config = {"hidden": [int(h) for h in hidden], "dropout": dropout, "use_action": use_action,
                       "activation": activation.__name__, "output_activation": output_activation}

    def forward(self, obs: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
        x = encode_space(obs, self.obs_space)  # (*batch, D_obs)
        if self.use_action:
            x = torch.cat([x, encode_space(acts, self.act_space)], dim=-1)  # (*batch, D_obs + D_act)
        return self.mlp(x.to(self.absorbing_reward.dtype)).squeeze(-1)  # (*batch)


class FusedMLPs:
    """Inference-only fusion of identically built :class:`MLPRewardNet` members: the input is encoded once and
    each layer is ONE batched matmul over members, so a per-env-step ``RewardEnsemble.predict_reward`` costs a
    handful of ops instead of a dozen per member. Holds detached snapshots: the ensemble rebuilds it whenever a
    parameter or buffer changes. (Training is not fused: at segment-batch sizes it is compute-bound and batched
    matmuls were measured no faster.)"""

    def __init__(self, members: Sequence[MLPRewardNet]):
        first = members[0]
        self.obs_space, self.act_space, self.use_action = first.obs_space, first.act_space, first.use_action
        self.ops: list[Any] = []
        linears = [[m for m in net.mlp if isinstance(m, nn.Linear)] for net in members]
        k = 0
        for module in first.mlp:
            if isinstance(module, nn.Linear):
                w = torch.stack([layers[k].weight.detach().t() for layers in linears])  # (M, in, out)
                b = torch.stack([layers[k].bias.detach() for layers in linears]).unsqueeze(1)  # (M, 1, out)
                self.ops.append((w, b))
                k += 1
            elif not isinstance(module, nn.Dropout):  # dropout is the identity at inference
                self.ops.append(module)
        self.shift = torch.stack([net.norm_shift.detach() for net in members]).reshape(-1, 1)  # (M, 1)
        self.scale = torch.stack([net.norm_scale.detach() for net in members]).reshape(-1, 1)  # (M, 1)

    @staticmethod
    def supports(members: Sequence[RewardNet]) -> bool:
        first = members[0]
        return all(type(net) is MLPRewardNet and net.config == first.config and net.obs_space == first.obs_space
                   and net.act_space == first.act_space for net in members)

    def __call__(self, obs: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
        """(*batch, *obs), (*batch, *act) -> normalised rewards (M, *batch)."""
        x = encode_space(obs, self.obs_space)  # (*batch, D)
        if self.use_action:
            x = torch.cat([x, encode_space(acts, self.act_space)], dim=-1)
        batch = x.shape[:-1]
        h = x.reshape(1, -1, x.shape[-1]).to(self.shift.dtype).expand(len(self.shift), -1, -1)  # (M, N, D)
        for op in self.ops:
            h = torch.baddbmm(op[1], h, op[0]) if isinstance(op, tuple) else op(h)  # (M, N, width)
        r = (h.squeeze(-1) - self.shift) / self.scale  # (M, N)
        return r.reshape(-1, *batch)


__all__ = ["ACTIVATIONS", "FusedMLPs", "MLPRewardNet", "RewardNet", "UnsupportedSpaceError", "as_tensor",
           "encode_space", "segment_returns", "space_feature_dim", "step_rewards"]
