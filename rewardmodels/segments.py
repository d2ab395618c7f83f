"""Cutting fixed-length segments out of collected trajectories, with correct padding after terminal states.

A :class:`Trajectory` is one stretch of consecutive steps of one env: ``obs[t]`` is the observation at which
``acts[t]`` was taken and ``rews[t]`` the true reward received for it. ``terminated`` says whether the stretch ends
in a terminal state (the MDP is over: an absorbing state follows) or not (time-limit truncation, or simply the end
of the collected data).

A segment of length T starting at step ``s`` takes steps ``s .. s+T-1``. If the trajectory terminated before
``s+T``, the rest of the segment is padding: ``mask`` False, observation = the last real observation repeated, action
and true reward 0 (nothing is earned after termination). So a CartPole segment in which the pole falls holds fewer
rewarded steps than one in which it does not, and a teacher/reward model can prefer it less. A trajectory that was
merely truncated is never padded (what would have followed is unknown): windows must fit inside it.

Usage in an online loop::

    trajs = trajectories_from_rollout(obs, acts, rews, terminated, truncated)   # (S, n_envs, ...) arrays
    segs = cut_segments(trajs, segment_len=50, n=2 * n_candidates, rng=rng)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rewardmodels.errors import NonFiniteValueError, SegmentShapeError

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Trajectory:
    """Consecutive steps of one env (see the module docstring for the meaning of each field)."""

    obs: np.ndarray
    """(L, *obs_shape) observation before each action."""
    acts: np.ndarray
    """(L, *act_shape) actions."""
    rews: np.ndarray
    """(L,) true env rewards."""
    terminated: bool = False
    """True if the last step led to a terminal state (padding allowed after it); False if truncated or cut off."""

    def __post_init__(self) -> None:
        self.obs, self.acts = np.asarray(self.obs), np.asarray(self.acts)
        self.rews = np.asarray(self.rews, dtype=np.float32)
        n = self.rews.shape[0] if self.rews.ndim == 1 else -1
        if n < 1 or self.obs.shape[:1] != (n,) or self.acts.shape[:1] != (n,):
            raise SegmentShapeError(
                f"a Trajectory needs obs (L, ...), acts (L, ...) and rews (L,) with the same L >= 1; got obs "
                f"{self.obs.shape}, acts {self.acts.shape}, rews {self.rews.shape}")
        if not np.all(np.isfinite(self.rews)):
            raise NonFiniteValueError("trajectory rewards contain NaN or inf")
        self.terminated = bool(self.terminated)

    def __len__(self) -> int:
        return int(self.rews.shape[0])


@dataclass(eq=False)
class Segments:
    """N segments of T steps: the one side of a batch of pairs (see ``PreferenceDataset.from_segments``)."""

    obs: np.ndarray
    """(N, T, *obs_shape)."""
    acts: np.ndarray
    """(N, T, *act_shape); 0 on padded steps."""
    true_rew: np.ndarray
    """(N, T) float32; 0 on padded steps."""
    mask: np.ndarray
    """(N, T) bool; False on padding after a terminal state."""
    source: np.ndarray | None = None
    """Optional (N, 2) int64 (trajectory index in the list given to ``cut_segments``, start step): where each segment
    came from, e.g. to render its frames."""

    def __post_init__(self) -> None:
        n, t = np.shape(self.mask)[:2] if np.ndim(self.mask) == 2 else (-1, -1)
        shapes = (np.shape(self.obs)[:2], np.shape(self.acts)[:2], np.shape(self.true_rew))
        if n < 0 or any(s != (n, t) for s in shapes):
            raise SegmentShapeError(
                f"Segments need obs (N, T, ...), acts (N, T, ...), true_rew (N, T), mask (N, T); got "
                f"{[np.shape(x) for x in (self.obs, self.acts, self.true_rew, self.mask)]}")
        if self.source is not None and np.shape(self.source) != (n, 2):
            raise SegmentShapeError(f"source must have shape (N, 2), got {np.shape(self.source)}")

    def __len__(self) -> int:
        return int(self.mask.shape[0])

    @property
    def segment_len(self) -> int:
        return int(self.mask.shape[1])

    def __getitem__(self, index: Any) -> Segments:
        src = None if self.source is None else self.source[index]
        return Segments(self.obs[index], self.acts[index], self.true_rew[index], self.mask[index], src)

    @staticmethod
    def concatenate(parts: Sequence[Segments]) -> Segments:
        src = None if any(p.source is None for p in parts) else np.concatenate([p.source for p in parts])
        return Segments(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("obs", "acts", "true_rew", "mask")),
                        source=src)


def segment_windows(trajectories: Sequence[Trajectory], segment_len: int, min_valid: int = 1) -> np.ndarray:
    """All valid (trajectory index, start) windows, shape (W, 2) int64.

    Terminated trajectories allow starts up to ``L - min_valid`` (the tail is padded); others need ``start + T <= L``.
    """
    if segment_len < 1 or not 1 <= min_valid <= segment_len:
        raise ValueError(f"need segment_len >= 1 and 1 <= min_valid <= segment_len; got {segment_len}, {min_valid}")
    parts = []
    for i, traj in enumerate(trajectories):
        last = len(traj) - (min_valid if traj.terminated else segment_len)
        if last >= 0:
            starts = np.arange(last + 1, dtype=np.int64)
            parts.append(np.stack([np.full_like(starts, i), starts], axis=1))
    return np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)


def cut_segments(
    trajectories: Sequence[Trajectory],
    segment_len: int,
    n: int | None = None,
    rng: np.random.Generator | int | None = None,
    *,
    starts: np.ndarray | Sequence[tuple[int, int]] | None = None,
    min_valid: int = 1,
) -> Segments:
    """Cut segments of ``segment_len`` steps, padding after terminal states (module docstring).

    Args:
        trajectories: the collected stretches of experience.
        segment_len: T.
        n: number of segments to draw uniformly over all valid windows (without replacement when there are enough
            windows, with replacement otherwise). Give either ``n`` or ``starts``.
        rng: numpy Generator or seed for the draw.
        starts: explicit (trajectory index, start step) pairs, shape (N, 2).
        min_valid: a segment keeps at least this many real steps before padding.

    Returns:
        :class:`Segments` with ``source`` set to the windows used.
    """
    if not trajectories:
        raise SegmentShapeError("cut_segments needs at least one trajectory")
    if (n is None) == (starts is None):
        raise ValueError("give exactly one of n (random windows) or starts (explicit windows)")
    if starts is None:
        windows = segment_windows(trajectories, segment_len, min_valid)
        if len(windows) == 0:
            raise SegmentShapeError(
                f"no trajectory can hold a segment of {segment_len} steps (the longest has "
                f"{max(len(t) for t in trajectories)} steps and only terminated ones may be padded); collect "
                "longer trajectories or use a shorter segment_len")
        rng = np.random.default_rng(rng)
        replace = n > len(windows)
        if replace:
            logger.warning("only %d distinct windows for %d segments: drawing with replacement", len(windows), n)
        windows = windows[rng.choice(len(windows), size=n, replace=replace)]
    else:
        windows = np.asarray(starts, dtype=np.int64).reshape(-1, 2)
    first = trajectories[0]
    t = segment_len
    count = len(windows)
    obs = np.zeros((count, t, *first.obs.shape[1:]), dtype=first.obs.dtype)
    acts = np.zeros((count, t, *first.acts.shape[1:]), dtype=first.acts.dtype)
    rew = np.zeros((count, t), np.float32)
    mask = np.zeros((count, t), bool)
    for row, (i, s) in enumerate(windows):
        traj = trajectories[i]
        end = min(s + t, len(traj))
        k = end - s
        if s < 0 or k < 1 or (k < t and not traj.terminated):
            raise SegmentShapeError(
                f"window (trajectory {i}, start {s}) does not fit: the trajectory has {len(traj)} steps and "
                f"{'is' if traj.terminated else 'is not'} terminated (only terminated ones may be padded)")
        obs[row, :k] = traj.obs[s:end]
        obs[row, k:] = traj.obs[end - 1]  # the absorbing state is shown as the last real observation, frozen
        acts[row, :k] = traj.acts[s:end]
        rew[row, :k] = traj.rews[s:end]
        mask[row, :k] = True
    return Segments(obs, acts, rew, mask, source=windows)


def trajectories_from_rollout(
    obs: np.ndarray, acts: np.ndarray, rews: np.ndarray, terminated: np.ndarray, truncated: np.ndarray
) -> list[Trajectory]:
    """Split time-major rollout arrays into :class:`Trajectory` pieces at episode ends.

    Args:
        obs: (S, E, *obs_shape), observation before each step's action (SB3's rollout-buffer convention; with
            autoreset the row after a done is the next episode's first observation).
        acts: (S, E, *act_shape).
        rews: (S, E) true rewards.
        terminated, truncated: (S, E) episode-end flags of each step.

    The last piece of each env column is not terminated (it was cut off by the end of the rollout). With a single
    env, (S, ...) arrays with 1-D ``rews`` are accepted too.
    """
    rews = np.asarray(rews)
    if rews.ndim == 1:
        obs, acts, rews = np.asarray(obs)[:, None], np.asarray(acts)[:, None], rews[:, None]
        terminated, truncated = np.asarray(terminated)[:, None], np.asarray(truncated)[:, None]
    terminated, truncated = np.asarray(terminated, bool), np.asarray(truncated, bool)
    if not (rews.shape == terminated.shape == truncated.shape and obs.shape[:2] == acts.shape[:2] == rews.shape):
        raise SegmentShapeError(
            f"rollout arrays must share (S, E): obs {np.shape(obs)}, acts {np.shape(acts)}, rews {rews.shape}, "
            f"terminated {terminated.shape}, truncated {truncated.shape}")
    out = []
    for e in range(rews.shape[1]):
        ends = np.flatnonzero(terminated[:, e] | truncated[:, e])
        start = 0
        for end in [*ends.tolist(), rews.shape[0] - 1]:
            if end < start:
                continue
            out.append(Trajectory(obs[start:end + 1, e], acts[start:end + 1, e], rews[start:end + 1, e],
                                  terminated=bool(terminated[end, e])))
            start = end + 1
    return out
