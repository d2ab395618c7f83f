"""textenv.kl: the KL penalty of TextGen-v0's reward, fixed and adaptive (Ziegler et al. 2019), against hand values,
and the env asking it at every step and telling it every finished batch of episodes."""

import math

import pytest
import torch

from tests.agents.lm_fixtures import make_env
from textenv.kl import KLPenalty


def test_adaptive_penalty_hand_values():
    kl = KLPenalty(0.1, target=6.0, horizon=10000)
    kl.observe(9.0, n_episodes=100)  # error = clip(9/6 - 1, +-0.2) = 0.2 -> 0.1 * (1 + 0.2 * 100 / 10000)
    assert kl.value == pytest.approx(0.1002)
    kl.observe(float(torch.tensor(6.6)), n_episodes=1000)  # error 0.1 -> * 1.01
    assert kl.value == pytest.approx(0.1002 * 1.01)
    kl.observe(0.0, n_episodes=1000)  # error -1 clipped to -0.2 -> * 0.98
    assert kl.value == pytest.approx(0.1002 * 1.01 * 0.98)
    with pytest.raises(ValueError, match="observed KL"):
        kl.observe(float("nan"), 10)
    with pytest.raises(ValueError, match="kl_target"):
        KLPenalty(0.1, target=0.0)
    with pytest.raises(ValueError, match="kl_coef > 0"):
        KLPenalty(0.0, target=6.0)


def test_fixed_penalty_never_moves_and_refuses_bad_values():
    kl = KLPenalty(0.05)
    kl.observe(100.0, 10)
    assert kl.value == 0.05 and not kl.adaptive and kl.active
    assert not KLPenalty(0.0).active
    for bad in (-1.0, math.nan, math.inf, "0.1", True):
        with pytest.raises(ValueError, match="kl_coef"):
            KLPenalty(bad)
    assert KLPenalty.of(0.2).value == 0.2 and KLPenalty.of(kl) is kl


def test_state_round_trips():
    kl = KLPenalty(0.1, target=2.0, horizon=50)
    kl.observe(5.0, 10)
    again = KLPenalty(1.0)
    again.load_state_dict(kl.state_dict())
    assert (again.value, again.target, again.horizon) == (kl.value, kl.target, kl.horizon)


def test_the_env_rewards_with_the_current_beta_then_moves_it_after_each_batch():
    """play(): every step's reward uses the beta of the batch (-beta * (log pi - log pi_ref)); after the batch the
    adaptive penalty moves by the controller's formula on the batch's mean sequence KL."""
    penalty = KLPenalty(0.5, target=1e-6, horizon=4)  # any KL > 0 is above target: beta grows by 1 + 0.2 * 8 / 4
    env = make_env(num_envs=8, kl_coef=penalty)
    assert env.engine.kl is penalty and env.engine.kl_coef == 0.5
    env.reset(seed=0)
    ep = env.play(torch.Generator().manual_seed(0))
    kl_tokens = (ep.policy_logprob - ep.ref_logprob) * ep.mask
    last = (ep.mask.sum(1) - 1)[:, None]
    expected = (-0.5 * kl_tokens).scatter_add(1, last, torch.as_tensor(ep.scores, dtype=torch.float32)[:, None])
    torch.testing.assert_close(ep.reward * ep.mask, expected * ep.mask)
    mean_kl = float(kl_tokens.sum(1).double().mean())
    error = min(max(mean_kl / 1e-6 - 1.0, -0.2), 0.2)
    assert penalty.value == pytest.approx(0.5 * (1 + error * 8 / 4))


def test_step_by_step_the_penalty_follows_the_episodes_that_end():
    penalty = KLPenalty(0.5, target=1.0, horizon=4)  # the untrained policy is its reference: KL 0, error -0.2
    env = make_env(num_envs=2, max_new_tokens=3, kl_coef=penalty)
    env.reset(seed=0)
    ended = 0
    for _ in range(3):  # every row is truncated at the third token (or ends earlier with EOS)
        assert penalty.value == pytest.approx(0.5 * (1 - 0.2 / 4) ** ended)  # moved only by episodes that ended
        _, _, terminated, truncated, _ = env.step(torch.argmax(env.next_token_logits(), -1))
        ended += int((terminated | truncated).any())
    assert ended >= 1 and penalty.value < 0.5
