"""Image segments without needless frame copies: a frame store, and segments as index windows into it.

A frame-stacked Atari observation is ``k`` = 4 grayscale 84x84 frames (Mnih et al. 2015; Christiano et al. 2017,
App. A.2), and consecutive observations share ``k - 1`` of them. Stored as ``(N, T, k, 84, 84)`` arrays, a pair of
25-step segments costs 1.4 MB and the paper's buffer of 3,000 labels 4.2 GB; most of it copies of the same frames.
Here each frame is stored once:

* ``FrameStore`` holds single frames ``(M, H, W)`` uint8 (``(M, H, W, C)`` for colour) in a growable buffer. Each
  episode starts with ``k - 1`` copies of its first frame (what ``FrameStackObservation``'s "reset" padding shows),
  so the stacked observation at every step is the contiguous window ``frames[p - k + 1 : p + 1]`` ending at the
  step's position ``p``, and a T-step segment is ``T + k - 1`` consecutive frames, named by one integer (the
  position of its first step).
* ``StackedSegments`` is an array-like ``(N, T, k, H, W)`` over a store and N start positions. ``seg[rows]`` gathers
  a numpy batch; ``seg.torch(rows, device)`` gathers ``(B, T + k - 1, H, W)`` uint8 frames once and returns the
  ``(B, T, k, H, W)`` stack as a strided view (``Tensor.unfold``): the frames are copied once per minibatch, as
  uint8, and become float only inside the reward net.
* ``ImagePairs`` is a preference dataset over image segments (the fields of ``PreferenceDataset`` with the
  observations as ``StackedSegments``); ``to_preference_dataset()`` materialises the ``PreferenceDataset`` for code
  and files that want plain arrays, ``from_preference_dataset`` goes the other way, ``save``/``load`` write a compact
  ``.npz`` holding each referenced frame once.
* ``record_rollout`` runs a policy in a frame-stacked env and records its frames; ``cut_segments`` cuts fixed-length
  segments from the record, padding (mask False) after a terminal state as the rest of the toolkit does.

Steps whose mask is False (after a terminal state) point at whatever frames follow in the store; reward nets give
those steps the absorbing reward and never look at their pixels.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rewardmodels.errors import SegmentShapeError
from rewardmodels.preferences import LabelledPairs, PreferenceDataset, check_labels
from rewardmodels.segments import Segments, trajectories_from_rollout
from rewardmodels.segments import cut_segments as cut_trajectory_segments
from textenv.files import atomic_write

__all__ = [
    "FrameStore",
    "StackedSegments",
    "Rollout",
    "ImagePairs",
    "ImageSegmentError",
    "record_rollout",
    "cut_segments",
]

FORMAT_VERSION = 1


class ImageSegmentError(ValueError):
    """Bad image-segment input: wrong frame shape or dtype, a window outside the store, mismatched pair fields."""


class FrameStore:
    """Append-only store of uint8 frames; frame-stacked observations are windows of ``stack`` frames into it."""

    def __init__(self, frame_shape: tuple[int, ...], stack: int = 4, capacity: int = 4096):
        if stack < 1:
            raise ImageSegmentError(f"stack must be >= 1 (frames per observation), got {stack}")
        if len(frame_shape) not in (2, 3):
            raise ImageSegmentError(f"frame_shape must be (H, W) or (H, W, C), got {frame_shape}")
        self.frame_shape = tuple(int(s) for s in frame_shape)
        self.stack = int(stack)
        self._buf = np.empty((max(int(capacity), 1), *self.frame_shape), dtype=np.uint8)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    @property
    def frames(self) -> np.ndarray:
        """The stored frames ``(M, *frame_shape)`` (a view; valid until the next ``add``)."""
        return self._buf[: self._n]

    @property
    def nbytes(self) -> int:
        return self._n * int(np.prod(self.frame_shape))

    def add(self, frames: np.ndarray) -> np.ndarray:
        """Append frames ``(n, *frame_shape)`` uint8; returns their positions ``(n,)`` int64."""
        frames = np.asarray(frames)
        if frames.ndim == len(self.frame_shape):
            frames = frames[None]
        if frames.shape[1:] != self.frame_shape or frames.dtype != np.uint8:
            raise ImageSegmentError(
                f"frames must be uint8 {('n', *self.frame_shape)}, got {frames.dtype} {frames.shape}; "
                "store raw uint8 frames (unscaled), as AtariPreprocessing(scale_obs=False) returns them"
            )
        n = len(frames)
        if self._n + n > len(self._buf):  # amortised doubling: old positions stay valid
            new = np.empty((max(2 * len(self._buf), self._n + n), *self.frame_shape), dtype=np.uint8)
            new[: self._n] = self._buf[: self._n]
            self._buf = new
        self._buf[self._n : self._n + n] = frames
        self._n += n
        return np.arange(self._n - n, self._n, dtype=np.int64)

    def start_episode(self, first_frame: np.ndarray) -> int:
        """Begin an episode: ``stack - 1`` padding copies then the frame itself; returns the frame's position."""
        first = np.asarray(first_frame)
        return int(self.add(np.repeat(first[None], self.stack, axis=0))[-1])

    def window_index(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Positions ``(N, length + stack - 1)`` of the frames a ``length``-step segment starting at ``starts`` uses."""
        starts = np.asarray(starts, dtype=np.int64).reshape(-1)
        if len(starts) and (starts.min() < self.stack - 1 or starts.max() >= self._n):
            raise ImageSegmentError(
                f"segment starts must lie in [{self.stack - 1}, {self._n}) (positions of recorded steps), got "
                f"[{starts.min()}, {starts.max()}]"
            )
        idx = starts[:, None] + np.arange(-(self.stack - 1), length, dtype=np.int64)
        return np.minimum(idx, self._n - 1)  # padded steps past the store's end: any frame (they are masked)

    def compact(self, starts: list[np.ndarray], length: int) -> list[np.ndarray]:
        """Drop every frame no segment in ``starts`` uses (e.g. after evicting old labels); returns new starts."""
        return self.compact_windows([(s, length) for s in starts])

    def compact_windows(self, windows: list[tuple[np.ndarray, int]]) -> list[np.ndarray]:
        """``compact`` for groups of windows of different lengths: ``[(starts, length), ...]`` -> new starts."""
        keep = np.zeros(self._n, dtype=bool)
        for s, length in windows:
            if len(np.atleast_1d(s)):
                keep[self.window_index(s, length).reshape(-1)] = True
        new_pos = np.cumsum(keep) - 1
        # Windows stay contiguous: every frame of a kept window is kept, so its frames keep consecutive ranks.
        self._buf = self._buf[: self._n][keep].copy()
        self._n = len(self._buf)
        return [new_pos[np.asarray(s, dtype=np.int64)] for s, _ in windows]


class StackedSegments:
    """Array-like ``(N, T, k, H, W)`` uint8 view of N segments in a ``FrameStore`` (``(N, T, H, W, k)`` when
    ``channels_last``; colour frames give ``(N, T, k, H, W, C)``)."""

    def __init__(self, store: FrameStore, starts: np.ndarray, length: int, channels_last: bool = False):
        self.store, self.length, self.channels_last = store, int(length), bool(channels_last)
        self.starts = np.asarray(starts, dtype=np.int64).reshape(-1)
        store.window_index(self.starts[:1], self.length)  # validates the range early

    @property
    def shape(self) -> tuple[int, ...]:
        h, w, *c = self.store.frame_shape
        k = self.store.stack
        obs = (h, w, k) if self.channels_last and not c else (k, h, w, *c)
        return (len(self.starts), self.length, *obs)

    dtype = np.dtype(np.uint8)
    ndim = property(lambda self: len(self.shape))

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, rows: Any) -> np.ndarray | torch.Tensor:
        """numpy rows -> numpy ``(B, T, k, H, W)``; a torch index -> a uint8 tensor on the index's device (what
        ``RewardEnsemble`` minibatching indexes with)."""
        if isinstance(rows, torch.Tensor):
            return self.torch(rows.cpu().numpy(), device=rows.device)
        return self.torch(rows).numpy()

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[np.arange(len(self))]
        return out if dtype is None else out.astype(dtype)

    def torch(self, rows: Any = None, device: torch.device | str | None = None) -> torch.Tensor:
        """Observations of ``rows`` (default: all) as a uint8 tensor ``(B, T, k, H, W)`` on ``device``.

        One gather copies ``B * (T + k - 1)`` frames (moved to ``device`` as uint8, 4x less traffic than float);
        the frame stack is a strided view of them, so no frame is copied ``k`` times.
        """
        starts = self.starts if rows is None else self.starts[rows]
        idx = self.store.window_index(np.atleast_1d(starts), self.length)
        frames = torch.from_numpy(self.store.frames)[torch.from_numpy(idx)]  # (B, T + k - 1, H, W[, C])
        if device is not None:
            frames = frames.to(device, non_blocking=True)
        stacked = frames.unfold(1, self.store.stack, 1)  # (B, T, H, W[, C], k)
        stacked = stacked.movedim(-1, 2)  # (B, T, k, H, W[, C])
        if self.channels_last and len(self.store.frame_shape) == 2:
            stacked = stacked.movedim(2, -1)  # (B, T, H, W, k)
        return stacked if np.ndim(starts) else stacked[0]


@dataclass
class Rollout:
    """Steps recorded by ``record_rollout``: step i acts in the state whose newest frame is ``pos[i]``."""

    pos: np.ndarray  # (n,) int64 positions in the store
    acts: np.ndarray  # (n, *act_shape)
    rews: np.ndarray  # (n,) float32 true rewards
    terminated: np.ndarray  # (n,) bool: the episode reached a terminal state at this step
    episode_end: np.ndarray  # (n,) bool: terminated or truncated at this step


def _newest(obs: np.ndarray, channels_last: bool) -> np.ndarray:
    return obs[..., -1] if channels_last else obs[-1]


def record_rollout(
    env, policy: Callable[[np.ndarray], Any], n_steps: int, store: FrameStore, seed: int | None = None,
    channels_last: bool = False,
) -> Rollout:
    """Run ``policy(obs) -> action`` for ``n_steps`` in a frame-stacked env, recording each new frame once.

    ``env`` returns stacked observations ``(k, H, W)`` (``FrameStackObservation``; ``channels_last``: ``(H, W, k)``)
    with ``k == store.stack``; the newest frame of each observation is stored.
    """
    pos, acts, rews, term, end = [], [], [], [], []
    obs, _ = env.reset(seed=seed)
    p = store.start_episode(_newest(np.asarray(obs), channels_last))
    for _ in range(n_steps):
        action = policy(obs)
        obs, reward, terminated, truncated, _ = env.step(action)
        pos.append(p)
        acts.append(np.asarray(action))
        rews.append(float(reward))
        term.append(bool(terminated))
        end.append(bool(terminated or truncated))
        if terminated or truncated:
            store.add(_newest(np.asarray(obs), channels_last))  # the final frame (shown in clips)
            obs, _ = env.reset()
            p = store.start_episode(_newest(np.asarray(obs), channels_last))
        else:
            p = int(store.add(_newest(np.asarray(obs), channels_last))[0])
    return Rollout(np.asarray(pos, np.int64), np.stack(acts), np.asarray(rews, np.float32), np.asarray(term),
                   np.asarray(end))


def cut_segments(rollout: Rollout, length: int, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Cut ``n`` random ``length``-step segments from a rollout (``rewardmodels.segments.cut_segments`` on the
    rollout's episodes, with store positions as observations).

    A segment never spans two episodes: it ends inside its episode, or its episode terminated inside it and the
    remaining steps are padding (mask False, reward 0). Segments that would run into a truncation (time limit) or
    the unfinished end of the record are not drawn, since what follows them is unknown.

    Returns ``starts (n,)`` store positions, ``acts (n, T, *)``, ``true_rew (n, T)``, ``mask (n, T)``.
    """
    episodes = trajectories_from_rollout(rollout.pos, rollout.acts, rollout.rews, rollout.terminated,
                                         rollout.episode_end)
    try:
        segs = cut_trajectory_segments(episodes, length, n=n, rng=rng)
    except SegmentShapeError as e:
        raise ImageSegmentError(f"no {length}-step segment fits in a rollout of {len(rollout.pos)} steps; collect "
                                "more steps") from e
    return {"starts": segs.obs[:, 0], "acts": segs.acts, "true_rew": segs.true_rew, "mask": segs.mask}


