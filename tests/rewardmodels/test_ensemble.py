import gymnasium as gym
import numpy as np
import pytest
import torch

from rewardmodels.ensemble import FitConfig, RewardEnsemble, RewardModelFileError
from rewardmodels.preferences import EmptyDatasetError, PreferenceDataset
from rewardmodels.segments import Trajectory, cut_segments
from rewardmodels.selection import random_pairs
from rewardmodels.teachers import Teacher

OBS = gym.spaces.Box(-2, 2, (2,), np.float32)
ACT = gym.spaces.Discrete(2)


def toy_pairs(n, t=6, seed=0, label=True):
    """Pairs whose true per-step reward is obs[0] + 0.5 * action, labelled by the oracle."""
    rng = np.random.default_rng(seed)
    obs_a, obs_b = rng.uniform(-2, 2, (n, t, 2)), rng.uniform(-2, 2, (n, t, 2))
    acts_a, acts_b = rng.integers(0, 2, (n, t)), rng.integers(0, 2, (n, t))
    rew_a, rew_b = obs_a[..., 0] + 0.5 * acts_a, obs_b[..., 0] + 0.5 * acts_b
    mask = np.ones((n, t), bool)
    labels = Teacher().label(rew_a, rew_b) if label else np.full(n, np.nan)
    return PreferenceDataset(obs_a, obs_b, acts_a, acts_b, rew_a, rew_b, mask, mask.copy(), labels,
                             obs_space=OBS, act_space=ACT)


def small_ensemble(seed=0, **kw):
    return RewardEnsemble.mlp(OBS, ACT, n_members=3, seed=seed, hidden=(32, 32), **kw)


def test_fit_learns_the_true_preferences_and_changes_weights():
    train, test = toy_pairs(200, seed=0), toy_pairs(300, seed=1, label=False)
    ens = small_ensemble()
    before = [p.detach().clone() for p in ens.parameters()]
    chance = ens.evaluate(test)["true_accuracy"]
    metrics = ens.fit(train, FitConfig(epochs=15, lr=3e-3))
    assert metrics["accuracy"] > 0.9 and metrics["loss"] < 0.4 and metrics["steps"] == 15 * 4
    after = ens.evaluate(test)
    assert after["true_accuracy"] > 0.9 > chance + 0.2
    assert all(not torch.equal(a, b) for a, b in zip(before, ens.parameters(), strict=True) if a.ndim == 2)


def test_stop_accuracy_ends_a_fit_once_the_training_pairs_are_ordered_right():
    train = toy_pairs(200, seed=0)
    full = small_ensemble().fit(train, FitConfig(epochs=15, lr=3e-3))
    ens = small_ensemble()
    first = ens.fit(train, FitConfig(epochs=15, lr=3e-3, stop_accuracy=0.9))
    assert 4 <= first["steps"] < full["steps"] == 15 * 4 and first["steps"] % 4 == 0  # whole epochs only
    assert first["train_accuracy"] >= 0.85
    # A warm-started refit on labels the reward already orders right costs one epoch, not fifteen.
    assert ens.fit(train, FitConfig(epochs=15, lr=3e-3, stop_accuracy=0.9))["steps"] == 4
    # An unreachable threshold runs every epoch, as without it.
    assert small_ensemble().fit(train, FitConfig(epochs=3, stop_accuracy=1.0))["steps"] == 3 * 4


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5])
def test_stop_accuracy_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="stop_accuracy"):
        FitConfig(stop_accuracy=bad)


def test_members_are_bootstrapped_and_initialised_differently():
    ens = small_ensemble()
    ens.fit(toy_pairs(50), epochs=2)
    w = [net.mlp[0].weight for net in ens.members]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    probs = ens.preference_probs(toy_pairs(20, seed=3, label=False))
    assert probs.shape == (3, 20) and np.all(ens.disagreement(toy_pairs(20, seed=3, label=False)) > 0)


