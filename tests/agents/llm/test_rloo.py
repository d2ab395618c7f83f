import pytest
import torch

import agents.llm.rloo as rloo_module
from agents.llm.base import NonFiniteLossError
from agents.llm.losses import GroupSizeError
from agents.llm.rloo import RLOOAgent, RLOOConfig
from tests.agents.lm_fixtures import changed, make_env, score_curve, snapshot


def test_group_size_below_two_says_how_to_fix():
    with pytest.raises(GroupSizeError, match="group_size >= 2"):
        RLOOConfig(group_size=1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kl_coef": -1.0}, "kl_coef must be >= 0"),
        ({"ppo_epochs": 0}, "ppo_epochs must be >= 1"),
        ({"num_minibatches": 3}, "must divide"),
        ({"missing_eos_penalty": -0.5}, "missing_eos_penalty"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RLOOConfig(**{"group_size": 2, "prompts_per_step": 2, **kwargs})


def test_rloo_learns_the_keyword_task_and_changes_weights():
    env = make_env(num_envs=16)
    before = snapshot(env.policy)
    agent = RLOOAgent(env, RLOOConfig(learning_rate=1e-2, group_size=4, prompts_per_step=4, kl_coef=0.01))
    scores = score_curve(agent, 20)
    assert sum(scores[-3:]) / 3 > sum(scores[:3]) / 3 + 0.3, scores
    assert changed(before, env.policy)
    assert "train/reward_mean" in agent.last_metrics and "losses/approx_kl" in agent.last_metrics


def test_leave_one_out_advantages_sum_to_zero_per_group(monkeypatch):
    seen = {}
    real = rloo_module.rloo_advantages

    def spy(rewards, group_size):
        seen["adv"] = real(rewards, group_size)
        return seen["adv"]

    monkeypatch.setattr(rloo_module, "rloo_advantages", spy)
    env = make_env(num_envs=8)
    RLOOAgent(env, RLOOConfig(learning_rate=1e-3, group_size=4, prompts_per_step=2, ppo_epochs=2)).learn(1)
    torch.testing.assert_close(seen["adv"].view(2, 4).sum(1), torch.zeros(2), atol=1e-5, rtol=0)


def test_nan_loss_stops_training(monkeypatch):
    env = make_env(num_envs=4)
    agent = RLOOAgent(env, RLOOConfig(group_size=2, prompts_per_step=2))
    weights = snapshot(env.policy)
    monkeypatch.setattr(rloo_module, "rloo_advantages", lambda r, g: torch.full_like(r, float("nan")))
    with pytest.raises(NonFiniteLossError, match="RLOO loss is nan"):
        agent.learn(1)
    assert not changed(weights, env.policy)
