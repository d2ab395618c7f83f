"""The image side of the preference loop: experience kept as single frames, segment pairs as windows into them.

``ImageSegmentPairSource`` is ``agents.loop.control.segment_pairs.SegmentPairSource`` for frame-stacked image envs
(Atari): the same ``PairSource`` protocol, but the agent's experience is recorded into one ``FrameStore`` (each 84x84
frame once, not 4 times per stacked observation) and candidate pairs are ``ImagePairs`` (segments as index windows into
the store; no per-segment frame copies). ``RewardEnsemble`` fits ``ImagePairs`` like a ``PreferenceDataset``.

How frames stay contiguous when several envs step in lockstep: each env's frames are buffered until its episode ends
(or until candidates are needed), then appended to the store as one stretch that starts with the ``k`` frames of its
first stacked observation. Inside a stretch, the observation of every step is the window of ``k`` frames ending at
its position; segments never cross stretch boundaries (a stretch that did not end in a terminal state counts as
truncated).
"""

from __future__ import annotations

import json
import os
from collections import deque
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from agents.loop.control.segment_pairs import RecordedPairSource, Recorder
from rewardmodels.cnn import image_layout
from rewardmodels.image_segments import FrameStore, ImagePairs, Rollout, cut_segments
from textenv.files import atomic_write

STATE_FILE = "image_experience.npz"


class FrameExperience:
    """Recent experience of any number of envs as stretches of frames in one store (module docstring)."""

    def __init__(self, obs_space: gym.Space, capacity: int = 10_000):
        self.channels_last, (k, h, w) = image_layout(obs_space)
        self.store = FrameStore((h, w), stack=k, capacity=max(1_024, capacity))
        self.capacity = int(capacity)
        self.pieces: deque[Rollout] = deque()
        self.open: dict[tuple[int, int], dict[str, list]] = {}
        self.steps = 0

    def _stack(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs)
        return np.moveaxis(obs, -1, 0) if self.channels_last else obs  # (k, H, W)

    def begin(self, key: tuple[int, int], obs: np.ndarray) -> None:
        self.open[key] = {"frames": list(self._stack(obs)), "acts": [], "rews": [], "term": []}

    def add(self, key: tuple[int, int], act: Any, rew: float, next_obs: np.ndarray, done: bool, terminated: bool,
            reset_obs: np.ndarray | None = None) -> None:
        s = self.open[key]
        s["acts"].append(np.array(act, copy=True))
        s["rews"].append(float(rew))
        s["term"].append(bool(terminated))
        s["frames"].append(self._stack(next_obs)[-1])
        self.steps += 1
        if done:
            self.close(key, ended=True)
            if reset_obs is not None:
                self.begin(key, reset_obs)

    def close(self, key: tuple[int, int], ended: bool = False) -> None:
        """Append the stretch of ``key`` to the store; an unfinished one restarts from its current stack."""
        s = self.open.pop(key, None)
        if s is None or not s["acts"]:
            if s is not None:
                self.open[key] = s
            return
        k, n = self.store.stack, len(s["acts"])
        pos = self.store.add(np.stack(s["frames"]))[k - 1: k - 1 + n]  # step i acts in the stack ending at pos[i]
        term = np.asarray(s["term"])
        end = np.zeros(n, bool)
        end[-1] = True  # segments never run past a stretch
        self.pieces.append(Rollout(pos, np.stack(s["acts"]), np.asarray(s["rews"], np.float32), term, end))
        if not ended:  # continue from the latest stacked observation
            self.open[key] = {"frames": s["frames"][-k:], "acts": [], "rews": [], "term": []}
        while sum(len(p.pos) for p in self.pieces) - len(self.pieces[0].pos) >= self.capacity:
            self.pieces.popleft()

    def rollout(self, recent_steps: int | None = None) -> Rollout:
        """The most recent pieces (covering ``recent_steps``) as one ``Rollout`` (open stretches flushed first)."""
        for key in list(self.open):
            self.close(key)
        chosen, total = [], 0
        for piece in reversed(self.pieces):
            if recent_steps is not None and total >= recent_steps:
                break
            chosen.append(piece)
            total += len(piece.pos)
        chosen = chosen[::-1]
        if not chosen:
            raise ValueError("no experience recorded yet: collect steps before asking for candidates")
        return Rollout(*(np.concatenate([getattr(p, f) for p in chosen]) for f in
                         ("pos", "acts", "rews", "terminated", "episode_end")))

    def compact(self, dataset: ImagePairs | None, segment_len: int) -> None:
        """Drop frames that neither a kept piece nor a labelled pair uses (bounds memory on long runs)."""
        for key in list(self.open):  # first: closing appends pieces (and may drop old ones) that windows must match
            self.close(key)
        pieces = list(self.pieces)
        windows = [(p.pos[:1], len(p.pos) + 1) for p in pieces]  # + the stretch's final frame
        if dataset is not None and len(dataset):
            windows += [(dataset.start_a, segment_len), (dataset.start_b, segment_len)]
        new = self.store.compact_windows(windows)
        for piece, starts in zip(pieces, new[: len(pieces)], strict=True):
            piece.pos = piece.pos - piece.pos[0] + starts[0]
        if dataset is not None and len(dataset):
            dataset.start_a, dataset.start_b = new[-2], new[-1]


