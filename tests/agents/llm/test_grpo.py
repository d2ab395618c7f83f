import pytest
import torch

from agents.llm.base import collect_rollout
from agents.llm.grpo import GRPOAgent, GRPOConfig
from agents.llm.losses import GroupSizeError
from tests.agents.lm_fixtures import PROMPTS, changed, make_env, score_curve, snapshot


def test_group_size_below_two_says_how_to_fix():
    with pytest.raises(GroupSizeError, match="group_size >= 2"):
        GRPOConfig(group_size=1)


def test_env_rows_must_match_prompts_times_group_size():
    with pytest.raises(ValueError, match="build the env with num_envs=8"):
        GRPOAgent(make_env(num_envs=6), GRPOConfig(group_size=4, prompts_per_step=2))


def test_env_without_reference_model_gets_a_frozen_copy_of_the_initial_policy():
    env = make_env(num_envs=4, kl_coef=0.0)  # the env skips its per-token reference forward
    assert env.ref_model is None
    agent = GRPOAgent(env, GRPOConfig(learning_rate=1e-2, group_size=2, prompts_per_step=2, kl_coef=0.04))
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


@pytest.mark.parametrize("aggregation", ["sequence-mean", "dr-grpo"])
def test_other_aggregations_and_several_updates_run(aggregation):
    env = make_env(num_envs=8)
    cfg = GRPOConfig(
        learning_rate=1e-3,
        group_size=4,
        prompts_per_step=2,
        loss_aggregation=aggregation,
        num_updates=2,
        num_minibatches=2,
        scale_rewards=False,
    )
    agent = GRPOAgent(env, cfg).learn(2)
    assert agent.iteration == 2
    assert torch.isfinite(torch.tensor(list(agent.last_metrics.values()))).all()


def test_rollout_prompts_option_is_used_per_row():
    env = make_env(num_envs=4)
    rows = [PROMPTS[5], PROMPTS[5], PROMPTS[1], PROMPTS[1]]
    assert collect_rollout(env, prompts=rows).prompts == rows


def test_kl_ratio_reaches_the_loss():
    """Same batch, a reference unlike the policy: the ratio-weighted k3 term gives a different update."""
    from textenv.testing import make_tiny_lm

    weights = []
    for kl_ratio in (False, True):
        env = make_env(num_envs=8, kl_coef=0.0)
        cfg = GRPOConfig(learning_rate=1e-2, group_size=4, prompts_per_step=2, kl_coef=0.5, kl_ratio=kl_ratio)
        agent = GRPOAgent(env, cfg, ref_model=make_tiny_lm(seed=7)[0].requires_grad_(False))
        agent.learn(1)
        weights.append(snapshot(env.policy))
    assert any(not torch.allclose(weights[0][k], weights[1][k]) for k in weights[0])
