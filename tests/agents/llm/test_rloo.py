import pytest
import torch

import agents.llm.rloo as rloo_module
from agents.llm.base import NonFiniteLossError
from agents.llm.losses import GroupSizeError
from agents.llm.rloo import RLOOAgent, RLOOConfig
from tests.agents.lm_fixtures import changed, make_env, record_minibatch_rows, score_curve, snapshot


def test_group_size_below_two_says_how_to_fix():
    with pytest.raises(GroupSizeError, match="group_size >= 2"):
        RLOOConfig(group_size=1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clip_range": 0.0}, "clip_range must be > 0"),
        ({"ppo_epochs": 0}, "ppo_epochs must be >= 1"),
        ({"num_minibatches": 3}, "must divide"),
        ({"missing_eos_penalty": -0.5}, "missing_eos_penalty"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RLOOConfig(**{"group_size": 2, "prompts_per_step": 2, **kwargs})


def test_rloo_learns_the_keyword_task_and_changes_weights():
    env = make_env(num_envs=16, kl_coef=0.01)  # the KL penalty is the env's
    before = snapshot(env.policy)
    agent = RLOOAgent(env, RLOOConfig(learning_rate=1e-2, group_size=4, prompts_per_step=4))
    scores = score_curve(agent, 20)
    assert sum(scores[-3:]) / 3 > sum(scores[:3]) / 3 + 0.3, scores
    assert changed(before, env.policy)
    assert "train/reward_mean" in agent.last_metrics and "losses/approx_kl" in agent.last_metrics


def test_advantages_match_leave_one_out_values_worked_by_hand_and_reach_the_loss(monkeypatch):
    env = make_env(num_envs=8, kl_coef=0.5)
    shape = {"group_size": 4, "prompts_per_step": 2, "ppo_epochs": 2, "num_minibatches": 2}
    agent = RLOOAgent(env, RLOOConfig(learning_rate=1e-3, missing_eos_penalty=1.0, **shape))
    batch = agent.collect()
    kl = torch.tensor([0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    ref = batch.old_logprobs.clone()
    ref[:, 0] -= kl  # a sequence KL of kl[i], all of it on the first token (every row has one)
    batch = batch._replace(
        scores=torch.tensor([1.0, 0.0, 0.0, 3.0, 2.0, 2.0, 2.0, 2.0]),
        ended_with_eos=torch.tensor([True, False, True, True, True, True, True, True]),
        ref_logprobs=ref,
    )
    # The env's per-token rewards for this batch, as TextGen-v0 defines them: -0.5 KL per token, the score at the end.
    last = (batch.lengths - 1)[:, None]
    batch = batch._replace(rewards=(-0.5 * batch.kl).scatter_add(1, last, batch.scores[:, None]) * batch.response_mask)
    # Group 0: scores 1, 0, 0, 3, the second truncated (-1): 1, -1, 0, 3; minus 0.5 KL: R = 1, -2, 0, 3.
    #   Leave-one-out baselines (others' mean): 1/3, 4/3, 2/3, -1/3 -> A = 2/3, -10/3, -2/3, 10/3.
    # Group 1: R = 2, 2, 2 - 0.5, 2; baselines 11/6, 11/6, 2, 11/6 -> A = 1/6, 1/6, -1/2, 1/6.
    rewards, advantages = agent.sequence_advantages(batch)
    torch.testing.assert_close(rewards, torch.tensor([1.0, -2.0, 0.0, 3.0, 2.0, 2.0, 1.5, 2.0]))
    hand = torch.tensor([2 / 3, -10 / 3, -2 / 3, 10 / 3, 1 / 6, 1 / 6, -1 / 2, 1 / 6])
    torch.testing.assert_close(advantages, hand)

    # Each minibatch's loss gets its rows' advantages on each of their tokens (REINFORCE on the whole sequence).
    seen_rows = record_minibatch_rows(agent, monkeypatch)
    seen_adv = []
    real_loss = rloo_module.ppo_policy_loss

    def spy_loss(logprobs, old_logprobs, token_adv, mask, clip_eps):
        seen_adv.append((token_adv, mask))
        return real_loss(logprobs, old_logprobs, token_adv, mask, clip_eps=clip_eps)

    monkeypatch.setattr(rloo_module, "ppo_policy_loss", spy_loss)
    metrics = agent.train_on(batch)
    assert len(seen_rows) == 4  # 2 epochs x 2 minibatches
    for rows, (token_adv, mask) in zip(seen_rows, seen_adv, strict=True):
        torch.testing.assert_close(token_adv, hand[rows, None] * mask)
    assert metrics["train/reward_mean"] == pytest.approx(float(rewards.mean()))


def test_nan_loss_stops_training(monkeypatch):
    env = make_env(num_envs=4)
    agent = RLOOAgent(env, RLOOConfig(group_size=2, prompts_per_step=2))
    weights = snapshot(env.policy)
    monkeypatch.setattr(rloo_module, "rloo_advantages", lambda r, g: torch.full_like(r, float("nan")))
    with pytest.raises(NonFiniteLossError, match="RLOO loss is nan"):
        agent.learn(1)
    assert not changed(weights, env.policy)