def test_fit_is_deterministic_for_a_seed():
    data, test = toy_pairs(60), toy_pairs(10, seed=5, label=False)
    preds = []
    for _ in range(2):
        ens = small_ensemble(seed=4, dropout=0.1)
        ens.fit(data, epochs=3)
        ens.fit(data, epochs=2)  # a second round continues deterministically too
        preds.append(ens.predict_reward(test.obs_a, test.acts_a))
    np.testing.assert_array_equal(preds[0], preds[1])


def test_fit_on_unlabelled_data_raises_empty_dataset_error():
    with pytest.raises(EmptyDatasetError):
        small_ensemble().fit(toy_pairs(10, label=False))
    with pytest.raises(EmptyDatasetError):
        small_ensemble().fit(PreferenceDataset.empty(OBS, ACT, segment_len=4))


def test_predict_reward_averages_separately_normalised_members_numpy_and_torch():
    ens = small_ensemble(reward_scale=2.0)
    data = toy_pairs(80)
    ens.fit(data, epochs=3)
    for net in ens.members:  # each member alone has std 1 over the data's steps (no padding here)
        r = net.normalized_reward(torch.as_tensor(data.obs_a), torch.as_tensor(data.acts_a))
        r_b = net.normalized_reward(torch.as_tensor(data.obs_b), torch.as_tensor(data.acts_b))
        assert torch.cat([r, r_b]).std(unbiased=False).item() == pytest.approx(1.0, rel=1e-3)
    obs, acts = data.obs_a[:, 0], data.acts_a[:, 0]  # (N, 2), (N,): one env step of N envs
    out = ens.predict_reward(obs, acts)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (80,)
    with torch.no_grad():
        manual = 2.0 * torch.stack([n.normalized_reward(torch.as_tensor(obs), torch.as_tensor(acts))
                                    for n in ens.members]).mean(0)
    np.testing.assert_allclose(out, manual.numpy(), rtol=1e-5, atol=1e-6)  # the fused path == the plain one
    out_t = ens.predict_reward(torch.as_tensor(obs), torch.as_tensor(acts))
    assert isinstance(out_t, torch.Tensor) and out_t.shape == (80,)
    assert ens.predict_reward(data.obs_a, data.acts_a).shape == (80, 6)  # (S, n_envs)-style batches too


def test_fused_predictions_follow_weight_changes():
    ens = small_ensemble()
    obs, acts = np.zeros((1, 2), np.float32), np.zeros(1, np.int64)
    before = ens.predict_reward(obs, acts)
    with torch.no_grad():
        ens.members[0].mlp[-1].bias.add_(10.0)
    assert ens.predict_reward(obs, acts)[0] == pytest.approx(before[0] + 10.0 / 3, rel=1e-5)


def test_disagreement_is_std_of_member_probabilities():
    ens = small_ensemble()
    pairs = toy_pairs(5, label=False)
    ra = ens.member_returns(pairs.obs_a, pairs.acts_a, pairs.mask_a)
    rb = ens.member_returns(pairs.obs_b, pairs.acts_b, pairs.mask_b)
    expected = torch.sigmoid(ra - rb).std(0, unbiased=False).numpy()
    np.testing.assert_allclose(ens.disagreement(pairs), expected, rtol=1e-5)


def test_validation_split_and_adaptive_l2():
    ens = small_ensemble()
    data = toy_pairs(120)
    metrics = ens.fit(data, FitConfig(epochs=10, val_fraction=1 / np.e, adaptive_l2=True, weight_decay=1e-4))
    assert 25 < metrics["n_val"] < 65 and metrics["n_train"] + metrics["n_val"] == 120
    assert np.isfinite(metrics["val_loss"]) and metrics["val_accuracy"] > 0.7
    assert metrics["l2"] != pytest.approx(1e-4)  # the coefficient moved
    l2 = ens.l2.clone()
    ens.fit(data, FitConfig(epochs=1, val_fraction=1 / np.e, adaptive_l2=True, weight_decay=1e-4))
    assert not torch.equal(ens.l2, torch.full_like(l2, 1e-4))  # adapted state carries over between fits
    with pytest.raises(ValueError, match="val_fraction"):
        FitConfig(adaptive_l2=True)


