import pytest
import torch

import agents.llm.grpo as grpo_module
from agents.llm.base import collect_rollout
from agents.llm.grpo import AGGREGATIONS, GRPOAgent, GRPOConfig
from agents.llm.losses import GroupSizeError
from tests.agents.lm_fixtures import (
    PROMPTS,
    changed,
    make_env,
    naive_grpo_loss,
    record_minibatch_rows,
    score_curve,
    snapshot,
)
from textenv.testing import make_tiny_lm


def test_group_size_below_two_says_how_to_fix():
    with pytest.raises(GroupSizeError, match="group_size >= 2"):
        GRPOConfig(group_size=1)


def test_env_rows_must_match_prompts_times_group_size():
    with pytest.raises(ValueError, match="build the env with num_envs=8"):
        GRPOAgent(make_env(num_envs=6), GRPOConfig(group_size=4, prompts_per_step=2))


def test_env_without_reference_model_gets_a_frozen_copy_of_the_initial_policy():
    env = make_env(num_envs=4, kl_coef=0.0)  # the env skips its per-token reference forward
    assert env.ref_model is None
    agent = GRPOAgent(env, GRPOConfig(learning_rate=1e-2, group_size=2, prompts_per_step=2, beta=0.04))
    assert agent.ref_model is not env.policy and not any(p.requires_grad for p in agent.ref_model.parameters())
    agent.learn(2)
    batch = agent.collect()
    assert float(batch.kl.abs().sum()) > 0  # the policy moved away from its frozen copy


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"loss_aggregation": "mean"}, "loss_aggregation must be one of"),
        ({"num_minibatches": 3}, "must divide"),
        ({"clip_range": 0.0}, "clip_range must be > 0"),
        ({"prompts_per_step": 0}, "prompts_per_step must be >= 1"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GRPOConfig(**{"group_size": 4, "prompts_per_step": 2, **kwargs})


def test_groups_share_one_prompt():
    env = make_env(num_envs=8)
    agent = GRPOAgent(env, GRPOConfig(group_size=4, prompts_per_step=2))
    batch = agent.collect()
    assert len(set(batch.prompts[:4])) == 1 and len(set(batch.prompts[4:])) == 1
    assert set(batch.prompts) <= set(PROMPTS)


def test_grpo_learns_the_keyword_task_and_changes_weights(tmp_path):
    env = make_env(num_envs=16)
    before = snapshot(env.policy)
    agent = GRPOAgent(env, GRPOConfig(learning_rate=1e-2, group_size=4, prompts_per_step=4), tmp_path)
    scores = score_curve(agent, 20)
    assert sum(scores[-3:]) / 3 > sum(scores[:3]) / 3 + 0.3, scores
    assert changed(before, env.policy)
    metrics = agent.last_metrics
    for key in ("losses/kl", "losses/clipfrac", "losses/approx_kl", "losses/entropy", "env/kl_to_ref"):
        assert key in metrics
    assert (tmp_path / "checkpoints" / "last" / "model.safetensors").exists()


def word_count(prompts, responses):
    return [len(r.split()) / 3 for r in responses]  # scores that vary with the length of each response


@pytest.mark.parametrize("aggregation", ["sequence-mean", "dr-grpo"])
def test_other_aggregations_give_their_loss_by_hand_and_update_the_weights(aggregation, monkeypatch):
    env = make_env(num_envs=8, kl_coef=0.0, reward_fn=word_count)
    with torch.no_grad():  # make EOS likely, so that response lengths differ and the aggregations with them
        env.policy.transformer.wte.weight[env.tokenizer.eos_token_id] *= 20.0
    cfg = GRPOConfig(
        learning_rate=1e-3,
        group_size=4,
        prompts_per_step=2,
        beta=0.1,
        loss_aggregation=aggregation,
        num_updates=2,
        num_minibatches=2,
        scale_rewards=False,
    )
    agent = GRPOAgent(env, cfg, ref_model=make_tiny_lm(seed=7)[0].requires_grad_(False))
    batch = agent.collect()
    scores = batch.scores.tolist()
    means = [sum(scores[g * 4 : g * 4 + 4]) / 4 for g in range(2)]
    # Dr. GRPO: score - group mean, unscaled
    advantages = torch.tensor([s - means[i // 4] for i, s in enumerate(scores)])
    seen_rows = record_minibatch_rows(agent, monkeypatch)
    calls = []
    real_loss = grpo_module.grpo_loss

    def spy_loss(logp, old, ref, adv, mask, **kwargs):
        loss, metrics = real_loss(logp, old, ref, adv, mask, **kwargs)
        calls.append(([x.detach() for x in (logp, old, ref, adv, mask)], float(loss.detach())))
        return loss, metrics

    monkeypatch.setattr(grpo_module, "grpo_loss", spy_loss)
    before = snapshot(env.policy)
    metrics = agent.train_on(batch)
    assert len(calls) == 4  # 2 updates x 2 minibatches
    told_apart = []
    for rows, ((logp, old, ref, adv, mask), loss) in zip(seen_rows, calls, strict=True):
        torch.testing.assert_close(adv, advantages[rows])
        torch.testing.assert_close(old, batch.old_logprobs[rows])
        torch.testing.assert_close(ref, batch.ref_logprobs[rows])
        inputs = [x.double().tolist() for x in (logp, old, ref, adv, mask)]
        # max_tokens is the env's max_new_tokens (6), not the batch's longest response
        by_hand = {a: naive_grpo_loss(*inputs, 0.2, 0.1, a, 6) for a in AGGREGATIONS}
        assert loss == pytest.approx(by_hand[aggregation], rel=1e-5, abs=1e-7)
        told_apart.append(all(abs(v - loss) > 1e-4 for a, v in by_hand.items() if a != aggregation))
    assert any(told_apart)  # some minibatch mixes lengths: there the other aggregations give other losses
    assert metrics["losses/loss"] == pytest.approx(sum(loss for _, loss in calls) / 4, rel=1e-6)
    assert changed(before, env.policy)


def test_rollout_prompts_option_is_used_per_row():
    env = make_env(num_envs=4)
    rows = [PROMPTS[5], PROMPTS[5], PROMPTS[1], PROMPTS[1]]
    assert collect_rollout(env, prompts=rows).prompts == rows


def test_kl_ratio_reaches_the_loss():
    """Same batch, a reference unlike the policy: the ratio-weighted k3 term gives a different update."""
    weights = []
    for kl_ratio in (False, True):
        env = make_env(num_envs=8, kl_coef=0.0)
        cfg = GRPOConfig(learning_rate=1e-2, group_size=4, prompts_per_step=2, beta=0.5, kl_ratio=kl_ratio)
        agent = GRPOAgent(env, cfg, ref_model=make_tiny_lm(seed=7)[0].requires_grad_(False))
        agent.learn(1)
        weights.append(snapshot(env.policy))
    assert any(not torch.allclose(weights[0][k], weights[1][k]) for k in weights[0])
