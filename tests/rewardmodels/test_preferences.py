import os
import zipfile

import gymnasium as gym
import numpy as np
import pytest

from rewardmodels import preferences as prefs
from rewardmodels.preferences import (
    EmptyDatasetError,
    LabelValueError,
    NonFiniteValueError,
    PreferenceDataset,
    PreferenceFileError,
    SegmentShapeError,
    SpaceMismatchError,
    concatenate,
    space_from_json,
    space_to_json,
)

OBS = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
ACT = gym.spaces.Discrete(2)


def make_pairs(n=6, t=5, seed=0, labels=None, **kwargs):
    rng = np.random.default_rng(seed)
    mask_b = np.ones((n, t), bool)
    mask_b[0, 3:] = False  # pair 0: segment b terminated after 3 steps
    return PreferenceDataset(
        obs_a=rng.normal(size=(n, t, 4)), obs_b=rng.normal(size=(n, t, 4)),
        acts_a=rng.integers(0, 2, (n, t)), acts_b=rng.integers(0, 2, (n, t)),
        true_rew_a=np.ones((n, t)), true_rew_b=np.ones((n, t)) * mask_b,
        mask_a=np.ones((n, t), bool), mask_b=mask_b,
        labels=np.array([1.0, 0.0, 0.5, np.nan, 1.0, 0.0][:n]) if labels is None else labels,
        **{"obs_space": OBS, "act_space": ACT, **kwargs})


def test_valid_dataset_converts_dtypes_and_reports_counts():
    ds = make_pairs()
    assert len(ds) == 6 and ds.segment_len == 5 and ds.obs_shape == (4,) and ds.act_shape == ()
    assert ds.obs_a.dtype == np.float32 and ds.acts_a.dtype == np.int64 and ds.labels.dtype == np.float32
    assert ds.n_labelled == 5 and ds.labelled.tolist() == [True, True, True, False, True, True]
    ret_a, ret_b = ds.true_returns()
    assert ret_a[0] == 5 and ret_b[0] == 3  # the terminated segment earned less


@pytest.mark.parametrize("bad", [2.0, -1.0, 0.3, np.inf])
def test_labels_outside_the_convention_raise_label_error(bad):
    with pytest.raises(LabelValueError, match="1.0 \\(first segment preferred\\)"):
        make_pairs(labels=np.array([1.0, 0.0, bad, 0.5, 1.0, 0.0]))


def test_mismatched_segment_shapes_between_a_and_b_raise():
    ds = make_pairs()
    with pytest.raises(SegmentShapeError, match="obs_b"):
        PreferenceDataset(ds.obs_a, ds.obs_b[:, :4], ds.acts_a, ds.acts_b, ds.true_rew_a, ds.true_rew_b,
                          ds.mask_a, ds.mask_b, ds.labels)
    with pytest.raises(SegmentShapeError, match="acts_a has shape"):
        PreferenceDataset(ds.obs_a, ds.obs_b, ds.acts_a, ds.acts_b[..., None], ds.true_rew_a, ds.true_rew_b,
                          ds.mask_a, ds.mask_b, ds.labels)
    with pytest.raises(SegmentShapeError, match="true_rew_b"):
        PreferenceDataset(ds.obs_a, ds.obs_b, ds.acts_a, ds.acts_b, ds.true_rew_a, ds.true_rew_b[:, :2],
                          ds.mask_a, ds.mask_b, ds.labels)


def test_segments_not_matching_declared_spaces_raise_space_mismatch():
    ds = make_pairs()
    with pytest.raises(SpaceMismatchError, match="declared space"):
        make_pairs(obs_space=gym.spaces.Box(-1, 1, (3,)))
    with pytest.raises(SpaceMismatchError, match="outside the declared Discrete"):
        PreferenceDataset(ds.obs_a, ds.obs_b, ds.acts_a + 5, ds.acts_b, ds.true_rew_a, ds.true_rew_b,
                          ds.mask_a, ds.mask_b, ds.labels, act_space=ACT)
    with pytest.raises(SpaceMismatchError, match="holds integers"):
        PreferenceDataset(ds.obs_a, ds.obs_b, ds.acts_a + 0.5, ds.acts_b, ds.true_rew_a, ds.true_rew_b,
                          ds.mask_a, ds.mask_b, ds.labels, act_space=ACT)
    with pytest.raises(SpaceMismatchError, match="dtype"):  # a uint8 image vs a float one
        PreferenceDataset(np.zeros((6, 5, 4), np.uint8), ds.obs_b, ds.acts_a, ds.acts_b, ds.true_rew_a,
                          ds.true_rew_b, ds.mask_a, ds.mask_b, ds.labels)


@pytest.mark.parametrize("field", ["obs_a", "obs_b", "true_rew_a", "true_rew_b"])
def test_nan_or_inf_in_observations_or_rewards_raise(field):
    ds = make_pairs()
    arrays = {k: getattr(ds, k).copy() for k in prefs._ARRAY_FIELDS}
    arrays[field][1, 2] = np.nan if "obs" in field else np.inf
    with pytest.raises(NonFiniteValueError, match=field):
        PreferenceDataset(**arrays)


def test_padding_may_only_follow_termination_at_the_end():
    ds = make_pairs()
    mask = ds.mask_a.copy()
    mask[2, 1] = False  # a hole in the middle of a segment
    with pytest.raises(SegmentShapeError, match="real step after a padded one"):
        PreferenceDataset(ds.obs_a, ds.obs_b, ds.acts_a, ds.acts_b, ds.true_rew_a, ds.true_rew_b, mask,
                          ds.mask_b, ds.labels)


