import gymnasium as gym
import numpy as np
import pytest
import torch

from rewardmodels.nets import MLPRewardNet, UnsupportedSpaceError, encode_space, segment_returns

BOX = gym.spaces.Box(-1, 1, (3,), np.float32)


@pytest.mark.parametrize("obs_space, act_space, obs, acts", [
    (BOX, gym.spaces.Discrete(4), torch.randn(2, 5, 3), torch.randint(0, 4, (2, 5))),
    (BOX, gym.spaces.Box(-1, 1, (2,)), torch.randn(2, 5, 3), torch.randn(2, 5, 2)),
    (gym.spaces.Discrete(7), gym.spaces.Discrete(2), torch.randint(0, 7, (2, 5)), torch.randint(0, 2, (2, 5))),
    (gym.spaces.Box(0, 255, (2, 4, 4), np.uint8), gym.spaces.MultiDiscrete([2, 3]),
     torch.randint(0, 256, (2, 5, 2, 4, 4), dtype=torch.uint8), torch.randint(0, 2, (2, 5, 2))),
])
def test_forward_maps_segments_to_per_step_rewards(obs_space, act_space, obs, acts):
    net = MLPRewardNet(obs_space, act_space, hidden=(16, 16), dropout=0.1)
    assert net(obs, acts).shape == (2, 5)
    assert net(obs[0], acts[0]).shape == (5,)  # any batch shape, e.g. (n_envs,) per env step


def test_paper_default_architecture_is_two_by_64_leaky_relu():
    net = MLPRewardNet(BOX, gym.spaces.Discrete(2))
    linears = [m for m in net.mlp if isinstance(m, torch.nn.Linear)]
    assert [lin.out_features for lin in linears] == [64, 64, 1] and linears[0].in_features == 3 + 2
    assert isinstance(net.mlp[1], torch.nn.LeakyReLU) and net.mlp[1].negative_slope == 0.01


def test_discrete_actions_are_one_hot_and_uint8_images_scaled():
    assert encode_space(torch.tensor([[2, 0]]), gym.spaces.Discrete(3)).tolist() == [[[0, 0, 1], [1, 0, 0]]]
    assert encode_space(torch.tensor([-1]), gym.spaces.Discrete(2, start=-1)).tolist() == [[1, 0]]
    img = torch.full((1, 2, 2), 255, dtype=torch.uint8)
    assert encode_space(img, gym.spaces.Box(0, 255, (2, 2), np.uint8)).tolist() == [[1.0] * 4]
    with pytest.raises(UnsupportedSpaceError, match="flatten Dict"):
        MLPRewardNet(gym.spaces.Dict({"x": BOX}), gym.spaces.Discrete(2))


def test_segment_returns_sum_real_steps_and_absorbing_reward_on_padding():
    net = MLPRewardNet(BOX, gym.spaces.Discrete(2), hidden=(8,))
    with torch.no_grad():
        net.absorbing_reward.fill_(-3.0)
    obs, acts = torch.randn(2, 4, 3), torch.randint(0, 2, (2, 4))
    mask = torch.tensor([[True, True, True, True], [True, False, False, False]])
    r = net(obs, acts)
    expected = torch.stack([r[0].sum(), r[1, 0] - 9.0])
    torch.testing.assert_close(segment_returns(net, obs, acts, mask), expected)
    torch.testing.assert_close(net.segment_returns(obs, acts, mask), expected)


def test_absorbing_reward_is_learned_so_failing_segments_rank_lower():
    torch.manual_seed(0)
    net = MLPRewardNet(BOX, gym.spaces.Discrete(2), hidden=(16,))
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    obs, acts = torch.randn(2, 6, 3), torch.zeros(2, 6, dtype=torch.long)
    mask = torch.tensor([[True] * 6, [True, True] + [False] * 4])  # the second segment terminates early
    for _ in range(100):
        ret = segment_returns(net, obs, acts, mask)
        loss = torch.nn.functional.softplus(ret[1] - ret[0])  # BT loss: the surviving segment is preferred
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert net.absorbing_reward.item() < 0.0
    assert segment_returns(net, obs, acts, mask)[0] > segment_returns(net, obs, acts, mask)[1] + 2


def test_normalizer_anchors_absorbing_reward_at_zero_with_unit_rms_on_real_steps():
    net = MLPRewardNet(BOX, gym.spaces.Discrete(2), hidden=(8,))
    with torch.no_grad():
        net.absorbing_reward.fill_(-2.0)
    obs, acts = torch.randn(20, 10, 3), torch.randint(0, 2, (20, 10))
    mask = torch.ones(20, 10, dtype=torch.bool)
    mask[:5, 6:] = False
    net.fit_normalizer(obs, acts, mask)
    assert net.norm_shift.item() == pytest.approx(-2.0)
    r = net.normalized_reward(obs, acts)
    absorbing = (net.absorbing_reward - net.norm_shift) / net.norm_scale
    assert absorbing.item() == pytest.approx(0.0)  # the absorbing state maps to exactly 0
    assert r[mask].pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=1e-4)  # unit magnitude where the data is
    # the scale is a property of the reward on real steps, not of how many padded steps the segments hold
    scale = net.norm_scale.item()
    padded_obs, padded_acts = torch.cat([obs, torch.randn(30, 10, 3)]), torch.cat([acts, torch.randint(0, 2, (30, 10))])
    net.fit_normalizer(padded_obs, padded_acts, torch.cat([mask, torch.zeros(30, 10, dtype=torch.bool)]))
    assert net.norm_scale.item() == pytest.approx(scale, rel=1e-6)
    # with no padding anywhere the absorbing reward is untrained: fall back to centring on the mean
    net.fit_normalizer(obs, acts, torch.ones(20, 10, dtype=torch.bool))
    r = net.normalized_reward(obs, acts)
    assert r.mean().item() == pytest.approx(0.0, abs=1e-5) and r.std(unbiased=False).item() == pytest.approx(1.0)


def test_bad_options_raise():
    with pytest.raises(ValueError, match="activation"):
        MLPRewardNet(BOX, gym.spaces.Discrete(2), activation="swish9")
    with pytest.raises(ValueError, match="dropout"):
        MLPRewardNet(BOX, gym.spaces.Discrete(2), dropout=1.0)
