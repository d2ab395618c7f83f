"""Unmodified Stable-Baselines3 (PPO, A2C) training a causal LM on TextGen-v0 through CausalLMPolicy."""

import gymnasium as gym
import pytest
import torch
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.env_checker import check_env

import textenv  # noqa: F401  (registers TextGen-v0)
from agents.sb3.text_policy import (
    CausalLMPolicy,
    ObservationSpaceError,
    SyncTextEnvCallback,
    VocabularyMismatchError,
    make_sb3_text_model,
    mean_episode_score,
)
from textenv.rewards import TokenCountReward
from textenv.testing import make_tiny_lm

PROMPTS = ["the movie was", "i loved it", "this phone is", "the book was"]


def make_env(seed=0, max_new_tokens=4, kl_coef=0.0, lm=None):
    model, tok = lm or make_tiny_lm(seed=seed)
    return gym.make(
        "TextGen-v0",
        model=model,
        tokenizer=tok,
        prompts=PROMPTS,
        reward_fn=TokenCountReward("good", tok),
        kl_coef=kl_coef,
        max_new_tokens=max_new_tokens,
        max_prompt_tokens=4,
    )


def params_vector(module):
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def test_sb3_check_env_passes_on_the_training_configuration():
    check_env(make_env(kl_coef=0.05), warn=True)


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_learn_changes_the_lm_weights_and_shares_them_with_the_env(algo):
    env = make_env(kl_coef=0.05, max_new_tokens=8)
    kwargs = {"n_steps": 16, "seed": 0, "ent_coef": 0.01}  # the entropy bonus guarantees a gradient at step one
    if algo == "ppo":
        kwargs.update(batch_size=16, n_epochs=2)
    model = make_sb3_text_model(algo, env, **kwargs)
    assert model.policy.lm is env.unwrapped.policy  # the env's KL uses the acting weights
    before = params_vector(model.policy.lm)
    model.learn(32, callback=SyncTextEnvCallback())
    after = params_vector(env.unwrapped.policy)
    assert not torch.equal(before, after)


def test_policy_log_probs_match_the_env_policy_log_probs():
    """The actor SB3 samples from is the distribution the env's KL term scores (full context vs KV cache)."""
    env = make_env(kl_coef=0.1)
    model = make_sb3_text_model("ppo", env, n_steps=8, batch_size=8)
    obs, _ = env.reset(seed=3)
    for _ in range(3):
        obs_t, _ = model.policy.obs_to_tensor(obs)
        action, _, logp = model.policy(obs_t)
        obs, _, term, trunc, info = env.step(int(action))
        assert info["policy_logprob"] == pytest.approx(float(logp.detach()), abs=1e-4)
        if term or trunc:
            break


def test_sb3_ppo_learns_a_trivial_text_task():
    """Reward = number of 'good' tokens in a 3-token response: random play scores ~0.08, PPO must exceed 1.2."""
    torch.manual_seed(0)
    env = make_env(max_new_tokens=3)
    model = make_sb3_text_model(
        "ppo", env, n_steps=96, batch_size=48, n_epochs=4, learning_rate=5e-3, gamma=1.0, seed=0, ent_coef=0.0
    )
    reward_fn = env.unwrapped.engine.reward_fn

    assert reward_fn is not None
    before = mean_episode_score(model, env, 32, seed=1000)
    model.learn(1_152, callback=SyncTextEnvCallback())
    after = mean_episode_score(model, env, 32, seed=1000)
    assert before < 0.5
    assert after > 1.2, (before, after)


def test_saved_model_reloads_and_predicts_the_same_actions(tmp_path):
    env = make_env()
    model = make_sb3_text_model("a2c", env, n_steps=8, seed=0)
    model.learn(16)
    model.save(tmp_path / "a2c_text")
    loaded = A2C.load(tmp_path / "a2c_text", env=env)
    obs, _ = env.reset(seed=0)
    for _ in range(3):
        a1, _ = model.predict(obs, deterministic=True)
        a2, _ = loaded.predict(obs, deterministic=True)
        assert int(a1) == int(a2)
        obs, *_ = env.step(int(a1))
    for p, q in zip(model.policy.parameters(), loaded.policy.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_policy_for_one_vocabulary_on_an_env_with_another_is_refused():
    env = make_env()
    other_lm, _ = make_tiny_lm(words=["just", "three", "words"])
    with pytest.raises(VocabularyMismatchError, match="Discrete"):
        PPO(CausalLMPolicy, env, policy_kwargs={"lm": other_lm})


def test_an_observation_space_the_policy_cannot_read_is_refused():
    lm, _ = make_tiny_lm()
    with pytest.raises(ObservationSpaceError, match="input_ids"):
        PPO(CausalLMPolicy, "CartPole-v1", policy_kwargs={"lm": lm})


def test_unknown_algorithm_and_mismatched_temperature_are_refused():
    env = make_env()
    with pytest.raises(ValueError, match="unknown SB3 algorithm"):
        make_sb3_text_model("dqn", env)
    with pytest.raises(ValueError, match="temperature"):
        make_sb3_text_model("ppo", env, temperature=0.5)
