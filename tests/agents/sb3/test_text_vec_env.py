"""TextGenSB3VecEnv: SB3's VecEnv over one batched TextGenVectorEnv gives what SB3's own DummyVecEnv over single
TextGenEnvs gives (observations, rewards, dones, infos with terminal_observation and TimeLimit.truncated), and
unmodified SB3 PPO trains the LM through it."""

import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import DummyVecEnv

from agents.sb3.text_policy import SyncTextEnvCallback, make_sb3_text_model
from agents.sb3.text_vec_env import TextGenSB3VecEnv
from textenv import TextGenEnv, TextGenVectorEnv
from textenv.rewards import TokenCountReward
from textenv.testing import make_tiny_lm

N = 3


def settings(lm, prompts=("the movie was",)):
    model, tok = lm
    return dict(model=model, tokenizer=tok, prompts=list(prompts), reward_fn=TokenCountReward("good", tok),
                ref_model=make_tiny_lm(seed=7)[0], kl_coef=0.1, max_new_tokens=4, max_prompt_tokens=5)


def test_it_steps_as_a_dummy_vec_env_of_single_envs():
    """One prompt, so that the prompt draws (one generator here, one per env there) agree."""
    lm = make_tiny_lm(seed=1)
    ours = TextGenSB3VecEnv(TextGenVectorEnv(N, autoreset_mode="SameStep", **settings(lm)))
    theirs = DummyVecEnv([lambda: TextGenEnv(**settings(lm))] * N)
    obs_a, obs_b = ours.reset(), theirs.reset()
    assert all(np.array_equal(obs_a[k], obs_b[k]) for k in obs_b)
    rng, eos, ended = np.random.default_rng(0), lm[1].eos_token_id, 0
    for step in range(14):
        actions = rng.integers(3, 39, size=N)
        actions[rng.random(N) < 0.2] = eos
        (obs_a, rew_a, done_a, infos_a), (obs_b, rew_b, done_b, infos_b) = ours.step(actions), theirs.step(actions)
        assert all(np.array_equal(obs_a[k], obs_b[k]) for k in obs_b), step
        assert rew_a.dtype == rew_b.dtype == np.float32 and np.allclose(rew_a, rew_b, atol=1e-5), step
        assert np.array_equal(done_a, done_b), step
        for a, b in zip(infos_a, infos_b, strict=True):
            assert a.keys() == b.keys(), (step, a.keys(), b.keys())
            for key, want in b.items():
                if key == "terminal_observation":
                    assert all(np.array_equal(a[key][k], want[k]) for k in want)
                else:
                    assert a[key] == pytest.approx(want, abs=1e-5), (step, key)
        ended += int(done_a.sum())
    assert ended >= 6


def test_it_refuses_what_sb3_cannot_step():
    lm = make_tiny_lm()
    with pytest.raises(ValueError, match="SameStep"):
        TextGenSB3VecEnv(TextGenVectorEnv(2, **settings(lm)))  # NEXT_STEP: SB3 expects the new episode at once
    with pytest.raises(TypeError, match="wraps a TextGenVectorEnv"):
        TextGenSB3VecEnv(TextGenEnv(**settings(lm)))


def test_sb3_ppo_trains_the_shared_lm_through_it():
    lm = make_tiny_lm(seed=2)
    venv = TextGenSB3VecEnv(TextGenVectorEnv(
        N, autoreset_mode="SameStep", **settings(lm, ["the movie was", "i", "this phone is"])))
    model = make_sb3_text_model("ppo", venv, n_steps=8, batch_size=12, n_epochs=2, seed=0, ent_coef=0.01)
    assert model.policy.lm is venv.policy is lm[0]  # the env's KL uses the acting weights
    before = torch.cat([p.detach().flatten().clone() for p in lm[0].parameters()])
    model.learn(48, callback=SyncTextEnvCallback())
    assert not torch.equal(before, torch.cat([p.detach().flatten() for p in lm[0].parameters()]))
    assert model.num_timesteps == 48
