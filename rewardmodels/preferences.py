"""Preference data: pairs of fixed-length trajectory segments with a label, validated, saved safely.

The ONE label convention of the toolkit: ``label`` is the probability that the FIRST segment ("a", shown on the
left) is preferred. 1.0 = a preferred, 0.0 = b preferred, 0.5 = tie, NaN = skipped ("can't tell": kept in files,
never used for training).

Segments that reach a terminal state are padded to the fixed length T: the padded steps have ``mask`` False, their
observation repeats the last real observation and their action and true reward are 0. The reward model gives padded
steps a learned constant "absorbing-state" reward (``rewardmodels.nets``), so that a segment ending in failure can
be preferred less than one that does not (Christiano et al. 2017 removed termination instead; padding keeps
episodic tasks such as CartPole intact).

Files are ``.npz`` archives written with ``np.savez`` (no pickle: loading uses ``allow_pickle=False``) and carry
their JSON metadata (format version, spaces, shapes) in a ``__meta__`` string entry. Writes are atomic
(``textenv.files.atomic_write``), so a failed save never leaves a half-written file in place of a good one.
Image observations (``uint8`` of shape (T, C, H, W) per segment) stay ``uint8`` and are compressed.
Segment cutting from collected trajectories lives in ``rewardmodels.segments``; the errors raised here, in
``rewardmodels.errors``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from rewardmodels.errors import (
    EmptyDatasetError,
    LabelValueError,
    NonFiniteValueError,
    PreferenceDataError,
    PreferenceFileError,
    SegmentShapeError,
    SpaceMismatchError,
)
from rewardmodels.segments import Segments
from textenv.files import atomic_write

FORMAT_NAME = "rlhf-gym-preferences"
FORMAT_VERSION = 1
_META_KEY = "__meta__"
_EXTRA_PREFIX = "extra__"
_ARRAY_FIELDS = ("obs_a", "obs_b", "acts_a", "acts_b", "true_rew_a", "true_rew_b", "mask_a", "mask_b", "labels")


# --------------------------------------------------------------------------------------------------- spaces as JSON
def _num(x: float) -> float | str:
    """Strict JSON has no inf/nan: write them as strings."""
    x = float(x)
    return x if math.isfinite(x) else str(x)


def _bound(arr: np.ndarray) -> Any:
    flat = np.asarray(arr, dtype=np.float64).ravel()
    if flat.size and np.all(flat == flat[0]):
        return _num(flat[0])  # uniform bounds (e.g. images 0..255): one number, not H*W*C of them
    return [_num(v) for v in flat]


def space_to_json(space: gym.Space | None) -> dict | None:
    """Describe a Box / Discrete / MultiDiscrete / MultiBinary space as JSON-serialisable data (None stays None)."""
    if space is None:
        return None
    if isinstance(space, gym.spaces.Box):
        return {"type": "Box", "shape": list(space.shape), "dtype": str(space.dtype),
                "low": _bound(space.low), "high": _bound(space.high)}
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": np.asarray(space.nvec).tolist(),
                "start": np.asarray(space.start).tolist()}
    if isinstance(space, gym.spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.asarray(space.n).tolist()}
    raise SpaceMismatchError(
        f"cannot describe space {space!r} in a preference file; supported: Box, Discrete, MultiDiscrete, "
        "MultiBinary (flatten Dict/Tuple observations first, e.g. with gymnasium.wrappers.FlattenObservation)")


def space_from_json(desc: Mapping | None) -> gym.Space | None:
    """Inverse of :func:`space_to_json`."""
    if desc is None:
        return None
    kind = desc["type"]
    if kind == "Box":
        shape, dtype = tuple(desc["shape"]), np.dtype(desc["dtype"])

        def bound(value: Any) -> np.ndarray:
            flat = [float(v) for v in value] if isinstance(value, list) else [float(value)] * int(np.prod(shape))
            return np.asarray(flat, dtype=np.float64).reshape(shape).astype(dtype)

        return gym.spaces.Box(low=bound(desc["low"]), high=bound(desc["high"]), shape=shape, dtype=dtype)
    if kind == "Discrete":
        return gym.spaces.Discrete(int(desc["n"]), start=int(desc.get("start", 0)))
    if kind == "MultiDiscrete":
        return gym.spaces.MultiDiscrete(np.asarray(desc["nvec"]), start=np.asarray(desc["start"]))
    if kind == "MultiBinary":
        return gym.spaces.MultiBinary(desc["n"])
    raise ValueError(f"unknown space type {kind!r}")


def canonical_dtype(space: gym.Space) -> np.dtype:
    """The dtype segments of this space are stored in: integers as int64, floats as float32, uint8 kept."""
    if isinstance(space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete)):
        return np.dtype(np.int64)
    if isinstance(space, gym.spaces.MultiBinary):
        return np.dtype(np.int8)
    if isinstance(space, gym.spaces.Box):
        return np.dtype(np.float32) if space.dtype.kind == "f" else np.dtype(space.dtype)
    raise SpaceMismatchError(f"unsupported space {space!r}")


# --------------------------------------------------------------------------------------------------- validation
def _array(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == object:
        raise SegmentShapeError(f"{name} is an object array; pass numeric arrays of equal-length segments")
    return arr


def _canon_values(arr: np.ndarray, name: str, space: gym.Space | None) -> np.ndarray:
    """Store floats as float32, integers as int64 (uint8/bool images stay as they are: no float copy of frames)."""
    if space is not None:
        target = canonical_dtype(space)
        if target.kind in "iu" and arr.dtype.kind == "f":
            raise SpaceMismatchError(
                f"{name} has dtype {arr.dtype} but the declared space {space} holds integers; pass integer arrays")
        if arr.dtype != target:
            arr = arr.astype(target)
        return arr
    if arr.dtype.kind == "f" and arr.dtype != np.float32:
        return arr.astype(np.float32)
    if arr.dtype.kind in "iu" and arr.dtype != np.uint8 and arr.dtype != np.int64:
        return arr.astype(np.int64)
    return arr


def _check_finite(arr: np.ndarray, name: str) -> None:
    if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise NonFiniteValueError(
            f"{name} contains NaN or inf (first at index {tuple(int(i) for i in bad)}); remove or fix those "
            "segments before building the dataset (NaN is only allowed in `labels`, meaning 'skipped')")


def _check_in_space(arr: np.ndarray, name: str, space: gym.Space | None, n: int, t: int) -> None:
    if space is None:
        return
    expected = (n, t, *space.shape)
    if arr.shape != expected:
        raise SpaceMismatchError(
            f"{name} has shape {arr.shape} but the declared space {space} needs (N, T, *{space.shape}) = {expected}")
    if isinstance(space, gym.spaces.Discrete) and arr.size:
        lo, hi = int(space.start), int(space.start + space.n - 1)
        if arr.min() < lo or arr.max() > hi:
            raise SpaceMismatchError(f"{name} has values outside the declared {space} (allowed {lo}..{hi})")


def check_labels(labels: Any, n: int | None = None) -> np.ndarray:
    """``labels`` as float32 (N,); raises :class:`LabelValueError` unless all are in {0, 0.5, 1, NaN}."""
    arr = np.asarray(labels, dtype=np.float64)
    if arr.ndim != 1 or (n is not None and arr.shape[0] != n):
        raise SegmentShapeError(f"labels must have shape ({'N' if n is None else n},), got {arr.shape}")
    ok = np.isnan(arr) | (arr == 0.0) | (arr == 0.5) | (arr == 1.0)
    if not np.all(ok):
        bad = np.flatnonzero(~ok)
        raise LabelValueError(
            f"labels must be 1.0 (first segment preferred), 0.0 (second preferred), 0.5 (tie) or NaN (skipped); "
            f"got {arr[bad[:5]].tolist()} at indices {bad[:5].tolist()}{' ...' if bad.size > 5 else ''}")
    return arr.astype(np.float32)


def _check_mask(mask: Any, name: str, n: int, t: int) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.shape != (n, t):
        raise SegmentShapeError(f"{name} must have shape (N, T) = {(n, t)}, got {arr.shape}")
    if arr.dtype != np.bool_:
        if arr.dtype.kind not in "biu" or not np.all((arr == 0) | (arr == 1)):
            raise SegmentShapeError(f"{name} must be boolean (True = real step, False = padding), got {arr.dtype}")
        arr = arr.astype(np.bool_)
    if t > 1 and np.any(arr[:, 1:] & ~arr[:, :-1]):
        row = int(np.flatnonzero(np.any(arr[:, 1:] & ~arr[:, :-1], axis=1))[0])
        raise SegmentShapeError(
            f"{name}[{row}] has a real step after a padded one; padding (False) may only follow a terminal state "
            "at the end of a segment")
    return arr


# --------------------------------------------------------------------------------------------------- dataset
class LabelledPairs:
    """What every container of labelled pairs answers from its ``labels`` (N,) array (NaN = skipped)."""

    labels: np.ndarray

    @property
    def labelled(self) -> np.ndarray:
        """(N,) bool: pairs with a usable label (not NaN)."""
        return ~np.isnan(self.labels)

    @property
    def n_labelled(self) -> int:
        return int(self.labelled.sum())

    def require_labelled(self, what: str = "training") -> None:
        """Raise :class:`EmptyDatasetError` unless at least one pair has a non-NaN label."""
        if self.n_labelled == 0:
            raise EmptyDatasetError(
                f"{what} needs labelled preference pairs, but these {len(self)} pairs have none labelled (all NaN = "
                "skipped); collect and label some pairs first")


@dataclass(eq=False)  # numpy fields: compare arrays explicitly, not with ==
class PreferenceDataset(LabelledPairs):
    """N labelled pairs of fixed-length (T) segments. Validated at construction; see the module docstring.

    Build it from arrays, from :class:`rewardmodels.segments.Segments` with :meth:`from_segments`, or with
    :meth:`empty` for an online loop that starts with no labels. ``append`` grows it in place; ``subset`` and
    ``with_labels`` return new datasets.
    """

    obs_a: np.ndarray
    """(N, T, *obs_shape) observations of the first (left) segment; float32, int64 or uint8 (images)."""
    obs_b: np.ndarray
    """(N, T, *obs_shape) observations of the second (right) segment."""
    acts_a: np.ndarray
    """(N, T, *act_shape) actions of the first segment (int64 for Discrete, float32 for Box; 0 on padded steps)."""
    acts_b: np.ndarray
    """(N, T, *act_shape) actions of the second segment."""
    true_rew_a: np.ndarray
    """(N, T) float32 true env rewards of the first segment, kept for evaluation and synthetic teachers."""
    true_rew_b: np.ndarray
    """(N, T) float32 true env rewards of the second segment."""
    mask_a: np.ndarray
    """(N, T) bool, False on padding after a terminal state (padding only at the end)."""
    mask_b: np.ndarray
    """(N, T) bool, False on padding after a terminal state."""
    labels: np.ndarray
    """(N,) float32 in {1 (a preferred), 0 (b preferred), 0.5 (tie), NaN (skipped / not labelled yet)}."""
    obs_space: gym.Space | None = None
    """Declared observation space; when given, observations must have its shape (and integer dtype if it has one)."""
    act_space: gym.Space | None = None
    """Declared action space; Discrete actions must be in range."""
    frames_a: np.ndarray | None = None
    """Optional (N,) str paths of rendered clips of segment a (relative to the dataset's directory, by convention)."""
    frames_b: np.ndarray | None = None
    """Optional (N,) str paths of rendered clips of segment b."""
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    """Optional per-pair arrays with leading dimension N (numeric, bool or str; e.g. labeller ids, timestamps)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Free JSON-serialisable metadata saved with the file (e.g. env id, segment length in seconds)."""
    context: int = 0
    """Steps of unlabelled context stored before and after each labelled segment (SURF's temporal cropping,
    ``rewardmodels.surf``, draws windows that reach into them): the label, ``true_returns`` and ``core()`` cover
    steps ``context .. T - context - 1`` of the T stored."""

    def __post_init__(self) -> None:
        self.labels = check_labels(self.labels)
        n = self.labels.shape[0]
        for side in ("a", "b"):
            obs = _array(getattr(self, f"obs_{side}"), f"obs_{side}")
            if obs.ndim < 2 or obs.shape[0] != n:
                raise SegmentShapeError(f"obs_{side} must have shape (N={n}, T, *obs_shape), got {obs.shape}")
            setattr(self, f"obs_{side}", obs)
        t = self.obs_a.shape[1]
        if t < 1:
            raise SegmentShapeError("segments must have at least one step (T >= 1)")
        for name, space in (("obs", self.obs_space), ("acts", self.act_space)):
            a = _canon_values(_array(getattr(self, f"{name}_a"), f"{name}_a"), f"{name}_a", space)
            b = _canon_values(_array(getattr(self, f"{name}_b"), f"{name}_b"), f"{name}_b", space)
            if a.shape != b.shape:
                raise SegmentShapeError(
                    f"{name}_a has shape {a.shape} but {name}_b has shape {b.shape}; both segments of a pair need "
                    "the same length T and the same per-step shape")
            if a.shape[:2] != (n, t):
                raise SegmentShapeError(f"{name}_a must have shape (N, T, ...) = ({n}, {t}, ...), got {a.shape}")
            if a.dtype != b.dtype:
                raise SpaceMismatchError(f"{name}_a has dtype {a.dtype} but {name}_b has {b.dtype}")
            for arr, side in ((a, "a"), (b, "b")):
                _check_finite(arr, f"{name}_{side}")
                _check_in_space(arr, f"{name}_{side}", space, n, t)
            setattr(self, f"{name}_a", a)
            setattr(self, f"{name}_b", b)
        for side in ("a", "b"):
            rew = np.asarray(getattr(self, f"true_rew_{side}"), dtype=np.float32)
            if rew.shape != (n, t):
                raise SegmentShapeError(f"true_rew_{side} must have shape (N, T) = {(n, t)}, got {rew.shape}")
            _check_finite(rew, f"true_rew_{side}")
            setattr(self, f"true_rew_{side}", rew)
            setattr(self, f"mask_{side}", _check_mask(getattr(self, f"mask_{side}"), f"mask_{side}", n, t))
        if (self.frames_a is None) != (self.frames_b is None):
            raise SegmentShapeError("give both frames_a and frames_b, or neither")
        for side in ("a", "b"):
            frames = getattr(self, f"frames_{side}")
            if frames is not None:
                frames = np.asarray(frames, dtype=np.str_)
                if frames.shape != (n,):
                    raise SegmentShapeError(f"frames_{side} must have shape (N,) = ({n},), got {frames.shape}")
                setattr(self, f"frames_{side}", frames)
        extras = {}
        for key, value in dict(self.extras).items():
            arr = _array(value, f"extras[{key!r}]")
            if not key.isidentifier() or arr.ndim < 1 or arr.shape[0] != n:
                raise SegmentShapeError(f"extras[{key!r}] must be an identifier key with an (N={n}, ...) array")
            extras[key] = arr
        self.extras = extras
        self.context = int(self.context)
        if not 0 <= 2 * self.context < t:
            raise SegmentShapeError(f"context={self.context} leaves no labelled steps in segments of {t} steps")
        try:
            json.dumps(self.info, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise PreferenceDataError(f"info must be JSON-serialisable (no NaN/inf): {e}") from e

    # ---------------------------------------------------------------- construction helpers
    @classmethod
    def empty(cls, obs_space: gym.Space, act_space: gym.Space, segment_len: int, **kwargs: Any) -> PreferenceDataset:
        """A dataset with no pairs (e.g. before the first labels of an online loop)."""
        t = int(segment_len)
        obs = np.zeros((0, t, *obs_space.shape), dtype=canonical_dtype(obs_space))
        acts = np.zeros((0, t, *act_space.shape), dtype=canonical_dtype(act_space))
        rew, mask = np.zeros((0, t), np.float32), np.zeros((0, t), bool)
        return cls(obs, obs.copy(), acts, acts.copy(), rew, rew.copy(), mask, mask.copy(),
                   np.zeros(0, np.float32), obs_space=obs_space, act_space=act_space, **kwargs)

    @classmethod
    def from_segments(cls, seg_a: Segments, seg_b: Segments, labels: Any = None, **kwargs: Any) -> PreferenceDataset:
        """Pair two equally long :class:`rewardmodels.segments.Segments` batches (row i of a with row i of b).

        ``labels=None`` gives all-NaN labels: unlabelled candidate pairs for query selection and teachers.
        """
        n = len(seg_a)
        labels = np.full(n, np.nan, np.float32) if labels is None else labels
        return cls(seg_a.obs, seg_b.obs, seg_a.acts, seg_b.acts, seg_a.true_rew, seg_b.true_rew,
                   seg_a.mask, seg_b.mask, labels, **kwargs)

    # ---------------------------------------------------------------- views
    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def segment_len(self) -> int:
        return int(self.obs_a.shape[1])

    @property
    def obs_shape(self) -> tuple[int, ...]:
        return tuple(self.obs_a.shape[2:])

    @property
    def act_shape(self) -> tuple[int, ...]:
        return tuple(self.acts_a.shape[2:])

    def true_returns(self) -> tuple[np.ndarray, np.ndarray]:
        """(N,), (N,) sums of true rewards over the real (unpadded) labelled steps of a and b (not the context)."""
        core = self.core()
        return ((core.true_rew_a * core.mask_a).sum(axis=1), (core.true_rew_b * core.mask_b).sum(axis=1))

    def core(self) -> PreferenceDataset:
        """The labelled segments without their ``context`` steps (views of the same arrays); ``self`` if none."""
        c = self.context
        if c == 0:
            return self
        window = slice(c, self.segment_len - c)
        fields = self._fields()
        fields.update({k: getattr(self, k)[:, window] for k in _ARRAY_FIELDS if k != "labels"})
        return PreferenceDataset(**fields, obs_space=self.obs_space, act_space=self.act_space, info=dict(self.info))

    def segments(self, side: str) -> Segments:
        """Side "a" or "b" as a :class:`rewardmodels.segments.Segments` batch."""
        if side not in ("a", "b"):
            raise ValueError(f"side must be 'a' or 'b', got {side!r}")
        return Segments(getattr(self, f"obs_{side}"), getattr(self, f"acts_{side}"),
                        getattr(self, f"true_rew_{side}"), getattr(self, f"mask_{side}"))

    def _fields(self, index: Any = slice(None)) -> dict[str, Any]:
        out = {k: getattr(self, k)[index] for k in _ARRAY_FIELDS}
        for side in ("a", "b"):
            frames = getattr(self, f"frames_{side}")
            out[f"frames_{side}"] = None if frames is None else frames[index]
        out["extras"] = {k: v[index] for k, v in self.extras.items()}
        return out

    def subset(self, index: Any) -> PreferenceDataset:
        """A new dataset of the pairs selected by ``index`` (int array, bool mask or slice)."""
        return PreferenceDataset(**self._fields(index), obs_space=self.obs_space, act_space=self.act_space,
                                 info=dict(self.info), context=self.context)

    def with_labels(self, labels: Any) -> PreferenceDataset:
        """A copy (sharing the segment arrays) with new labels, e.g. from a teacher."""
        return dataclasses.replace(self, labels=check_labels(labels, len(self)), extras=dict(self.extras),
                                   info=dict(self.info))

    def append(self, other: PreferenceDataset) -> PreferenceDataset:
        """Add ``other``'s pairs at the end, in place (returns ``self``). Raises if shapes or spaces differ."""
        if not isinstance(other, PreferenceDataset):
            raise TypeError(f"can only append a PreferenceDataset, got {type(other).__name__}")
        for attr in ("segment_len", "obs_shape", "act_shape", "context"):
            if getattr(self, attr) != getattr(other, attr):
                raise SegmentShapeError(
                    f"cannot append: {attr} is {getattr(self, attr)} here but {getattr(other, attr)} in the other")
        for name in ("obs_a", "acts_a"):
            if getattr(self, name).dtype != getattr(other, name).dtype:
                raise SpaceMismatchError(f"cannot append: {name} dtype {getattr(self, name).dtype} vs "
                                         f"{getattr(other, name).dtype}")
        for name in ("obs_space", "act_space"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine is not None and theirs is not None and mine != theirs:
                raise SpaceMismatchError(f"cannot append: {name} {mine} vs {theirs}")
            if mine is None:
                setattr(self, name, theirs)
        if (self.frames_a is None) != (other.frames_a is None) and len(self) and len(other):
            raise SegmentShapeError("cannot append: one dataset has frame paths and the other does not")
        if set(self.extras) != set(other.extras) and len(self) and len(other):
            raise SegmentShapeError(f"cannot append: extras keys {sorted(self.extras)} vs {sorted(other.extras)}")
        nonempty = [d for d in (self, other) if len(d)]
        new: dict[str, Any] = {k: np.concatenate([getattr(self, k), getattr(other, k)]) for k in _ARRAY_FIELDS}
        for side in ("a", "b"):
            parts = [getattr(d, f"frames_{side}") for d in nonempty]
            if not parts:
                new[f"frames_{side}"] = getattr(self, f"frames_{side}")
            else:
                new[f"frames_{side}"] = None if any(p is None for p in parts) else np.concatenate(parts)
        keys = nonempty[0].extras.keys() if nonempty else self.extras.keys()
        new["extras"] = {k: np.concatenate([d.extras[k] for d in nonempty]) for k in keys}
        for k, v in new.items():
            setattr(self, k, v)
        return self

    # ---------------------------------------------------------------- files
    def metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME, "version": FORMAT_VERSION, "n_pairs": len(self), "segment_len": self.segment_len,
            "obs_shape": list(self.obs_shape), "obs_dtype": str(self.obs_a.dtype),
            "act_shape": list(self.act_shape), "act_dtype": str(self.acts_a.dtype),
            "obs_space": space_to_json(self.obs_space), "act_space": space_to_json(self.act_space),
            "has_frames": self.frames_a is not None, "extras": sorted(self.extras), "info": self.info,
            "context": self.context,
        }

    def save(self, path: str | os.PathLike, compress: bool | None = None) -> Path:
        """Write an ``.npz`` file atomically (the exact ``path`` is used; no suffix is added).

        ``compress=None`` compresses when observations are ``uint8`` (images compress well; float vectors barely).
        """
        arrays: dict[str, np.ndarray] = {k: getattr(self, k) for k in _ARRAY_FIELDS}
        if self.frames_a is not None:
            arrays["frames_a"], arrays["frames_b"] = self.frames_a, self.frames_b
        for key, value in self.extras.items():
            arrays[_EXTRA_PREFIX + key] = value
        arrays[_META_KEY] = np.array(json.dumps(self.metadata(), allow_nan=False))
        if compress is None:
            compress = self.obs_a.dtype == np.uint8
        saver = np.savez_compressed if compress else np.savez
        return atomic_write(path, lambda f: saver(f, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> PreferenceDataset:
        """Read a file written by :meth:`save`; raises :class:`PreferenceFileError` naming the file and the problem."""
        path = Path(path)
        if not path.is_file():
            raise PreferenceFileError(f"preference file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}  # reading every entry verifies each CRC
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
            raise PreferenceFileError(
                f"preference file {path} is corrupted or truncated ({type(e).__name__}: {e}); restore it from a "
                "backup or re-export it") from e
        if _META_KEY not in arrays:
            raise PreferenceFileError(f"{path} has no {_META_KEY} entry: not an rlhf-gym preference file")
        try:
            meta = json.loads(str(arrays.pop(_META_KEY)))
        except json.JSONDecodeError as e:
            raise PreferenceFileError(f"{path}: the metadata is not valid JSON ({e})") from e
        if meta.get("format") != FORMAT_NAME:
            raise PreferenceFileError(f"{path}: format is {meta.get('format')!r}, expected {FORMAT_NAME!r}")
        if not isinstance(meta.get("version"), int) or meta["version"] > FORMAT_VERSION:
            raise PreferenceFileError(f"{path}: format version {meta.get('version')!r} is newer than this toolkit's "
                                      f"{FORMAT_VERSION}; upgrade rlhf-gym to read it")
        missing = [k for k in _ARRAY_FIELDS if k not in arrays]
        if missing:
            raise PreferenceFileError(f"{path}: missing arrays {missing}")
        n, t = meta.get("n_pairs"), meta.get("segment_len")
        if arrays["labels"].shape != (n,) or arrays["obs_a"].shape[:2] != (n, t):
            raise PreferenceFileError(f"{path}: arrays do not match the metadata (n_pairs={n}, segment_len={t}, "
                                      f"labels {arrays['labels'].shape}, obs_a {arrays['obs_a'].shape})")
        try:
            return cls(
                **{k: arrays[k] for k in _ARRAY_FIELDS},
                obs_space=space_from_json(meta.get("obs_space")), act_space=space_from_json(meta.get("act_space")),
                frames_a=arrays.get("frames_a"), frames_b=arrays.get("frames_b"),
                extras={k[len(_EXTRA_PREFIX):]: v for k, v in arrays.items() if k.startswith(_EXTRA_PREFIX)},
                info=meta.get("info") or {}, context=int(meta.get("context", 0)),
            )
        except (PreferenceDataError, KeyError, TypeError, ValueError) as e:
            raise PreferenceFileError(f"{path}: invalid content: {e}") from e


def concatenate(datasets: Sequence[PreferenceDataset]) -> PreferenceDataset:
    """One new dataset with the pairs of all ``datasets`` in order (the inputs are not modified)."""
    if not datasets:
        raise EmptyDatasetError("concatenate needs at least one dataset")
    out = datasets[0].subset(slice(None))
    for d in datasets[1:]:
        out.append(d)
    return out