def test_empty_dataset_is_allowed_but_training_on_it_raises():
    ds = PreferenceDataset.empty(OBS, ACT, segment_len=5)
    assert len(ds) == 0 and ds.obs_a.shape == (0, 5, 4)
    with pytest.raises(EmptyDatasetError, match="needs labelled preference pairs"):
        ds.require_labelled()
    all_skipped = make_pairs(labels=np.full(6, np.nan))
    with pytest.raises(EmptyDatasetError):
        all_skipped.require_labelled()


def test_append_subset_with_labels_and_concatenate():
    ds = make_pairs()
    grown = PreferenceDataset.empty(OBS, ACT, segment_len=5).append(ds).append(ds.subset([0, 1]))
    assert len(grown) == 8 and np.array_equal(grown.obs_a[6:], ds.obs_a[:2])
    relabelled = ds.with_labels(np.zeros(6))
    assert np.all(relabelled.labels == 0) and relabelled.obs_a is ds.obs_a and np.isnan(ds.labels[3])
    assert len(concatenate([ds, ds])) == 12 and len(ds) == 6
    with pytest.raises(SegmentShapeError, match="segment_len"):
        ds.append(PreferenceDataset.empty(OBS, ACT, segment_len=7))
    with pytest.raises(LabelValueError):
        ds.with_labels(np.full(6, 2.0))


def test_save_load_round_trip_keeps_everything(tmp_path):
    ds = make_pairs(frames_a=[f"clips/{i}a.gif" for i in range(6)], frames_b=[f"clips/{i}b.gif" for i in range(6)],
                    extras={"labeller": np.array(["oracle"] * 3 + ["alice"] * 3), "step": np.arange(6)},
                    info={"env_id": "CartPole-v1"})
    path = ds.save(tmp_path / "prefs.npz")
    back = PreferenceDataset.load(path)
    for k in prefs._ARRAY_FIELDS:
        np.testing.assert_array_equal(getattr(back, k), getattr(ds, k))
        assert getattr(back, k).dtype == getattr(ds, k).dtype
    assert back.obs_space == OBS and back.act_space == ACT and back.info == {"env_id": "CartPole-v1"}
    assert back.frames_b[5] == "clips/5b.gif" and back.extras["labeller"][4] == "alice"
    with zipfile.ZipFile(path) as z:  # no pickled objects anywhere in the archive
        assert all(not z.read(n).startswith(b"\x80") for n in z.namelist())


def test_uint8_images_stay_uint8_and_are_compressed(tmp_path):
    n, t = 4, 6
    space = gym.spaces.Box(0, 255, (3, 16, 16), np.uint8)
    frames = np.zeros((n, t, 3, 16, 16), np.uint8)
    frames[:, :, 0, 4:8, 4:8] = 200
    ones = np.ones((n, t))
    ds = PreferenceDataset(frames, frames, np.zeros((n, t), int), np.zeros((n, t), int), ones, ones,
                           ones.astype(bool), ones.astype(bool), np.ones(n), obs_space=space, act_space=ACT)
    assert ds.obs_a.dtype == np.uint8 and np.shares_memory(ds.obs_a, frames)  # no float copy, no copy at all
    path = ds.save(tmp_path / "img.npz")
    assert os.path.getsize(path) < frames.nbytes  # compressed
    back = PreferenceDataset.load(path)
    assert back.obs_a.dtype == np.uint8 and np.array_equal(back.obs_a, frames) and back.obs_space == space


def test_truncated_or_corrupted_file_raises_preference_file_error_naming_the_file(tmp_path):
    path = make_pairs().save(tmp_path / "prefs.npz")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(PreferenceFileError, match="truncated.npz"):
        PreferenceDataset.load(truncated)
    corrupted = tmp_path / "corrupted.npz"
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF  # inside an array's data: the zip CRC check catches it
    corrupted.write_bytes(bytes(flipped))
    with pytest.raises(PreferenceFileError, match="corrupted.npz"):
        PreferenceDataset.load(corrupted)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(PreferenceFileError, match="not an rlhf-gym preference file"):
        PreferenceDataset.load(other)
    with pytest.raises(PreferenceFileError, match="does not exist"):
        PreferenceDataset.load(tmp_path / "missing.npz")
    assert issubclass(PreferenceFileError, ValueError)


def test_file_with_invalid_labels_is_rejected_on_load(tmp_path):
    ds = make_pairs()
    arrays = {k: getattr(ds, k) for k in prefs._ARRAY_FIELDS}
    arrays["labels"] = np.array([1, 0, 3, 0, 1, 0], np.float32)
    arrays["__meta__"] = np.array(__import__("json").dumps(ds.metadata()))
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(PreferenceFileError, match="bad.npz.*labels must be"):
        PreferenceDataset.load(tmp_path / "bad.npz")


def test_failed_save_never_overwrites_a_good_file(tmp_path, monkeypatch):
    good = make_pairs()
    path = good.save(tmp_path / "prefs.npz")
    before = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        make_pairs(seed=1).save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prefs.npz"]  # the temporary file is gone
    monkeypatch.undo()
    np.testing.assert_array_equal(PreferenceDataset.load(path).obs_a, good.obs_a)


@pytest.mark.parametrize("space", [
    gym.spaces.Box(-1.0, 2.0, (3,), np.float32),
    gym.spaces.Box(np.array([-1.0, -np.inf]), np.array([1.0, np.inf]), dtype=np.float64),
    gym.spaces.Box(0, 255, (4, 8, 8), np.uint8),
    gym.spaces.Discrete(5, start=-2),
    gym.spaces.MultiDiscrete([3, 4]),
    gym.spaces.MultiBinary(6),
])
def test_space_json_round_trip(space):
    desc = space_to_json(space)
    __import__("json").dumps(desc, allow_nan=False)  # strict JSON, infinities as strings
    assert space_from_json(desc) == space