class FrameRecorder(Recorder):
    """Records every step of an SB3 vec env of stacked frames into a ``FrameExperience``."""

    def reset(self):
        obs = self.venv.reset()
        for env in range(self.num_envs):
            self.experience.close((self.source, env))
            self.experience.open.pop((self.source, env), None)
            self.experience.begin((self.source, env), obs[env])
        return obs

    def step_wait(self):
        obs, rews, dones, infos = self.venv.step_wait()
        for env in range(self.num_envs):
            done = bool(dones[env])
            truncated = bool(infos[env].get("TimeLimit.truncated", False))
            next_obs = infos[env]["terminal_observation"] if done else obs[env]
            self.experience.add((self.source, env), self._acts[env], float(rews[env]), next_obs, done,
                                terminated=done and not truncated, reset_obs=obs[env] if done else None)
        return obs, rews, dones, infos


class ImageSegmentPairSource(RecordedPairSource):
    """``PairSource`` over frame-stacked image envs; candidates are ``ImagePairs`` (see the module docstring)."""

    recorder = FrameRecorder

    def __init__(self, env_id: str, segment_len: int, recent_steps: int = 4_000, capacity: int = 10_000,
                 seed: int = 0, n_collect_envs: int = 8):
        super().__init__(env_id, segment_len, recent_steps, seed, n_collect_envs)
        self.experience = FrameExperience(self.obs_space, capacity)
        self._dataset: ImagePairs | None = None

    def collect(self, agent: Any | None, n_steps: int) -> None:
        venv = self._drive_collection(agent, n_steps)
        for env in range(venv.num_envs):
            self.experience.close((1, env))
            self.experience.open.pop((1, env), None)

    def candidates(self, n_pairs: int, rng: np.random.Generator) -> ImagePairs:
        self._maybe_compact()
        roll = self.experience.rollout(self.recent_steps)
        seg = cut_segments(roll, self.segment_len, 2 * n_pairs, rng)
        a, b = slice(0, n_pairs), slice(n_pairs, 2 * n_pairs)
        return ImagePairs(self.experience.store, seg["starts"][a], seg["starts"][b], seg["acts"][a], seg["acts"][b],
                          seg["true_rew"][a], seg["true_rew"][b], seg["mask"][a], seg["mask"][b],
                          np.full(n_pairs, np.nan, np.float32), channels_last=self.experience.channels_last)

    def merge(self, dataset: ImagePairs | None, pairs: ImagePairs) -> ImagePairs:
        self._dataset = super().merge(dataset, pairs)  # kept: compaction must keep the frames labelled pairs use
        return self._dataset

    def _maybe_compact(self) -> None:
        kept = sum(len(p.pos) for p in self.experience.pieces)
        referenced = 0 if self._dataset is None else 2 * len(self._dataset) * (self.segment_len + 3)
        if len(self.experience.store) > 2 * (kept + referenced) + 10_000:
            self.experience.compact(self._dataset, self.segment_len)

    def save(self, directory: Path, dataset: ImagePairs | None) -> None:
        """Frames, experience pieces and labelled pairs in one ``.npz`` (written atomically)."""
        for key in list(self.experience.open):
            self.experience.close(key)
        pieces = list(self.experience.pieces)
        arrays: dict[str, np.ndarray] = {"frames": self.experience.store.frames,
                                         "steps": np.array(self.experience.steps)}
        if pieces:
            arrays.update({f"piece_{f}": np.concatenate([getattr(p, f) for p in pieces])
                           for f in ("pos", "acts", "rews", "terminated", "episode_end")})
            arrays["piece_len"] = np.array([len(p.pos) for p in pieces])
        if dataset is not None and len(dataset):
            arrays.update({f"pairs_{f}": np.asarray(getattr(dataset, f)) for f in
                           ("start_a", "start_b", "acts_a", "acts_b", "true_rew_a", "true_rew_b", "mask_a", "mask_b",
                            "labels")})
        arrays["meta"] = np.array(json.dumps({"stack": self.experience.store.stack,
                                              "channels_last": self.experience.channels_last}))
        atomic_write(Path(directory) / STATE_FILE, lambda f: np.savez(f, **arrays))

    def load(self, directory: Path) -> ImagePairs | None:
        path = Path(directory) / STATE_FILE
        if not os.path.exists(path):
            return None
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        exp = self.experience
        exp.store = FrameStore(exp.store.frame_shape, exp.store.stack, capacity=max(1_024, len(arrays["frames"])))
        exp.store.add(arrays["frames"])
        exp.steps, exp.open, exp.pieces = int(arrays["steps"]), {}, deque()
        if "piece_len" in arrays:
            bounds = np.concatenate([[0], np.cumsum(arrays["piece_len"])])
            for i in range(len(arrays["piece_len"])):
                sl = slice(bounds[i], bounds[i + 1])
                exp.pieces.append(Rollout(*(arrays[f"piece_{f}"][sl] for f in
                                            ("pos", "acts", "rews", "terminated", "episode_end"))))
        self._dataset = None
        if "pairs_labels" in arrays:
            self._dataset = ImagePairs(exp.store, **{f[6:]: v for f, v in arrays.items() if f.startswith("pairs_")},
                                       channels_last=exp.channels_last)
        return self._dataset
