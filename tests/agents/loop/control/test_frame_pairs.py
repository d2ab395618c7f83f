"""Image experience in a frame store: exact observations across lockstep envs, compaction, save/load."""

import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv

from agents.loop.control.frame_pairs import FrameExperience, FrameRecorder, ImageSegmentPairSource
from rewardmodels.image_segments import ImagePairs, StackedSegments, cut_segments
from tests.rewardmodels.test_image_segments import TinyFrameEnv


def _record(n_steps=60, n_envs=3):
    venv = DummyVecEnv([lambda i=i: TinyFrameEnv(episode_len=5 + 2 * i, clock_start=80 * i) for i in range(n_envs)])
    exp = FrameExperience(venv.observation_space, capacity=10_000)
    rec = FrameRecorder(venv, exp)
    obs = rec.reset()
    seen: dict[int, list] = {e: [] for e in range(n_envs)}
    rng = np.random.default_rng(0)
    for _ in range(n_steps // n_envs):
        for e in range(n_envs):
            seen[e].append(obs[e].copy())
        obs, *_ = rec.step(rng.integers(2, size=n_envs))
    return exp, seen


def test_lockstep_envs_are_stored_as_contiguous_stretches_reproducing_every_observation():
    exp, seen = _record()
    roll = exp.rollout()
    assert len(roll.pos) == 60 == exp.steps
    obs = StackedSegments(exp.store, roll.pos, 1)[:][:, 0]  # (60, 3, 6, 5)
    recorded = {tuple(o.ravel()) for o in obs}
    assert all(tuple(o.ravel()) in recorded for e in seen for o in seen[e])
    assert len(exp.store) < 2 * 60  # one new frame per step (+ stacks at stretch starts), not 3
    seg = cut_segments(roll, 4, 100, np.random.default_rng(1))
    clock = StackedSegments(exp.store, seg["starts"], 4)[:][:, :, -1, 0, 0].astype(int)
    # within a segment, real steps are consecutive frames of ONE env (envs' clocks are 80 apart)
    steps = np.diff(clock, axis=1)[seg["mask"][:, 1:]]
    assert np.all(steps == 1)


def test_compaction_keeps_labelled_windows_and_recent_pieces():
    exp, _ = _record()
    roll = exp.rollout()
    seg = cut_segments(roll, 3, 4, np.random.default_rng(2))
    pairs = ImagePairs(exp.store, seg["starts"][:2], seg["starts"][2:], seg["acts"][:2], seg["acts"][2:],
                       seg["true_rew"][:2], seg["true_rew"][2:], seg["mask"][:2], seg["mask"][2:],
                       np.array([1.0, 0.0], np.float32))
    before = np.asarray(pairs.obs_a), np.asarray(pairs.obs_b)
    while len(exp.pieces) > 2:
        exp.pieces.popleft()
    kept_obs = StackedSegments(exp.store, exp.rollout().pos, 1)[:]
    n_before = len(exp.store)
    exp.compact(pairs, 3)
    assert len(exp.store) < n_before
    np.testing.assert_array_equal(np.asarray(pairs.obs_a), before[0])
    np.testing.assert_array_equal(np.asarray(pairs.obs_b), before[1])
    np.testing.assert_array_equal(StackedSegments(exp.store, exp.rollout().pos, 1)[:], kept_obs)


def test_compaction_with_open_stretches_keeps_every_piece_valid():
    """Compacting while envs are mid-episode: the stretches it closes are kept and remapped too (a long Atari run
    once drew candidates from positions past the compacted store's end)."""
    import copy

    exp, _ = _record()
    assert exp.open  # every env is mid-episode
    reference = copy.deepcopy(exp)
    expected = StackedSegments(reference.store, reference.rollout().pos, 1)[:]
    exp.compact(None, 3)
    roll = exp.rollout()
    assert roll.pos.max() < len(exp.store)
    np.testing.assert_array_equal(StackedSegments(exp.store, roll.pos, 1)[:], expected)


def test_pair_source_save_load_roundtrip(tmp_path, monkeypatch):
    import gymnasium as gym

    monkeypatch.setattr(gym, "make", lambda env_id: TinyFrameEnv())
    src = ImageSegmentPairSource("Tiny-v0", segment_len=3)
    exp, _ = _record()
    src.experience = exp
    pairs = src.candidates(5, np.random.default_rng(0))

    class Oracle:
        def label(self, ra, rb, ma, mb):
            return np.where(ra.sum(1) > rb.sum(1), 1.0, np.where(ra.sum(1) < rb.sum(1), 0.0, 0.5))

    dataset = src.merge(None, src.label(Oracle(), pairs))
    src.save(tmp_path, dataset)
    other = ImageSegmentPairSource("Tiny-v0", segment_len=3)
    loaded = other.load(tmp_path)
    np.testing.assert_array_equal(np.asarray(loaded.obs_a), np.asarray(dataset.obs_a))
    np.testing.assert_array_equal(loaded.labels, dataset.labels)
    assert other.env_steps == src.env_steps
    np.testing.assert_array_equal(other.true_preferences(loaded), src.true_preferences(dataset))
