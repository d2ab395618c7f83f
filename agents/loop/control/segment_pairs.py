"""The control side of the preference loop: experience recording, segment pairs, and the reward-model adapter.

* ``ExperienceRecorder`` (an SB3 ``VecEnvWrapper`` under the learned reward) keeps the agent's recent TRUE-reward
  experience as ``rewardmodels.segments.Trajectory`` pieces, so the pairs shown to the labeller come from the very
  steps the agent trained on (Christiano et al. 2017 query the agent's own trajectories) at no extra env steps.
* ``SegmentPairSource`` implements the loop's ``PairSource``: random or agent collection, candidate segment pairs,
  labelling with any teacher-compatible labeller, the labelled ``PreferenceDataset``.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from agents.sb3.control import make_vec_env
from rewardmodels.preferences import PreferenceDataset
from rewardmodels.segments import Trajectory, cut_segments
from textenv.files import atomic_write

EXPERIENCE_FILE = "experience.npz"
DATASET_FILE = "preferences.npz"


class Experience:
    """Recent trajectories of all envs, bounded to the last ``capacity`` steps; counts every step ever recorded."""

    def __init__(self, capacity: int = 20_000):
        self.capacity = int(capacity)
        self.done: deque[Trajectory] = deque()
        self.open: dict[tuple[int, int], list[tuple[Any, Any, float]]] = {}  # (source, env) -> steps so far
        self.steps = 0
        self._stored = 0

    def add(self, source: int, env: int, obs: Any, act: Any, rew: float, done: bool, terminated: bool) -> None:
        steps = self.open.setdefault((source, env), [])
        steps.append((np.array(obs, copy=True), np.array(act, copy=True), float(rew)))
        self.steps += 1
        if done:
            self._close(source, env, terminated)

    def _close(self, source: int, env: int, terminated: bool) -> None:
        steps = self.open.pop((source, env), [])
        if not steps:
            return
        obs, acts, rews = zip(*steps, strict=True)
        self.done.append(Trajectory(np.stack(obs), np.stack(acts), np.asarray(rews, np.float32), terminated))
        self._stored += len(steps)
        while self.done and self._stored - len(self.done[0]) >= self.capacity:
            self._stored -= len(self.done.popleft())

    def trajectories(self, recent_steps: int | None = None) -> list[Trajectory]:
        """Finished trajectories plus the unfinished ones (not terminated), newest last, covering ``recent_steps``."""
        live = []
        for steps in self.open.values():
            if steps:
                obs, acts, rews = zip(*steps, strict=True)
                live.append(Trajectory(np.stack(obs), np.stack(acts), np.asarray(rews, np.float32), False))
        out: list[Trajectory] = []
        total = sum(len(t) for t in live)
        for traj in reversed(self.done):
            if recent_steps is not None and total >= recent_steps:
                break
            out.append(traj)
            total += len(traj)
        return out[::-1] + live

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Finished trajectories as flat arrays (unfinished ones are dropped: resumed envs start new episodes)."""
        trajs = list(self.done)
        if not trajs:
            return {"steps": np.array(self.steps)}
        return {
            "obs": np.concatenate([t.obs for t in trajs]), "acts": np.concatenate([t.acts for t in trajs]),
            "rews": np.concatenate([t.rews for t in trajs]), "lengths": np.array([len(t) for t in trajs]),
            "terminated": np.array([t.terminated for t in trajs]), "steps": np.array(self.steps),
        }

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.done.clear()
        self.open.clear()
        self._stored = 0
        self.steps = int(arrays["steps"])
        if "lengths" in arrays:
            bounds = np.concatenate([[0], np.cumsum(arrays["lengths"])])
            for i, term in enumerate(arrays["terminated"]):
                sl = slice(bounds[i], bounds[i + 1])
                self.done.append(Trajectory(arrays["obs"][sl], arrays["acts"][sl], arrays["rews"][sl], bool(term)))
                self._stored += int(arrays["lengths"][i])


