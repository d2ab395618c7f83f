"""The paper's CNN reward net: architecture, forward contract, layouts, and an ALE end-to-end fit."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from rewardmodels.cnn import CNNRewardNet, image_layout
from rewardmodels.losses import bradley_terry_loss
from rewardmodels.nets import UnsupportedSpaceError, segment_returns

ATARI_OBS = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
ACTIONS = gym.spaces.Discrete(6)


def test_architecture_is_the_papers():
    net = CNNRewardNet(ATARI_OBS, ACTIONS)
    convs = [m for m in net.convs if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size[0], c.stride[0], c.out_channels) for c in convs] == [(7, 3, 16), (5, 2, 16), (3, 1, 16),
                                                                                (3, 1, 16)]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.convs) == 4
    drops = [m for m in net.convs if isinstance(m, torch.nn.Dropout)]
    assert len(drops) == 4 and all(d.p == 0.5 for d in drops)
    assert all(m.negative_slope == 0.01 for m in net.modules() if isinstance(m, torch.nn.LeakyReLU))
    assert net.head[0].in_features == 16 * 7 * 7 and net.head[0].out_features == 64


def test_forward_contract_batch_shapes_and_padding():
    net = CNNRewardNet(ATARI_OBS, ACTIONS).eval()
    obs = torch.randint(0, 256, (3, 5, 4, 84, 84), dtype=torch.uint8)
    acts = torch.zeros(3, 5, dtype=torch.long)
    r = net(obs, acts)
    assert r.shape == (3, 5) and r.dtype == torch.float32
    assert net(obs[0, 0], acts[0, 0]).shape == ()  # a single observation
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, 3:] = False
    with torch.no_grad():
        net.absorbing_reward.fill_(-7.0)
    ret = segment_returns(net, obs, acts, mask)
    torch.testing.assert_close(ret[0], r[0, :3].sum() - 14.0)


def test_uint8_and_scaled_float_inputs_agree():
    net = CNNRewardNet(ATARI_OBS, ACTIONS).eval()
    obs = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
    float_net = CNNRewardNet(gym.spaces.Box(0.0, 1.0, (4, 84, 84), np.float32), ACTIONS).eval()
    float_net.load_state_dict(net.state_dict())
    torch.testing.assert_close(net(obs), float_net(obs.float() / 255))


def test_channels_last_stacks_match_channels_first():
    first = CNNRewardNet(ATARI_OBS, ACTIONS).eval()
    last = CNNRewardNet(gym.spaces.Box(0, 255, (84, 84, 4), np.uint8), ACTIONS).eval()
    last.load_state_dict(first.state_dict())
    obs = torch.randint(0, 256, (2, 3, 4, 84, 84), dtype=torch.uint8)
    torch.testing.assert_close(last(obs.permute(0, 1, 3, 4, 2)), first(obs))
    assert image_layout(gym.spaces.Box(0, 255, (84, 84), np.uint8)) == (False, (1, 84, 84))


def test_action_conditioning_is_optional_and_used():
    net = CNNRewardNet(ATARI_OBS, ACTIONS, use_action=True).eval()
    obs = torch.randint(0, 256, (1, 6, 4, 84, 84), dtype=torch.uint8).expand(6, 6, 4, 84, 84)
    acts = torch.arange(6).repeat(6, 1)  # same frames, every action
    r = net(obs, acts)
    assert r[0].unique().numel() == 6
    with pytest.raises(ValueError, match="pass the actions"):
        net(obs)


def test_rejects_vector_observations():
    with pytest.raises(UnsupportedSpaceError, match="MLPRewardNet"):
        CNNRewardNet(gym.spaces.Box(-1, 1, (11,), np.float32), ACTIONS)


def test_ale_end_to_end_frames_segments_oracle_labels_and_a_decreasing_loss():
    """A few hundred Pong steps -> frame store -> segments -> oracle labels -> the CNN fits them."""
    from agents.loop.control.atari import atari_env_id
    from rewardmodels.image_segments import FrameStore, ImagePairs, cut_segments, record_rollout
    from rewardmodels.teachers import Teacher

    env = gym.make(atari_env_id("ALE/Pong-v5"))
    store = FrameStore((84, 84), stack=4)
    rng = np.random.default_rng(0)
    roll = record_rollout(env, lambda obs: int(rng.integers(6)), 400, store, seed=0)
    env.close()
    assert roll.rews.min() < 0  # the random player concedes points: there is something to prefer
    segs = cut_segments(roll, length=8, n=400, rng=rng)
    ret = segs["true_rew"].sum(1)
    lost, even = np.flatnonzero(ret < 0), np.flatnonzero(ret == 0)
    a, b = rng.choice(lost, 6), rng.choice(even, 6)  # decisive pairs, half of them mirrored
    a[:3], b[:3] = b[:3].copy(), a[:3].copy()
    labels = Teacher(seed=0).label(segs["true_rew"][a], segs["true_rew"][b], segs["mask"][a], segs["mask"][b])
    assert set(labels.tolist()) == {0.0, 1.0}
    pairs = ImagePairs(store, segs["starts"][a], segs["starts"][b], segs["acts"][a], segs["acts"][b],
                       segs["true_rew"][a], segs["true_rew"][b], segs["mask"][a], segs["mask"][b], labels)

    torch.manual_seed(0)
    # dropout off: with 6 pairs and a few steps, the paper's dropout 0.5 (tested above) only adds noise here
    net = CNNRewardNet(env.observation_space, env.action_space, dropout=0.0)
    obs = torch.cat([pairs.obs_a.torch(), pairs.obs_b.torch()])  # (12, 8, 4, 84, 84) uint8 views
    acts = torch.as_tensor(np.concatenate([pairs.acts_a, pairs.acts_b]))
    mask = torch.as_tensor(np.concatenate([pairs.mask_a, pairs.mask_b]))
    y = torch.as_tensor(pairs.labels)

    def loss() -> torch.Tensor:
        ret = segment_returns(net, obs, acts, mask)
        return bradley_terry_loss(ret[:6], ret[6:], y)[0]

    net.eval()
    with torch.no_grad():
        before = float(loss())
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    for _ in range(8):
        opt.zero_grad()
        loss().backward()
        opt.step()
    # eval mode (the agent's reward): batch-norm statistics recomputed on the data, as fit_normalizer does
    net.fit_normalizer(obs, acts, mask)
    net.eval()
    with torch.no_grad():
        after = float(loss())
    assert after < 0.3 * before, (before, after)
    with torch.no_grad():
        r = net.normalized_reward(obs, acts)[mask]
    assert abs(float(r.std()) - 1.0) < 0.05  # normalised to std 1 (the ensemble's reward_scale rescales)
