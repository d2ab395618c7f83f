"""The Atari reward predictor of Christiano et al. 2017: a small CNN over stacked 84x84 frames.

Architecture (arXiv:1706.03741, App. A.2, "Atari"): the input is the policy's observation, 4 stacked 84x84 frames;
"4 convolutional layers of size 7x7, 5x5, 3x3, and 3x3 with strides 3, 2, 1, 1, each having 16 filters, with leaky
ReLU nonlinearities (alpha = 0.01). This is followed by a fully connected layer of size 64 and then a scalar output.
All convolutional layers use batch norm and dropout with alpha = 0.5 to prevent predictor overfitting."
Per layer here: conv -> batch norm -> leaky ReLU -> dropout. On 84x84 inputs the feature maps are 26, 11, 9 and 7
pixels wide, so the fully connected layer sees 16 * 7 * 7 = 784 features (+ the one-hot action when
``use_action``). The paper's Atari predictor sees only the frames; ``use_action=True`` makes it r(s, a).

Forward contract (``rewardmodels.nets.RewardNet``): ``forward(obs (*batch, *obs_shape), acts (*batch, *act_shape))
-> (*batch)`` raw reward; for segments the batch is (B, T). Padded steps after a terminal state get the base class's
learned absorbing reward in ``segment_returns``; ``fit_normalizer`` / ``normalized_reward`` are inherited (std 1).
The paper's Atari reward scale (standard deviation 0.05, App. A.2) is ``RewardEnsemble(reward_scale=0.05)``.

Efficiency: observations stay uint8 until the network: the (B, T, C, H, W) batch is flattened to (B*T, C, H, W)
with a view and converted to float once (``x.float() / 255``), which the first convolution needs anyway.
Channels-last stacks (SB3's ``VecFrameStack``: (H, W, k)) are permuted with a view; that view is exactly
PyTorch's ``channels_last`` memory format, which convolutions consume without a copy. Strided frame-stack views
from ``rewardmodels.image_segments`` (``Tensor.unfold``) are materialised only by that float conversion.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from rewardmodels.nets import RewardNet, UnsupportedSpaceError

__all__ = ["CNNRewardNet", "image_layout"]

#: (kernel, stride) of the paper's four conv layers (App. A.2)
PAPER_CONVS: tuple[tuple[int, int], ...] = ((7, 3), (5, 2), (3, 1), (3, 1))


def image_layout(space: gym.Space) -> tuple[bool, tuple[int, int, int]]:
    """``(channels_last, (C, H, W))`` of an image observation space: (C, H, W), (H, W, C) or (H, W) grayscale.

    The channel axis is the smallest of the first and last axes (frame stacks have 1-12 channels, Atari frames are
    84 or more pixels wide), which is how SB3 tells them apart too (``is_image_space_channels_first``).
    """
    if not isinstance(space, gym.spaces.Box) or len(space.shape) not in (2, 3):
        raise UnsupportedSpaceError(
            f"CNNRewardNet needs an image Box observation space (C, H, W), (H, W, C) or (H, W), got {space}; use "
            "MLPRewardNet for vector observations")
    if len(space.shape) == 2:
        return False, (1, *space.shape)
    a, b, c = space.shape
    if c < a:
        return True, (c, a, b)
    return False, (a, b, c)


class CNNRewardNet(RewardNet):
    """r(s) (or r(s, a)) from image observations, the paper's Atari predictor by default (module docstring).

    Args:
        obs_space: image Box space, uint8 (0..255, scaled by 1/255 here) or float.
        act_space: the env's action space (used only when ``use_action``; Discrete is one-hot encoded).
        channels: filters per conv layer (paper: 16 each).
        convs: (kernel, stride) per conv layer (paper: 7/3, 5/2, 3/1, 3/1).
        hidden: width of the fully connected layer (paper: 64).
        dropout: dropout after every conv layer (paper: 0.5); active only in ``train()`` mode.
        batch_norm: batch norm after every conv layer (paper: yes). Uses batch statistics in ``train()`` mode and
            running statistics in ``eval()`` mode (what the agent's reward uses).
        negative_slope: of the leaky ReLUs (paper: 0.01).
        use_action: also condition on the action (the paper's Atari predictor does not).
    """

    def __init__(
        self,
        obs_space: gym.Space,
        act_space: gym.Space,
        channels: int | Sequence[int] = 16,
        convs: Sequence[tuple[int, int]] = PAPER_CONVS,
        hidden: int = 64,
        dropout: float = 0.5,
        batch_norm: bool = True,
        negative_slope: float = 0.01,
        use_action: bool = False,
    ):
        super().__init__(obs_space, act_space)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.channels_last, (c, h, w) = image_layout(obs_space)
        self._grayscale_2d = len(obs_space.shape) == 2
        self._scale = 1.0 / 255.0 if obs_space.dtype == np.uint8 else 1.0
        widths = [int(channels)] * len(convs) if isinstance(channels, int) else [int(x) for x in channels]
        if len(widths) != len(convs):
            raise ValueError(f"channels has {len(widths)} entries for {len(convs)} conv layers")
        layers: list[nn.Module] = []
        in_ch = c
        for width, (kernel, stride) in zip(widths, convs, strict=True):
            layers.append(nn.Conv2d(in_ch, width, kernel, stride, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.LeakyReLU(negative_slope))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            in_ch = width
        self.convs = nn.Sequential(*layers)
        with torch.no_grad():
            n_features = int(np.prod(self.convs.eval()(torch.zeros(1, c, h, w)).shape[1:]))
        self.convs.train()
        self.use_action = bool(use_action)
        self.inference_chunk = 1024  # frames per convolution call without autograd (~115 MB of float input)
        if use_action and not isinstance(act_space, gym.spaces.Discrete | gym.spaces.Box):
            raise UnsupportedSpaceError(f"use_action supports Discrete and Box action spaces, got {act_space}")
        act_dim = 0
        if use_action:
            act_dim = int(act_space.n) if isinstance(act_space, gym.spaces.Discrete) else int(np.prod(act_space.shape))
        self.head = nn.Sequential(
            nn.Linear(n_features + act_dim, int(hidden)), nn.LeakyReLU(negative_slope), nn.Linear(int(hidden), 1)
        )
        self.config = {"channels": widths, "convs": [list(x) for x in convs], "hidden": int(hidden),
                       "dropout": dropout, "batch_norm": batch_norm, "negative_slope": negative_slope,
                       "use_action": self.use_action}

    def _frames(self, obs: torch.Tensor) -> torch.Tensor:
        """(*batch, *obs_shape) -> float (N, C, H, W) scaled to [0, 1]: one copy, the float conversion."""
        n_obs = len(self.obs_space.shape)
        if tuple(obs.shape[obs.ndim - n_obs:]) != tuple(self.obs_space.shape):
            raise ValueError(f"observations of shape {tuple(obs.shape)} do not end in the observation space's "
                             f"shape {self.obs_space.shape}")
        x = obs.to(self.device)
        if self._grayscale_2d:
            x = x.unsqueeze(-3)
        elif self.channels_last:
            x = x.movedim(-1, -3)  # NHWC storage seen as NCHW: torch.channels_last after .float(), no copy
        # .float() before flattening: a strided frame-stack view (Tensor.unfold) is materialised once, as float;
        # the float result is dense, so the reshape below is a view.
        x = x.float()
        if self._scale != 1.0:
            x = x.mul_(self._scale)
        return x.reshape(-1, *x.shape[-3:])

    def forward(self, obs: torch.Tensor, acts: torch.Tensor | None = None) -> torch.Tensor:
        """Raw reward (*batch) of observations (*batch, *obs_shape) (uint8 or float) and actions (*batch, *)."""
        batch = tuple(obs.shape[: obs.ndim - len(self.obs_space.shape)])
        per_row = int(np.prod(batch[1:])) if batch else 1  # frames per index of the first batch dim
        if torch.is_grad_enabled() or not batch or batch[0] * per_row <= self.inference_chunk:
            feats = self.convs(self._frames(obs)).flatten(1)  # (N, 16 * 7 * 7)
        else:  # no graph to keep: bound the float copy of the frames (candidate scoring, normalisers)
            step = max(1, self.inference_chunk // per_row)
            feats = torch.cat([self.convs(self._frames(obs[i:i + step])).flatten(1)
                               for i in range(0, batch[0], step)])
        if self.use_action:
            if acts is None:
                raise ValueError("this CNNRewardNet was built with use_action=True: pass the actions")
            a = acts.to(self.device)
            if isinstance(self.act_space, gym.spaces.Discrete):
                a = F.one_hot(a.reshape(-1).long() - int(self.act_space.start), int(self.act_space.n)).float()
            else:
                a = a.reshape(feats.shape[0], -1).float()
            feats = torch.cat([feats, a], dim=1)
        return self.head(feats).reshape(batch)  # (*batch)

    @torch.no_grad()
    def recalibrate_batchnorm(self, obs: Any, mask: Any | None = None, chunk: int = 512) -> None:
        """Recompute the batch-norm running statistics as exact averages over ``obs`` (B, T, *obs_shape).

        Batch norm's running statistics (used in ``eval()`` mode, i.e. for the agent's reward and for query
        selection) trail the weights by an exponential average with momentum 0.1: after a short fit they describe
        older weights, and the eval-mode reward can be far from what training fitted. Recomputing them over the
        data with dropout off ("precise BN", Wu & Johnson 2021, arXiv:2105.07576) removes that lag and the
        dropout/batch-norm variance shift (Li et al. 2019, arXiv:1801.05134). Steps with ``mask`` False (padding)
        are left out. Called by ``fit_normalizer``, which ``RewardEnsemble.fit`` runs after every fit.
        """
        bns = [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not bns:
            return
        obs = obs if isinstance(obs, torch.Tensor) else torch.as_tensor(np.asarray(obs))
        n_obs = len(self.obs_space.shape)
        flat = obs.reshape(-1, *obs.shape[obs.ndim - n_obs:])  # (B*T, *obs_shape)
        if mask is not None:
            keep = torch.as_tensor(np.asarray(mask)).reshape(-1).bool()
            flat = flat[keep.to(flat.device)]
        if len(flat) == 0:
            return
        was_training = self.training
        momenta = [m.momentum for m in bns]
        self.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the chunks
            m.train()
        try:
            for i in range(0, len(flat), chunk):
                self.convs(self._frames(flat[i:i + chunk]))
        finally:
            for m, momentum in zip(bns, momenta, strict=True):
                m.momentum = momentum
            self.train(was_training)

    def fit_normalizer(self, obs: Any, acts: Any, mask: Any, chunk: int = 64) -> None:
        """Recalibrate batch norm on these segments, then fit the output normaliser (``RewardNet``); ``chunk``
        segments per forward (images: 64 x T frames, not the MLP's 4096)."""
        self.recalibrate_batchnorm(obs, mask)
        super().fit_normalizer(obs, acts, mask, chunk=chunk)