class Recorder(VecEnvWrapper):
    """Base of the recording wrappers: keeps the actions of the step in flight for ``step_wait`` to record."""

    def __init__(self, venv: VecEnv, experience: Any, source: int = 0):
        super().__init__(venv)
        self.experience, self.source = experience, source
        self._acts: Any = None

    def step_async(self, actions: np.ndarray) -> None:
        self._acts = np.asarray(actions)
        self.venv.step_async(actions)


class ExperienceRecorder(Recorder):
    """Records every step of an SB3 vec env (observation before the action, action, the env's own reward)."""

    def __init__(self, venv: VecEnv, experience: Experience, source: int = 0):
        super().__init__(venv, experience, source)
        self._obs: Any = None

    def reset(self):
        if self._obs is not None:  # a reset mid-episode: what was recorded so far is a truncated stretch
            for env in range(self.num_envs):
                self.experience._close(self.source, env, terminated=False)
        self._obs = self.venv.reset()
        return self._obs

    def step_wait(self):
        obs, rews, dones, infos = self.venv.step_wait()
        for env in range(self.num_envs):
            truncated = bool(infos[env].get("TimeLimit.truncated", False))
            self.experience.add(self.source, env, self._obs[env], self._acts[env], float(rews[env]),
                                bool(dones[env]), terminated=bool(dones[env]) and not truncated)
        self._obs = obs
        return obs, rews, dones, infos


def probe_spaces(env_id: str, seed: int) -> tuple[gym.Space, gym.Space]:
    """``(observation_space, action_space)`` of ``env_id``; the action space is seeded, as the random policy of the
    initial collection samples from it and must follow the run's seed like everything else."""
    probe = gym.make(env_id)
    obs_space, act_space = probe.observation_space, probe.action_space
    probe.close()
    act_space.seed(seed + 104_729)
    return obs_space, act_space


def drive(venv: VecEnv, agent: Any | None, act_space: gym.Space, n_steps: int) -> None:
    """Step ``venv`` (a recording wrapper) for about ``n_steps`` env steps with ``agent.act`` or uniform random
    actions when ``agent`` is None."""
    obs = venv.reset()
    for _ in range(int(np.ceil(n_steps / venv.num_envs))):
        acts = np.stack([act_space.sample() for _ in range(venv.num_envs)]) if agent is None else agent.act(obs)
        obs, _, _, _ = venv.step(acts)


class RecordedPairSource:
    """What the pair sources share: the env's spaces and an experience store that recording wrappers fill, on the
    agent's training envs (``wrap``, source 0) and on a collection env built on first use (source 1). Subclasses set
    ``recorder`` (the ``VecEnvWrapper`` that writes into ``self.experience``) and create ``self.experience``."""

    recorder: type

    def __init__(self, env_id: str, segment_len: int, recent_steps: int, seed: int, n_collect_envs: int):
        self.env_id, self.segment_len, self.recent_steps = env_id, int(segment_len), int(recent_steps)
        self.seed, self.n_collect_envs = seed, n_collect_envs
        self.obs_space, self.act_space = probe_spaces(env_id, seed)
        self._collect_venv: VecEnv | None = None

    @property
    def env_steps(self) -> int:
        return self.experience.steps

    def wrap(self, venv: VecEnv) -> VecEnv:
        """Record the agent's training envs (pass as ``SB3Agent(wrap_venv=...)``)."""
        return self.recorder(venv, self.experience, source=0)

    def _drive_collection(self, agent: Any | None, n_steps: int) -> VecEnv:
        """Run ``agent.act`` (or uniform random actions when ``agent`` is None) for ``n_steps`` steps of the recorded
        collection env; return it."""
        if self._collect_venv is None:
            venv = make_vec_env(self.env_id, self.n_collect_envs, self.seed + 7_919)
            self._collect_venv = self.recorder(venv, self.experience, source=1)
        drive(self._collect_venv, agent, self.act_space, n_steps)
        return self._collect_venv

    def label(self, labeller: Any, pairs: Any) -> Any:
        """Ask ``labeller`` (teacher-compatible) about ``pairs``; a person (``needs_media``) gets the observations,
        from which ``StateRenderer`` draws the clips."""
        core = pairs.core()  # the labelled steps, without SURF's cropping context
        media = {}
        if getattr(labeller, "needs_media", False):
            media = {"obs_a": core.obs_a, "obs_b": core.obs_b}
        labels = labeller.label(core.true_rew_a, core.true_rew_b, core.mask_a, core.mask_b, **media)
        return pairs.with_labels(np.asarray(labels, dtype=np.float32))

    def true_preferences(self, pairs: Any) -> np.ndarray:
        """P(a > b) under the TRUE reward: 1, 0, or 0.5 for equal returns."""
        ret_a, ret_b = pairs.true_returns()
        return np.where(np.isclose(ret_a, ret_b), 0.5, (ret_a > ret_b).astype(np.float64))

    def merge(self, dataset: Any | None, pairs: Any) -> Any:
        return pairs.subset(slice(None)) if dataset is None else dataset.append(pairs)


