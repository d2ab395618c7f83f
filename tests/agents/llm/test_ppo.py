import copy
import json

import pytest
import torch

import agents.llm.ppo as ppo_module
from agents.llm.base import NonFiniteLossError, collect_rollout, shaped_scores
from agents.llm.ppo import PPOAgent, PPOConfig, ValueHead, token_rewards
from agents.rundir import RunDir
from rewardmodels.text.lm_reward import LMRewardModel, TokenizerMismatchError
from tests.agents.lm_fixtures import PROMPTS, changed, make_env, score_curve, snapshot
from textenv.kl import KLPenalty
from textenv.testing import make_tiny_lm


def test_token_rewards_are_the_envs_with_the_shaped_score_on_each_rows_last_token():
    env = make_env(num_envs=4, max_new_tokens=4, kl_coef=0.1)
    batch = collect_rollout(env, prompts=PROMPTS[:4], seed=0)
    assert batch.kl_coef == 0.1  # the beta the env rewarded this batch with
    scores = torch.tensor([1.0, -2.0, 0.5, 3.0])  # e.g. clipped scores: they replace the env's
    rewards = token_rewards(batch, scores)
    expected = -0.1 * (batch.old_logprobs - batch.ref_logprobs) * batch.response_mask
    last = batch.lengths - 1
    for i in range(4):
        expected[i, last[i]] += scores[i]
    torch.testing.assert_close(rewards, expected)
    assert float(rewards[~batch.response_mask].abs().sum()) == 0.0


def test_shaped_scores_clip_and_missing_eos_penalty():
    env = make_env(num_envs=4, max_new_tokens=2)
    batch = collect_rollout(env, prompts=PROMPTS[:4], seed=0)._replace(
        scores=torch.tensor([5.0, -5.0, 0.5, 0.5]), ended_with_eos=torch.tensor([True, True, False, True])
    )
    out = shaped_scores(batch, score_clip=1.0, missing_eos_penalty=2.0)
    assert out.tolist() == [1.0, -1.0, -1.5, 0.5]


def test_value_head_starts_at_zero():
    head = ValueHead(8)
    assert float(head(torch.randn(2, 3, 8)).detach().abs().max()) == 0.0


def test_ppo_learns_the_keyword_task_and_changes_weights(tmp_path):
    env = make_env(num_envs=16, max_new_tokens=6)
    before = snapshot(env.policy)
    agent = PPOAgent(env, PPOConfig(learning_rate=3e-3, ppo_epochs=2, num_minibatches=2), tmp_path)
    scores = score_curve(agent, 12)
    assert sum(scores[-3:]) / 3 > sum(scores[:3]) / 3 + 0.3, scores
    assert changed(before, env.policy)
    assert not changed(snapshot(env.ref_model), env.ref_model)  # the reference stays frozen
    rows = RunDir(tmp_path).read_metrics()
    for key in (
        "losses/approx_kl",
        "losses/clipfrac",
        "env/kl_to_ref",
        "env/score_mean",
        "env/score_std",
        "losses/entropy",
        "charts/tokens_per_s",
    ):
        assert key in rows[-1], key
    ckpt = tmp_path / "checkpoints" / "last"
    assert (ckpt / "model.safetensors").exists() and (ckpt / "value_head.pt").exists()
    assert json.loads((ckpt / "trainer_state.json").read_text())["iteration"] == 12


def test_adaptive_kl_is_the_envs_and_ppo_trains_on_the_beta_each_rollout_was_rewarded_with():
    penalty = KLPenalty(0.1, target=0.01, horizon=8)
    env = make_env(num_envs=8, kl_coef=penalty)
    agent = PPOAgent(env, PPOConfig(learning_rate=3e-3))
    betas = []
    agent.learn(3, callback=lambda _agent, _i, m: betas.append(m["train/kl_coef"]))
    assert betas[0] == 0.1 and penalty.value != 0.1 and len(set(betas)) == 3  # moved after every rollout
    assert env.engine.kl_coef == penalty.value  # one object: nothing was written back into the env


def test_nan_loss_stops_training_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    env = make_env(num_envs=8)
    agent = PPOAgent(env, PPOConfig(learning_rate=1e-3), tmp_path)
    agent.learn(1)
    ckpt = tmp_path / "checkpoints" / "last" / "model.safetensors"
    saved = ckpt.read_bytes()
    weights = snapshot(env.policy)

    def nan_loss(*args, **kwargs):
        loss, metrics = real(*args, **kwargs)
        return loss * float("nan"), metrics

    real = ppo_module.ppo_policy_loss
    monkeypatch.setattr(ppo_module, "ppo_policy_loss", nan_loss)
    with pytest.raises(NonFiniteLossError, match="the PPO loss is nan.*last good checkpoint.*kept"):
        agent.learn(2)
    assert ckpt.read_bytes() == saved
    assert not changed(weights, env.policy)  # no update was applied


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clip_range": 0.0}, "clip_range must be > 0"),
        ({"ppo_epochs": 0}, "ppo_epochs must be >= 1"),
        ({"missing_eos_penalty": -1.0}, "missing_eos_penalty"),
        ({"value_init": "random"}, "value_init must be one of"),
        ({"lam": 1.5}, "lam"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PPOConfig(**kwargs)


def test_minibatches_must_divide_the_env_rows():
    with pytest.raises(ValueError, match="not divisible by num_minibatches"):
        PPOAgent(make_env(num_envs=6), PPOConfig(num_minibatches=4))


def test_reward_model_value_init_needs_a_reward_model():
    with pytest.raises(ValueError, match="value_init='reward_model' needs reward_model="):
        PPOAgent(make_env(num_envs=2), PPOConfig(value_init="reward_model"))


def test_reward_model_critic_starts_from_the_reward_models_scores(tmp_path):
    env = make_env(num_envs=4)
    rm = LMRewardModel(copy.deepcopy(env.ref_model), env.tokenizer)
    agent = PPOAgent(env, PPOConfig(value_init="reward_model", learning_rate=1e-3), reward_model=rm)
    batch = agent.collect()
    ids = torch.cat([batch.query_ids, batch.response_ids], 1)
    attention = torch.cat([batch.query_mask, batch.response_mask], 1).long()
    with torch.no_grad():
        values = agent.critic(ids, attention)  # (B, L)
        last = (attention * torch.arange(ids.shape[1])).argmax(1)
        torch.testing.assert_close(values[torch.arange(4), last], rm.score_ids(ids, attention), atol=1e-5, rtol=0)
    head = snapshot(agent.critic)
    agent.learn(1)
    assert changed(head, agent.critic)
    assert (agent.save(tmp_path / "ckpt") / "critic.pt").exists()


def test_reward_model_with_another_tokenizer_is_refused():
    env = make_env(num_envs=2)
    other_model, other_tokenizer = make_tiny_lm(words=("x", "y", "z"))
    rm = LMRewardModel(other_model, other_tokenizer)
    with pytest.raises(TokenizerMismatchError, match="tokenizers differ"):
        PPOAgent(env, PPOConfig(value_init="reward_model"), reward_model=rm)
