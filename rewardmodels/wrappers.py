"""Learned-reward wrappers: the agent sees the reward model's reward, ``info["true_reward"]`` keeps the env's.

Three pieces, one reward-function protocol (``RewardFn``: a batch of observations and the actions taken in them ->
one float reward per row, numpy in and out):

* ``LearnedRewardWrapper``: a ``gymnasium.Wrapper`` for any single env.
* ``LearnedRewardVecEnv``: the same for Stable-Baselines3 vectorised envs, one batched reward-model call per step.
* ``relabel_replay_buffer``: PEBBLE's relabelling (Lee et al. 2021, arXiv:2106.05091, Sec. 4.2). Off-policy agents
  (SAC, DQN, TD3, ...) store rewards in their replay buffer at collection time; after every reward-model update those
  rewards are stale, and an agent trained on them chases the old model. Recomputing every stored reward with the
  current model after each update is cheap (one batched forward over the buffer) and removes the staleness.

The reward of a transition is ``reward_fn(obs_t, act_t)``: a function of the state the action was taken in and the
action, the (s, a) reward nets of Christiano et al. 2017 (arXiv:1706.03741). Actions are passed in the env's own
units (unscaled Box actions, integer Discrete actions), the same units the segments the reward model was fitted on
were recorded in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnvWrapper

__all__ = [
    "RewardFn",
    "LearnedRewardWrapper",
    "LearnedRewardVecEnv",
    "relabel_replay_buffer",
    "buffer_actions_to_env",
]


class RewardFn(Protocol):
    """``reward_fn(obs (B, *obs_shape), acts (B, *act_shape)) -> rewards (B,)`` float, numpy in and out."""

    def __call__(self, obs: Any, acts: np.ndarray) -> np.ndarray: ...


def _as_rewards(values: Any, batch: int) -> np.ndarray:
    rewards = np.asarray(values, dtype=np.float32).reshape(-1)
    if rewards.shape != (batch,):
        raise ValueError(
            f"reward_fn returned {rewards.size} values for a batch of {batch} transitions; "
            "it must return one reward per (observation, action) row"
        )
    return rewards


def _batch_obs(obs: Any) -> Any:
    if isinstance(obs, dict):
        return {k: np.asarray(v)[None] for k, v in obs.items()}
    return np.asarray(obs)[None]


class LearnedRewardWrapper(gym.Wrapper):
    """Replace an env's reward by ``reward_fn(obs, action)``; keep the env's own reward in ``info["true_reward"]``.

    ``reward_fn`` may be swapped at any time with ``set_reward_fn`` (the online loop refits the model between rounds).

    Example::

        env = LearnedRewardWrapper(gym.make("CartPole-v1"), reward_model.predict_reward)
        obs, info = env.reset(seed=0)
        obs, learned_r, terminated, truncated, info = env.step(env.action_space.sample())
        info["true_reward"]  # 1.0, CartPole's own reward
    """

    def __init__(self, env: gym.Env, reward_fn: RewardFn | Callable[..., Any]):
        super().__init__(env)
        if not callable(reward_fn):
            raise TypeError(f"reward_fn must be callable (obs, acts) -> rewards, got {type(reward_fn).__name__}")
        self.reward_fn = reward_fn
        self._last_obs: Any = None

    def set_reward_fn(self, reward_fn: RewardFn) -> None:
        self.reward_fn = reward_fn

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._last_obs = obs
        return obs, info

    def step(self, action):
        if self._last_obs is None:
            raise RuntimeError("call reset() before step(): the learned reward needs the state the action is taken in")
        obs, true_reward, terminated, truncated, info = self.env.step(action)
        learned = _as_rewards(self.reward_fn(_batch_obs(self._last_obs), np.asarray(action)[None]), 1)[0]
        info = dict(info)
        info["true_reward"] = float(true_reward)
        self._last_obs = obs
        return obs, float(learned), terminated, truncated, info


class LearnedRewardVecEnv(VecEnvWrapper):
    """SB3 ``VecEnvWrapper``: the learned reward for a whole batch of envs in one ``reward_fn`` call per step.

    Each env's ``info["true_reward"]`` keeps its own reward. SB3 vec envs reset finished envs automatically and return
    the first observation of the next episode; the transition's reward uses the observation the action was taken in
    (stored from the previous step), so auto-resets need no special case. Put a ``Monitor`` inside (around each base
    env) to make SB3's ``rollout/ep_rew_mean`` report the true return.
    """

    def __init__(self, venv, reward_fn: RewardFn):
        super().__init__(venv)
        if not callable(reward_fn):
            raise TypeError(f"reward_fn must be callable (obs, acts) -> rewards, got {type(reward_fn).__name__}")
        self.reward_fn = reward_fn
        self._last_obs: Any = None
        self._actions: np.ndarray | None = None

    def set_reward_fn(self, reward_fn: RewardFn) -> None:
        self.reward_fn = reward_fn

    def reset(self):
        obs = self.venv.reset()
        self._last_obs = obs
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)
        self.venv.step_async(actions)

    def step_wait(self):
        if self._last_obs is None or self._actions is None:
            raise RuntimeError("call reset() before step(): the learned reward needs the state the action is taken in")
        obs, true_rewards, dones, infos = self.venv.step_wait()
        learned = _as_rewards(self.reward_fn(self._last_obs, self._actions), self.num_envs)
        for info, r in zip(infos, true_rewards, strict=True):
            info["true_reward"] = float(r)
        self._last_obs = obs
        return obs, learned, dones, infos


def buffer_actions_to_env(actions: np.ndarray, action_space: spaces.Space, scaled: bool) -> np.ndarray:
    """Convert actions as SB3 replay buffers store them ``(N, action_dim)`` into env units ``(N, *act_shape)``.

    SB3 off-policy algorithms store Box actions rescaled to [-1, 1] (``policy.scale_action``), and Discrete actions as
    a trailing axis of size 1; the reward model was fitted on actions as the env received them.
    """
    n = actions.shape[0]
    if isinstance(action_space, spaces.Discrete):
        return actions.reshape(n).astype(np.int64)
    if isinstance(action_space, spaces.MultiDiscrete | spaces.MultiBinary):
        return actions.reshape(n, *action_space.shape).astype(np.int64)
    if isinstance(action_space, spaces.Box):
        acts = actions.reshape(n, *action_space.shape).astype(np.float32)
        if scaled:
            low, high = action_space.low, action_space.high
            acts = low + 0.5 * (acts + 1.0) * (high - low)
        return acts.astype(np.float32)
    raise TypeError(f"cannot relabel a replay buffer with action space {action_space}")


def relabel_replay_buffer(
    buffer,
    reward_fn: RewardFn,
    action_space: spaces.Space | None = None,
    scaled_actions: bool = True,
    batch_size: int = 65_536,
) -> int:
    """Recompute every stored reward of an SB3 ``ReplayBuffer`` with ``reward_fn`` (PEBBLE relabelling, in place).

    Args:
        buffer: a ``stable_baselines3`` ``ReplayBuffer`` or ``DictReplayBuffer`` (``rewards`` of shape
            ``(buffer_size, n_envs)``, ``observations`` ``(buffer_size, n_envs, *obs_shape)`` or a dict of such).
        reward_fn: the current learned reward, ``(obs (B, *), acts (B, *)) -> (B,)``.
        action_space: the env's action space (default: ``buffer.action_space``).
        scaled_actions: Box actions in the buffer are in [-1, 1] (what SB3's SAC/TD3/DDPG store); set False for a
            buffer filled with env-unit actions.
        batch_size: transitions per ``reward_fn`` call (bounds memory on large buffers).

    Returns:
        The number of transitions relabelled.
    """
    space = buffer.action_space if action_space is None else action_space
    n_rows = buffer.buffer_size if buffer.full else buffer.pos
    if n_rows == 0:
        return 0
    n_envs = buffer.n_envs
    total = n_rows * n_envs

    def flat(arr: np.ndarray) -> np.ndarray:  # (rows, n_envs, *shape) -> (rows * n_envs, *shape)
        return arr[:n_rows].reshape(total, *arr.shape[2:])

    if isinstance(buffer.observations, dict):
        obs_all: Any = {k: flat(v) for k, v in buffer.observations.items()}
    else:
        obs_all = flat(buffer.observations)
    acts_all = buffer_actions_to_env(flat(buffer.actions), space, scaled=scaled_actions)
    new = np.empty(total, dtype=np.float32)
    for start in range(0, total, batch_size):
        sl = slice(start, min(start + batch_size, total))
        obs = {k: v[sl] for k, v in obs_all.items()} if isinstance(obs_all, dict) else obs_all[sl]
        new[sl] = _as_rewards(reward_fn(obs, acts_all[sl]), sl.stop - sl.start)
    buffer.rewards[:n_rows] = new.reshape(n_rows, n_envs).astype(buffer.rewards.dtype)
    return total