class SegmentPairSource(RecordedPairSource):
    """``PairSource`` for any Gymnasium env: pairs of fixed-length segments from the agent's recent experience.

    Args:
        env_id: the env (its spaces, and the env of the random/agent collection).
        segment_len: T, steps per segment (Christiano et al. used 25-60 steps: 1-2 seconds of video).
        recent_steps: candidates are cut from about this many most recent steps of experience.
        capacity: steps of experience kept in memory (and in checkpoints).
        seed: seeds the collection env.
        context: steps cut before and after each segment, unlabelled (SURF's temporal cropping: 5,
            ``rewardmodels.surf``); the pairs' ``context``.
    """

    recorder = ExperienceRecorder

    def __init__(self, env_id: str, segment_len: int, recent_steps: int = 4_000, capacity: int = 20_000,
                 seed: int = 0, n_collect_envs: int = 8, context: int = 0):
        super().__init__(env_id, segment_len, recent_steps, seed, n_collect_envs)
        self.experience = Experience(capacity)
        self.context = int(context)

    def collect(self, agent: Any | None, n_steps: int) -> None:
        """Run ``agent.act`` (or uniform random actions when ``agent`` is None) for ``n_steps`` env steps."""
        venv = self._drive_collection(agent, n_steps)
        for env in range(venv.num_envs):  # close the stretches: the next collection restarts the envs
            self.experience._close(1, env, terminated=False)
        venv._obs = None

    def candidates(self, n_pairs: int, rng: np.random.Generator) -> PreferenceDataset:
        trajs = self.experience.trajectories(self.recent_steps)
        c = self.context  # the labelled core keeps at least one real step
        segs = cut_segments(trajs, self.segment_len + 2 * c, n=2 * n_pairs, rng=rng, min_valid=c + 1)
        return PreferenceDataset.from_segments(segs[:n_pairs], segs[n_pairs:], obs_space=self.obs_space,
                                               act_space=self.act_space, context=c)

    def save(self, directory: Path, dataset: PreferenceDataset | None) -> None:
        if dataset is not None:
            dataset.save(Path(directory) / DATASET_FILE)
        arrays = self.experience.state_arrays()
        atomic_write(Path(directory) / EXPERIENCE_FILE, lambda f: np.savez(f, **arrays))

    def load(self, directory: Path) -> PreferenceDataset | None:
        directory = Path(directory)
        with np.load(directory / EXPERIENCE_FILE, allow_pickle=False) as npz:
            self.experience.load_arrays({k: npz[k] for k in npz.files})
        path = directory / DATASET_FILE
        return PreferenceDataset.load(path) if os.path.exists(path) else None
