import numpy as np
import pytest

from rewardmodels.preferences import PreferenceDataset, SegmentShapeError
from rewardmodels.segments import Segments, Trajectory, cut_segments, segment_windows, trajectories_from_rollout
from rewardmodels.teachers import Teacher


def traj(length, terminated, offset=0.0):
    obs = (np.arange(length, dtype=np.float32)[:, None] + offset) * np.ones((1, 2), np.float32)
    return Trajectory(obs, np.arange(length) % 2, np.ones(length), terminated=terminated)


def test_segment_after_termination_is_padded_with_frozen_last_obs_and_no_reward():
    segs = cut_segments([traj(5, terminated=True)], segment_len=4, starts=[(0, 3)])
    assert segs.mask[0].tolist() == [True, True, False, False]
    assert segs.true_rew[0].tolist() == [1, 1, 0, 0]
    assert segs.obs[0, :, 0].tolist() == [3, 4, 4, 4]  # last real observation repeated
    assert segs.acts[0].tolist() == [1, 0, 0, 0]
    assert segs.source.tolist() == [[0, 3]]


def test_failing_segment_is_preferred_less_by_the_oracle():
    alive = cut_segments([traj(20, terminated=False)], 6, starts=[(0, 0)])
    falls = cut_segments([traj(4, terminated=True)], 6, starts=[(0, 0)])
    pairs = PreferenceDataset.from_segments(alive, falls)
    assert Teacher().label_pairs(pairs).tolist() == [1.0]


def test_truncated_trajectories_are_never_padded():
    trajs = [traj(5, terminated=False), traj(3, terminated=True)]
    windows = segment_windows(trajs, segment_len=4)
    # the truncated one has windows 0..1 only; the terminated one may start anywhere (>= 1 real step)
    assert windows.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1], [1, 2]]
    with pytest.raises(SegmentShapeError, match="is not terminated"):
        cut_segments(trajs, 4, starts=[(0, 3)])
    with pytest.raises(SegmentShapeError, match="no trajectory can hold"):
        cut_segments([traj(3, terminated=False)], 4, n=2, rng=0)


def test_min_valid_limits_how_much_padding_a_segment_may_have():
    assert segment_windows([traj(5, True)], 4, min_valid=3).tolist() == [[0, 0], [0, 1], [0, 2]]


def test_random_cutting_is_seeded_and_covers_all_trajectories():
    trajs = [traj(30, False, offset=100 * i) for i in range(3)] + [traj(7, True, offset=1000)]
    a = cut_segments(trajs, 5, n=40, rng=1)
    b = cut_segments(trajs, 5, n=40, rng=1)
    np.testing.assert_array_equal(a.obs, b.obs)
    assert len(a) == 40 and a.segment_len == 5 and set(a.source[:, 0]) == {0, 1, 2, 3}
    assert len({tuple(w) for w in a.source}) == 40  # drawn without replacement
    # every segment is a contiguous window of its trajectory
    for (i, s), obs, m in zip(a.source, a.obs, a.mask, strict=True):
        k = int(m.sum())
        np.testing.assert_array_equal(obs[:k], trajs[i].obs[s:s + k])


def test_trajectories_from_rollout_splits_at_episode_ends():
    s, e = 6, 2
    obs = np.arange(s * e, dtype=np.float32).reshape(s, e, 1)
    acts = np.zeros((s, e), int)
    rews = np.ones((s, e))
    terminated = np.zeros((s, e), bool)
    truncated = np.zeros((s, e), bool)
    terminated[1, 0] = True  # env 0: episode of 2 steps ends in failure
    truncated[3, 1] = True  # env 1: time limit after 4 steps
    trajs = trajectories_from_rollout(obs, acts, rews, terminated, truncated)
    assert [(len(t), t.terminated) for t in trajs] == [(2, True), (4, False), (4, False), (2, False)]
    np.testing.assert_array_equal(trajs[1].obs[:, 0], obs[2:, 0, 0])


def test_segments_indexing_and_concatenation():
    segs = cut_segments([traj(10, False)], 3, n=6, rng=0)
    both = Segments.concatenate([segs[:2], segs[4:]])
    assert len(both) == 4 and both.source.shape == (4, 2)
    with pytest.raises(SegmentShapeError):
        Segments(segs.obs, segs.acts, segs.true_rew[:, :2], segs.mask)