@dataclass
class ImagePairs(LabelledPairs):
    """Labelled pairs of image segments held as windows into one ``FrameStore`` (no per-segment frame copies)."""

    store: FrameStore
    start_a: np.ndarray  # (N,) int64
    start_b: np.ndarray  # (N,) int64
    acts_a: np.ndarray  # (N, T, *act_shape)
    acts_b: np.ndarray
    true_rew_a: np.ndarray  # (N, T) float32
    true_rew_b: np.ndarray
    mask_a: np.ndarray  # (N, T) bool
    mask_b: np.ndarray
    labels: np.ndarray  # (N,) float32: P(a preferred), NaN skipped
    channels_last: bool = False

    def __post_init__(self) -> None:
        n, t = np.shape(self.true_rew_a)[:2] if np.ndim(self.true_rew_a) == 2 else (-1, -1)
        for f in ("start_a", "start_b", "acts_a", "acts_b", "true_rew_a", "true_rew_b", "mask_a", "mask_b", "labels"):
            arr = np.asarray(getattr(self, f))
            expect = (n,) if f in ("start_a", "start_b", "labels") else (n, t)
            if arr.shape[: len(expect)] != expect or n < 0:
                raise ImageSegmentError(f"{f} has shape {arr.shape}; every field must have N={n} rows (and T={t})")

    @property
    def length(self) -> int:
        return int(np.shape(self.true_rew_a)[1])

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def obs_a(self) -> StackedSegments:
        return StackedSegments(self.store, self.start_a, self.length, self.channels_last)

    @property
    def obs_b(self) -> StackedSegments:
        return StackedSegments(self.store, self.start_b, self.length, self.channels_last)

    # -- the parts of PreferenceDataset's interface that reward ensembles, selection and the loop use -------------
    @property
    def segment_len(self) -> int:
        return self.length

    def segments(self, side: str) -> Segments:
        """Side "a" or "b" as ``rewardmodels.segments.Segments`` whose ``obs`` is a lazy ``StackedSegments``."""
        if side not in ("a", "b"):
            raise ValueError(f"side must be 'a' or 'b', got {side!r}")
        return Segments(getattr(self, f"obs_{side}"), getattr(self, f"acts_{side}"),
                        getattr(self, f"true_rew_{side}"), getattr(self, f"mask_{side}"))

    def true_returns(self) -> tuple[np.ndarray, np.ndarray]:
        return (self.true_rew_a * self.mask_a).sum(1), (self.true_rew_b * self.mask_b).sum(1)

    context = 0  # no unlabelled steps around the segments (SURF's crops are for state segments)

    def core(self) -> ImagePairs:
        """The labelled segments: all of them (``PreferenceDataset.core``'s counterpart)."""
        return self

    def subset(self, rows: Any) -> ImagePairs:
        """A subset of the pairs (sharing the store), e.g. the last 3,000 labels."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return ImagePairs(**{k: v if k in ("store", "channels_last") else np.asarray(v)[rows]
                             for k, v in fields.items()})

    select = subset

    def with_labels(self, labels: Any) -> ImagePairs:
        return dataclasses.replace(self, labels=check_labels(labels, len(self)))

    def append(self, other: ImagePairs) -> ImagePairs:
        """Add ``other``'s pairs (over the same store) at the end, in place; returns ``self``."""
        if other.store is not self.store or other.length != self.length:
            raise ImageSegmentError("can only append image pairs over the same frame store and segment length")
        for f in ("start_a", "start_b", "acts_a", "acts_b", "true_rew_a", "true_rew_b", "mask_a", "mask_b",
                  "labels"):
            setattr(self, f, np.concatenate([getattr(self, f), getattr(other, f)]))
        return self

    def to_preference_dataset(self, **kwargs) -> PreferenceDataset:
        """Materialise a ``rewardmodels.preferences.PreferenceDataset`` (copies the frames; for files/tools)."""
        return PreferenceDataset(
            obs_a=np.asarray(self.obs_a), obs_b=np.asarray(self.obs_b), acts_a=self.acts_a, acts_b=self.acts_b,
            true_rew_a=self.true_rew_a, true_rew_b=self.true_rew_b, mask_a=self.mask_a, mask_b=self.mask_b,
            labels=self.labels, **kwargs,
        )

    @classmethod
    def from_preference_dataset(cls, ds: PreferenceDataset) -> ImagePairs:
        """Image pairs from a ``PreferenceDataset`` with ``(N, T, k, H, W)`` uint8 observations (frames stored once
        per step: the newest frame of each stack, plus the first stack's older frames)."""
        obs = {k: np.asarray(getattr(ds, f"obs_{k}")) for k in "ab"}
        if obs["a"].ndim != 5 or obs["a"].dtype != np.uint8:
            raise ImageSegmentError(f"expected uint8 (N, T, k, H, W) observations, got {obs['a'].dtype} "
                                    f"{obs['a'].shape}")
        n, t, k, h, w = obs["a"].shape
        store = FrameStore((h, w), stack=k, capacity=2 * n * (t + k - 1))
        starts = {}
        for key in "ab":
            # per segment: the k frames of its first stack, then the newest frame of each later step
            seq = np.concatenate([obs[key][:, 0], obs[key][:, 1:, -1]], axis=1)  # (n, k + t - 1, h, w)
            pos = store.add(seq.reshape(-1, h, w)).reshape(n, -1)
            starts[key] = pos[:, k - 1]
        return cls(store, starts["a"], starts["b"], np.asarray(ds.acts_a), np.asarray(ds.acts_b),
                   np.asarray(ds.true_rew_a, np.float32), np.asarray(ds.true_rew_b, np.float32),
                   np.asarray(ds.mask_a, bool), np.asarray(ds.mask_b, bool), np.asarray(ds.labels, np.float32))

    def save(self, path: str | os.PathLike) -> Path:
        """Compact ``.npz`` (each referenced frame once), written atomically; ``load`` reads it back."""
        store = FrameStore(self.store.frame_shape, self.store.stack, capacity=1)
        idx = np.concatenate([self.store.window_index(s, self.length) for s in (self.start_a, self.start_b)])
        used = np.unique(idx)
        store.add(self.store.frames[used])
        remap = np.searchsorted(used, np.concatenate([self.start_a, self.start_b]))
        meta = {"version": FORMAT_VERSION, "stack": self.store.stack, "channels_last": self.channels_last}
        arrays = {
            "frames": store.frames, "start_a": remap[: len(self)], "start_b": remap[len(self):],
            **{f: np.asarray(getattr(self, f)) for f in ("acts_a", "acts_b", "true_rew_a", "true_rew_b", "mask_a",
                                                        "mask_b", "labels")},
            "meta": np.asarray(json.dumps(meta)),
        }
        return atomic_write(path, lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ImagePairs:
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                arrays = {k: z[k] for k in z.files if k not in ("meta", "frames")}
                frames = z["frames"]
        except (OSError, ValueError, KeyError, EOFError) as e:
            raise ImageSegmentError(f"{path} is not a readable image-pairs file ({e}); re-create it") from e
        store = FrameStore(frames.shape[1:], stack=int(meta["stack"]), capacity=len(frames))
        store.add(frames)
        return cls(store=store, channels_last=bool(meta["channels_last"]), **arrays)