def test_learns_from_cartpole_segments_that_failure_is_worse():
    env = gym.make("CartPole-v1")
    env.action_space.seed(0)
    trajs = []
    for ep in range(40):
        obs, _ = env.reset(seed=ep)
        o, a, r, done, term = [], [], [], False, False
        while not done:
            act = env.action_space.sample()
            o.append(obs)
            a.append(act)
            obs, rew, term, trunc, _ = env.step(act)
            r.append(rew)
            done = term or trunc
        trajs.append(Trajectory(np.array(o), np.array(a), np.array(r), terminated=term))
    segs = cut_segments(trajs, 25, n=400, rng=0)
    pairs = random_pairs(segs, 300, rng=0, obs_space=env.observation_space, act_space=env.action_space)
    labelled = pairs.subset(np.arange(100))
    labelled = labelled.with_labels(Teacher().label_pairs(labelled))
    ens = RewardEnsemble.mlp(env.observation_space, env.action_space, n_members=3, seed=0)
    ens.fit(labelled, epochs=20)
    assert ens.evaluate(pairs.subset(np.arange(100, 300)))["true_accuracy"] > 0.85
    alive = ens.predict_reward(np.concatenate([t.obs for t in trajs]), np.concatenate([t.acts for t in trajs]))
    assert np.mean(alive > 0) > 0.9  # living beats the absorbing state (reward 0) almost everywhere


def test_save_and_load_round_trip(tmp_path):
    ens = small_ensemble()
    data = toy_pairs(40)
    ens.fit(data, epochs=2)
    path = ens.save(tmp_path / "reward.safetensors")
    obs, acts = data.obs_a[:, 0], data.acts_a[:, 0]
    rebuilt = RewardEnsemble.load(path)
    np.testing.assert_array_equal(rebuilt.predict_reward(obs, acts), ens.predict_reward(obs, acts))
    assert int(rebuilt.fit_count) == 1
    other = small_ensemble(seed=9).load_state(path)
    np.testing.assert_array_equal(other.predict_reward(obs, acts), ens.predict_reward(obs, acts))


def test_bad_reward_model_files_raise(tmp_path):
    ens = small_ensemble()
    path = ens.save(tmp_path / "r.safetensors")
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(RewardModelFileError, match="trunc.safetensors"):
        small_ensemble().load_state(tmp_path / "trunc.safetensors")
    with pytest.raises(RewardModelFileError, match="members"):
        RewardEnsemble.mlp(OBS, ACT, n_members=2, hidden=(32, 32)).load_state(path)
    with pytest.raises(RewardModelFileError, match="architecture"):
        RewardEnsemble.mlp(OBS, ACT, n_members=3, hidden=(16,)).load_state(path)
    with pytest.raises(RewardModelFileError, match="does not exist"):
        RewardEnsemble.load(tmp_path / "nope.safetensors")


def test_normalizers_can_be_refit_on_other_segments():
    ens = small_ensemble()
    data = toy_pairs(60)
    ens.fit(data, epochs=2)
    fresh = toy_pairs(30, seed=8, label=False).segments("b")
    fresh.obs[..., 0] *= 3  # the agent now visits states with a wider reward range
    ens.fit_normalizers(fresh)
    for net in ens.members:
        r = net.normalized_reward(torch.as_tensor(fresh.obs), torch.as_tensor(fresh.acts))
        assert r.std(unbiased=False).item() == pytest.approx(1.0, rel=1e-3)
    np.testing.assert_array_equal(ens.predict(fresh.obs, fresh.acts), ens.predict_reward(fresh.obs, fresh.acts))
