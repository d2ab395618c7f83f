"""The B-Pref environments (Lee, Smith, Dragan & Abbeel 2021, "B-Pref: Benchmarking Preference-Based Reinforcement
Learning", NeurIPS Datasets and Benchmarks, arXiv:2111.03026) as flat-observation Gymnasium ids.

Importing this module registers (nothing is imported from dm_control or Meta-World until an env is made):

* ``BPref/walker-walk-v0``, ``BPref/cheetah-run-v0``, ``BPref/quadruped-walk-v0``: the DeepMind Control Suite tasks
  of B-Pref (Tassa et al. 2018), through ``dm_control`` and Farama's ``shimmy`` (``dm_control/<domain>-<task>-v0``),
  their dict observations flattened to one float32 vector, as B-Pref's ``dmc2gym`` does (``from_pixels=False``,
  ``frame_skip=1``); 1,000 steps per episode, rewards in [0, 1] per step.
* ``BPref/button-press-v3``, ``BPref/sweep-into-v3``: Meta-World (Yu et al. 2019) tasks of B-Pref (its v2; Meta-World
  3 ships v3), built as B-Pref's ``make_metaworld_env``: the task's class with a new random goal at every reset
  (``_freeze_rand_vec = False``), 500 steps per episode (``max_path_length``); ``info["success"]`` is the task's
  success flag. A ``reset(seed=...)`` seeds Meta-World's own generator (its ``reset`` ignores ``seed``).

Meta-World on MuJoCo 4: metaworld 3.0.0 writes 11 numbers into each mocap weld constraint's ``eq_data`` row, which
has 12 in MuJoCo 4 (the 12th, after torquescale, is new); ``metaworld_mujoco4_welds`` (applied when a Meta-World env
is made) writes the 11 and leaves the 12th. Meta-World's scripted expert solves button-press-v3 with it (5 of 5
episodes, ``tests/agents/loop/control/test_bpref.py``). metaworld 3.1.1 would fit MuJoCo 3 only: it pins
``mujoco==3.3.0``, where dm_control 1.0.52 needs ``mujoco>=4.0.1``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

BPREF_NAMESPACE = "BPref"
DMC_TASKS = ("walker-walk", "cheetah-run", "quadruped-walk")
METAWORLD_TASKS = ("button-press-v3", "sweep-into-v3")
DMC_EPISODE_STEPS = 1_000  # dm_control's suite: 25 s (walker; quadruped 20 s at 0.02) of control at its timestep
METAWORLD_EPISODE_STEPS = 500  # Meta-World's max_path_length
BPREF_ENVS = (*(f"{BPREF_NAMESPACE}/{t}-v0" for t in DMC_TASKS), *(f"{BPREF_NAMESPACE}/{t}" for t in METAWORLD_TASKS))


def make_dm_control(task: str, render_mode: str | None = None) -> gym.Env:
    """``dm_control/<task>-v0`` (shimmy) with its observation dict flattened to float32."""
    import shimmy  # noqa: F401 - registers the dm_control/ ids

    env = gym.make(f"dm_control/{task}-v0", render_mode=render_mode, disable_env_checker=True)
    env = gym.wrappers.FlattenObservation(env)
    return gym.wrappers.DtypeObservation(env, np.float32)


class _SeededMetaWorld(gym.Wrapper):
    """Meta-World ignores ``reset(seed=...)``; this passes the seed to its ``seed()`` (goals, actions, spaces), and
    casts observations to float32."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        box = env.observation_space
        self.observation_space = gym.spaces.Box(box.low.astype(np.float32), box.high.astype(np.float32),
                                                dtype=np.float32)
        env.unwrapped.seeded_rand_vec = True  # goals from its seeded generator, not numpy's global one
        env.unwrapped.seed(0)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self.env.unwrapped.seed(int(seed))
        obs, info = self.env.reset()
        return obs.astype(np.float32), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs.astype(np.float32), float(reward), terminated, truncated, info


def metaworld_mujoco4_welds() -> None:
    """Let metaworld 3.0.0's ``reset_mocap_welds`` run on MuJoCo 4 (module docstring); idempotent."""
    import mujoco
    from metaworld import sawyer_xyz_env

    base = sawyer_xyz_env.SawyerMocapBase
    if getattr(base.reset_mocap_welds, "_rlhf_gym", False):
        return

    def reset_mocap_welds(self) -> None:
        model = self.model
        if model.nmocap > 0 and model.eq_data is not None:
            for i in range(model.eq_data.shape[0]):
                if model.eq_type[i] == mujoco.mjtEq.mjEQ_WELD:  # Meta-World's values, its first 11 numbers
                    model.eq_data[i][:11] = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 5.0]

    reset_mocap_welds._rlhf_gym = True
    base.reset_mocap_welds = reset_mocap_welds


def make_metaworld(task: str, render_mode: str | None = None) -> gym.Env:
    """Meta-World's ``task`` as B-Pref builds it (module docstring), without the time limit (the id adds it)."""
    metaworld_mujoco4_welds()
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    env = ALL_V3_ENVIRONMENTS[task](render_mode=render_mode)
    env._freeze_rand_vec = False  # a new goal at every reset (B-Pref make_metaworld_env)
    env._set_task_called = True
    return _SeededMetaWorld(env)


def register_bpref_envs() -> None:
    """Register ``BPREF_ENVS`` (idempotent)."""
    for env_id, task in zip(BPREF_ENVS, (*DMC_TASKS, *METAWORLD_TASKS), strict=True):
        if env_id in gym.registry:
            continue
        dmc = task in DMC_TASKS
        gym.register(env_id, entry_point=make_dm_control if dmc else make_metaworld, kwargs={"task": task},
                     max_episode_steps=DMC_EPISODE_STEPS if dmc else METAWORLD_EPISODE_STEPS,
                     disable_env_checker=True)


register_bpref_envs()
