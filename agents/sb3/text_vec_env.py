"""Stable-Baselines3's ``VecEnv`` over one batched ``TextGenVectorEnv``: the fast path for SB3 on text.

A ``DummyVecEnv`` of N ``TextGenEnv`` steps its envs one after another, each with a one-row forward of the policy
and of the reference (and a one-response reward-model call per finished episode); here one engine steps the N rows
together, one forward per model, and scores the episodes that end in a step in one call. SB3 sees ``DummyVecEnv``'s
contract: float32 rewards, ``dones = terminated | truncated``, a done row's observation is its next episode's first
(Gymnasium's SAME_STEP autoreset), and its info holds the finished episode's (``score``, ``kl_sum``, the log-probs)
with ``terminal_observation`` and ``TimeLimit.truncated`` (which SB3 bootstraps from).

    venv = TextGenSB3VecEnv(TextGenVectorEnv(8, model=lm, tokenizer=tok, autoreset_mode="SameStep"))
    model = make_sb3_text_model("ppo", venv, n_steps=64, batch_size=128)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env import VecEnv

from textenv import TextGenVectorEnv

__all__ = ["TextGenSB3VecEnv"]

_OWN = ("final_obs", "final_info")


class TextGenSB3VecEnv(VecEnv):
    """SB3 ``VecEnv`` over ``venv``, a ``TextGenVectorEnv`` with NumPy arrays and SAME_STEP autoreset (module
    docstring). ``engine`` and ``policy`` are the vector env's (what ``make_sb3_text_model`` and
    ``SyncTextEnvCallback`` use)."""

    def __init__(self, venv: TextGenVectorEnv):
        if not isinstance(venv, TextGenVectorEnv):
            raise TypeError(f"TextGenSB3VecEnv wraps a TextGenVectorEnv, got {type(venv).__name__}")
        if venv.autoreset_mode != AutoresetMode.SAME_STEP or venv.array_backend != "numpy":
            raise ValueError("TextGenSB3VecEnv needs TextGenVectorEnv(..., autoreset_mode='SameStep', "
                             f"array_backend='numpy'), got {venv.autoreset_mode} / {venv.array_backend!r}")
        self.venv = venv  # before VecEnv.__init__, which asks get_attr("render_mode")
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self._actions: np.ndarray | None = None

    @property
    def engine(self):
        return self.venv.engine

    @property
    def policy(self):
        return self.venv.policy

    def reset(self) -> dict[str, np.ndarray]:
        seed = self._seeds[0]  # VecEnv.seed(s) gives s, s + 1, ...: the vector env's one generator takes s
        obs, info = self.venv.reset(seed=seed)
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [_row(info, i) for i in range(self.num_envs)]
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).reshape(self.num_envs)

    def step_wait(self):
        obs, reward, terminated, truncated, info = self.venv.step(self._actions)
        dones = terminated | truncated
        infos = [_row(info, i) for i in range(self.num_envs)]
        for i in np.flatnonzero(dones).tolist():  # the finished episode's step, as DummyVecEnv reports it
            infos[i] = {**_row(info["final_info"], i), "terminal_observation": info["final_obs"][i]}
        for i, row in enumerate(infos):
            row["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        return obs, reward.astype(np.float32), dones, infos

    def close(self) -> None:
        self.venv.close()

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        return [getattr(self.venv, attr_name)] * len(self._indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        setattr(self.venv, attr_name, value)  # one env behind every row

    def env_method(self, method_name: str, *method_args, indices: Any = None, **method_kwargs) -> list[Any]:
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [result] * len(self._indices(indices))

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        return [False] * len(self._indices(indices))

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None] * self.num_envs

    def _indices(self, indices: Any) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        return [indices] if isinstance(indices, int) else list(indices)


def _row(info: dict[str, Any], i: int) -> dict[str, Any]:
    """Row ``i`` of a Gymnasium vector info: the keys whose ``_key`` mask is set there."""
    return {k: v[i] for k, v in info.items()
            if not k.startswith("_") and k not in _OWN and bool(info.get("_" + k, np.ones(i + 1, bool))[i])}
