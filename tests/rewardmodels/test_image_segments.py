"""Image segments as windows into a frame store: exact observations, no needless copies, padding, files."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from rewardmodels.image_segments import (
    FrameStore,
    ImagePairs,
    ImageSegmentError,
    Rollout,
    StackedSegments,
    cut_segments,
    record_rollout,
)


class TinyFrameEnv(gym.Env):
    """Frame-stacked 6x5 frames whose pixels encode the global step; episodes terminate every 7 steps."""

    observation_space = gym.spaces.Box(0, 255, (3, 6, 5), np.uint8)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, episode_len: int = 7, clock_start: int = 0):
        self.episode_len, self.clock = episode_len, clock_start

    def _frame(self) -> np.ndarray:
        self.clock += 1
        return np.full((6, 5), self.clock % 256, np.uint8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        f = self._frame()
        self.stack = [f, f, f]  # FrameStackObservation's "reset" padding
        return np.stack(self.stack), {}

    def step(self, action):
        self.t += 1
        self.stack = [*self.stack[1:], self._frame()]
        return np.stack(self.stack), float(action), self.t >= self.episode_len, False, {}


def _recorded(n_steps=40):
    env, store, seen = TinyFrameEnv(), FrameStore((6, 5), stack=3), []

    def policy(obs):
        seen.append(obs.copy())
        return len(seen) % 2

    roll = record_rollout(env, policy, n_steps, store, seed=0)
    return store, roll, np.stack(seen)


def test_windows_reproduce_every_observation_exactly():
    store, roll, seen = _recorded()
    obs = StackedSegments(store, roll.pos, length=1)[:]  # (n, 1, 3, 6, 5)
    np.testing.assert_array_equal(obs[:, 0], seen)
    # 40 steps + 6 episodes' 2 padding frames + final frames: far fewer frames than 3 per step
    assert len(store) < 2 * len(roll.pos)


def test_torch_gather_is_a_strided_view_of_one_copy_per_segment():
    store, roll, _ = _recorded()
    seg = StackedSegments(store, roll.pos[[0, 8]], length=4)
    x = seg.torch()
    assert x.shape == (2, 4, 3, 6, 5) and x.dtype == torch.uint8
    # the stack of 3 frames per step is not materialised: storage holds T + k - 1 frames per segment
    assert x.untyped_storage().nbytes() == 2 * (4 + 3 - 1) * 6 * 5
    np.testing.assert_array_equal(x.numpy(), seg[np.arange(2)])


def test_cut_segments_pads_after_termination_and_never_spans_episodes():
    store, roll, _ = _recorded()
    segs = cut_segments(roll, length=5, n=200, rng=np.random.default_rng(0))
    mask = segs["mask"]
    assert mask[:, 0].all() and (~mask).any()
    assert not np.any(mask[:, 1:] & ~mask[:, :-1])  # padding only at the end
    assert np.all(segs["true_rew"][~mask] == 0)
    obs = StackedSegments(store, segs["starts"], 5)[:]
    newest = obs[:, :, -1, 0, 0].astype(int)  # pixel value = global frame clock
    steps_seen = np.diff(newest, axis=1)[mask[:, 1:]]
    assert np.all(steps_seen == 1)  # consecutive real steps are consecutive frames of one episode


def test_truncated_tail_is_never_cut_into():
    roll = Rollout(pos=np.arange(3, 13), acts=np.zeros(10, np.int64), rews=np.ones(10, np.float32),
                   terminated=np.zeros(10, bool), episode_end=np.zeros(10, bool))
    segs = cut_segments(roll, length=4, n=50, rng=np.random.default_rng(1))
    assert segs["mask"].all() and segs["starts"].max() <= 3 + 6
    with pytest.raises(ImageSegmentError, match="collect more steps"):
        cut_segments(roll, length=11, n=1, rng=np.random.default_rng(1))


def _pairs():
    store, roll, _ = _recorded()
    rng = np.random.default_rng(2)
    a, b = (cut_segments(roll, 5, 6, rng) for _ in range(2))
    labels = np.array([1, 0, 0.5, np.nan, 1, 0], np.float32)
    return ImagePairs(store, a["starts"], b["starts"], a["acts"], b["acts"], a["true_rew"], b["true_rew"],
                      a["mask"], b["mask"], labels)


def test_image_pairs_roundtrip_through_preference_dataset_and_file(tmp_path):
    pairs = _pairs()
    ds = pairs.to_preference_dataset()
    assert ds.obs_a.shape == (6, 5, 3, 6, 5) and ds.obs_a.dtype == np.uint8
    back = ImagePairs.from_preference_dataset(ds)
    np.testing.assert_array_equal(np.asarray(back.obs_a), ds.obs_a)
    np.testing.assert_array_equal(np.asarray(back.obs_b), ds.obs_b)
    path = pairs.save(tmp_path / "pairs.npz")
    loaded = ImagePairs.load(path)
    np.testing.assert_array_equal(np.asarray(loaded.obs_b), np.asarray(pairs.obs_b))
    np.testing.assert_array_equal(loaded.labels, pairs.labels)
    # each referenced frame once: smaller than the materialised dataset's observations
    assert len(loaded.store) * 30 < ds.obs_a.nbytes + ds.obs_b.nbytes


def test_bad_input_raises_specific_errors(tmp_path):
    store = FrameStore((6, 5), stack=3)
    with pytest.raises(ImageSegmentError, match="uint8"):
        store.add(np.zeros((2, 6, 5), np.float32))
    store.start_episode(np.zeros((6, 5), np.uint8))
    with pytest.raises(ImageSegmentError, match="segment starts"):
        StackedSegments(store, np.array([0]), 2)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ImageSegmentError, match="re-create"):
        ImagePairs.load(bad)


def test_compact_drops_unreferenced_frames_and_keeps_windows():
    store, roll, _ = _recorded()
    keep = roll.pos[[5, 20]]
    before = StackedSegments(store, keep, 3)[:]
    (new,) = store.compact([keep], 3)
    assert len(store) == 2 * (3 + 3 - 1)
    np.testing.assert_array_equal(StackedSegments(store, new, 3)[:], before)
