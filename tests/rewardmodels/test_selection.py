import gymnasium as gym
import numpy as np
import pytest
import torch

from rewardmodels.ensemble import RewardEnsemble
from rewardmodels.nets import RewardNet
from rewardmodels.preferences import PreferenceDataset
from rewardmodels.segments import Segments
from rewardmodels.selection import CANDIDATE_OVERSAMPLING, random_pairs, select_pairs

OBS = gym.spaces.Box(-10, 10, (2,), np.float32)
ACT = gym.spaces.Discrete(2)


class FeatureReward(RewardNet):
    """r(s) = obs[0] + slope * obs[1]: members share feature 0 and disagree about feature 1."""

    def __init__(self, slope):
        super().__init__(OBS, ACT)
        self.slope = slope

    def forward(self, obs, acts):
        return obs[..., 0] + self.slope * obs[..., 1]


def constructed_ensemble():
    return RewardEnsemble([FeatureReward(2.0), FeatureReward(-2.0), FeatureReward(0.0)])


def candidates(controversial, n=30, t=4, seed=0):
    """n pairs differing in feature 0 (members agree), except the ``controversial`` ones, which also differ in
    feature 1 (member 1 says a is better, member 2 says b is better)."""
    rng = np.random.default_rng(seed)
    obs_a, obs_b = np.zeros((n, t, 2)), np.zeros((n, t, 2))
    obs_a[..., 0] = rng.normal(0, 0.5, (n, t))
    obs_b[..., 0] = rng.normal(0, 0.5, (n, t))
    obs_a[controversial, :, 1] = 1.0
    obs_b[controversial, :, 1] = -1.0
    acts, rew, mask = np.zeros((n, t), int), np.zeros((n, t)), np.ones((n, t), bool)
    return PreferenceDataset(obs_a, obs_b, acts, acts, rew, rew, mask, mask, np.full(n, np.nan),
                             obs_space=OBS, act_space=ACT)


def test_disagreement_selects_the_pairs_the_members_disagree_on():
    controversial = [3, 11, 17, 22, 29]
    cands = candidates(controversial)
    assert len(cands) >= CANDIDATE_OVERSAMPLING * 3  # 10x oversampling as in the paper
    idx = select_pairs(cands, 5, method="disagreement", ensemble=constructed_ensemble(), rng=0)
    assert sorted(idx.tolist()) == controversial
    scores = constructed_ensemble().disagreement(cands)
    assert scores[controversial].min() > 0.4 > 0.05 > np.delete(scores, controversial).max()
    # most informative first
    assert np.all(np.diff(scores[idx]) <= 1e-12)


def test_entropy_selects_pairs_whose_mean_preference_is_closest_to_a_coin_flip():
    cands = candidates([], n=20)
    with torch.no_grad():
        cands.obs_b[:4, :, 0] = cands.obs_a[:4, :, 0]  # identical returns: mean P = 0.5 exactly
    idx = select_pairs(cands, 4, method="entropy", ensemble=constructed_ensemble(), rng=0)
    assert sorted(idx.tolist()) == [0, 1, 2, 3]


def test_random_selection_is_seeded_and_without_replacement():
    cands = candidates([], n=50)
    a, b = select_pairs(cands, 20, rng=3), select_pairs(cands, 20, rng=3)
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 20 and a.dtype == np.int64
    assert select_pairs(cands, 20, rng=4).tolist() != a.tolist()


def test_bad_requests_raise():
    cands = candidates([], n=10)
    with pytest.raises(ValueError, match="needs the reward ensemble"):
        select_pairs(cands, 2, method="disagreement")
    with pytest.raises(ValueError, match="unknown selection method"):
        select_pairs(cands, 2, method="uncertainty")
    with pytest.raises(ValueError, match="out of 10 candidates"):
        select_pairs(cands, 11)


def test_random_pairs_pairs_two_different_segments():
    n, t = 8, 3
    obs = np.arange(n, dtype=np.float32)[:, None, None] * np.ones((1, t, 2), np.float32)
    segs = Segments(obs, np.zeros((n, t), int), np.zeros((n, t)), np.ones((n, t), bool))
    pairs = random_pairs(segs, 200, rng=0, obs_space=OBS, act_space=ACT)
    assert len(pairs) == 200 and np.all(np.isnan(pairs.labels))
    assert np.all(pairs.obs_a[:, 0, 0] != pairs.obs_b[:, 0, 0])
    assert set(pairs.obs_a[:, 0, 0].astype(int).tolist()) == set(range(n))
