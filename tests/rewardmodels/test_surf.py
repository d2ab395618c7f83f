"""SURF's options: the threshold picks exactly the confident pairs, crops have the paper's lengths and keep one
length per pair, segments carry their context, and the ensemble's fit uses both (tests fail with them off)."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from rewardmodels.ensemble import FitConfig, RewardEnsemble, _pair_returns, _tensors
from rewardmodels.errors import SegmentShapeError
from rewardmodels.nets import MLPRewardNet, segment_returns, step_rewards
from rewardmodels.preferences import PreferenceDataset
from rewardmodels.published import SURF_CONTEXT, SURF_CROP, SURF_THRESHOLD
from rewardmodels.surf import crop_windows, pseudo_labels, window_weights

OBS = gym.spaces.Box(-10.0, 10.0, (1,), np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)


def test_pseudo_labels_keep_exactly_the_pairs_at_or_above_the_threshold():
    logit = math.log(0.99 / 0.01)  # R_a - R_b where sigmoid = 0.99
    gaps = torch.tensor([logit + 0.01, logit - 0.01, -logit - 0.01, -logit + 0.01, 0.0, 5.0, -5.0])
    labels, confident = pseudo_labels(gaps, torch.zeros(7), SURF_THRESHOLD)
    assert confident.tolist() == [True, False, True, False, False, True, True]
    assert labels.tolist() == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    assert pseudo_labels(gaps, torch.zeros(7), 0.5)[1].all()  # tau = 0.5: every pair counts
    with pytest.raises(ValueError, match="threshold"):
        pseudo_labels(gaps, torch.zeros(7), 0.3)


def test_crops_have_surfs_lengths_one_per_pair_and_stay_in_the_window():
    h, c, w = 50, SURF_CROP, SURF_CONTEXT  # B-Pref's 50 labelled steps, 5 more on each side
    start_a, start_b, length = crop_windows(20_000, h, h + 2 * w, c, np.random.default_rng(0))
    assert set(np.unique(length)) == set(range(45, 56))  # uniform on H - 5 .. H + 5: every length occurs
    assert abs(np.mean(length) - 50) < 0.1
    assert (start_a >= 0).all() and (start_b >= 0).all()
    assert (start_a + length <= 60).all() and (start_b + length <= 60).all()
    assert (start_a != start_b).mean() > 0.8  # one length per pair, a start per segment (SURF's get_cropping_mask)
    _, _, short = crop_windows(1_000, h, h, c, np.random.default_rng(1))  # no context: capped at H
    assert short.min() == 45 and short.max() == 50
    weights = window_weights(np.array([0, 2]), np.array([3, 1]), 5)
    assert weights.tolist() == [[1, 1, 1, 0, 0], [0, 0, 1, 0, 0]]


def _pairs(rng, n, t, context=0, labels=None):
    obs = rng.normal(size=(2, n, t + 2 * context, 1)).astype(np.float32)
    acts = np.zeros((2, n, t + 2 * context, 1), np.float32)
    rew = obs[..., 0].copy()
    mask = np.ones((2, n, t + 2 * context), bool)
    return PreferenceDataset(obs[0], obs[1], acts[0], acts[1], rew[0], rew[1], mask[0], mask[1],
                             np.full(n, np.nan, np.float32) if labels is None else labels, obs_space=OBS,
                             act_space=ACT, context=context)


def test_a_dataset_with_context_labels_and_scores_only_its_core(tmp_path):
    ds = _pairs(np.random.default_rng(0), 4, 6, context=2)
    core = ds.core()
    assert core.segment_len == 6 and core.context == 0 and ds.segment_len == 10
    assert np.array_equal(core.obs_a, ds.obs_a[:, 2:8])
    ret_a, _ = ds.true_returns()
    assert ret_a == pytest.approx(ds.true_rew_a[:, 2:8].sum(1))  # the labelled steps, not the context
    ds.save(tmp_path / "p.npz")
    assert PreferenceDataset.load(tmp_path / "p.npz").context == 2
    assert ds.subset([0, 1]).context == 2
    with pytest.raises(SegmentShapeError, match="context"):
        ds.append(_pairs(np.random.default_rng(1), 2, 10))  # same T, no context
    with pytest.raises(SegmentShapeError, match="no labelled steps"):
        _pairs(np.random.default_rng(1), 2, 0, context=3)


class _Identity(MLPRewardNet):
    """r(s, a) = s: returns by hand."""

    def forward(self, obs, acts):
        return obs[..., 0] + 0.0 * self.absorbing_reward


def test_cropped_returns_are_the_sums_over_each_segments_window():
    net = _Identity(OBS, ACT)
    ds = _pairs(np.random.default_rng(2), 3, 6, context=2)
    data = _tensors(ds, torch.device("cpu"))
    idx = torch.arange(3)
    full_a, _ = _pair_returns(net, data, idx)
    assert full_a.detach().numpy() == pytest.approx(ds.obs_a[:, 2:8, 0].sum(1), rel=1e-5)  # uncropped: the core
    crop = (np.array([0, 1, 4]), np.array([3, 0, 2]), np.array([5, 7, 6]))
    ret_a, ret_b = (r.detach() for r in _pair_returns(net, data, idx, crop))
    for i, (sa, sb, n) in enumerate(zip(*crop, strict=True)):
        assert float(ret_a[i]) == pytest.approx(ds.obs_a[i, sa:sa + n, 0].sum(), rel=1e-5)
        assert float(ret_b[i]) == pytest.approx(ds.obs_b[i, sb:sb + n, 0].sum(), rel=1e-5)
    obs, mask = torch.tensor(ds.obs_a), torch.tensor(ds.mask_a)
    mask[0, 7:] = False  # padding after a terminal step: the absorbing reward, as segment_returns
    steps = step_rewards(net, obs, torch.zeros_like(obs), mask)
    assert torch.allclose(steps.sum(1), segment_returns(net, obs, torch.zeros_like(obs), mask))


def _labelled_and_unlabelled(seed=0):
    rng = np.random.default_rng(seed)
    labelled = _pairs(rng, 40, 10)
    ra, rb = labelled.true_returns()
    labelled = labelled.with_labels((ra > rb).astype(np.float32))
    return labelled, _pairs(rng, 400, 10)


def _margins(ens, pairs):
    probs = ens.preference_probs(pairs)  # (M, N)
    return np.abs(probs - 0.5).mean()


def test_pseudo_labels_sharpen_the_confident_pairs_and_do_nothing_when_off():
    """Self-training on its own confident predictions makes a model more decided on the unlabelled pairs. (tau 0.75,
    not SURF's 0.99: after 90 gradient steps on 40 labels, few pairs reach 0.99. Seeds 0-2 of this data: margins
    0.217 / 0.226 / 0.229 off, 0.231 / 0.241 / 0.243 on.)"""
    labelled, unlabelled = _labelled_and_unlabelled()
    fits = {}
    for name, threshold in (("off", None), ("on", 0.75)):
        ens = RewardEnsemble.mlp(OBS, ACT, n_members=2, seed=0, hidden=(16,))
        ens.fit(labelled, FitConfig(epochs=30, batch_size=16, pseudo_threshold=threshold), unlabelled=unlabelled)
        fits[name] = _margins(ens, unlabelled)
    plain = RewardEnsemble.mlp(OBS, ACT, n_members=2, seed=0, hidden=(16,))
    plain.fit(labelled, FitConfig(epochs=30, batch_size=16))
    assert fits["off"] == pytest.approx(_margins(plain, unlabelled))  # threshold None: unlabelled pairs unused
    assert fits["on"] > fits["off"] + 0.007


def test_crops_change_the_fit_and_an_uncropped_fit_ignores_the_context():
    rng = np.random.default_rng(3)
    ds = _pairs(rng, 30, 8, context=2)
    ra, rb = ds.true_returns()
    ds = ds.with_labels((ra > rb).astype(np.float32))
    weights = {}
    for crop in (0, 2):
        ens = RewardEnsemble.mlp(OBS, ACT, n_members=1, seed=0, hidden=(8,))
        ens.fit(ds, FitConfig(epochs=3, crop=crop))
        weights[crop] = torch.cat([p.detach().flatten() for p in ens.parameters()])
    core = RewardEnsemble.mlp(OBS, ACT, n_members=1, seed=0, hidden=(8,))
    core.fit(ds.core(), FitConfig(epochs=3))
    assert torch.allclose(weights[0], torch.cat([p.detach().flatten() for p in core.parameters()]))
    assert not torch.allclose(weights[0], weights[2])


def test_surf_fit_settings_are_checked():
    with pytest.raises(ValueError, match="pseudo_threshold"):
        FitConfig(pseudo_threshold=0.2)
    with pytest.raises(ValueError, match="crop"):
        FitConfig(crop=-1)
