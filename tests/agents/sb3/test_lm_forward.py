"""CausalLMPolicy's KV cache and shared-prefix forward (agents.sb3.lm_forward) against the plain forward, on the
observations SB3 really sees: several TextGen envs in a DummyVecEnv over whole episodes (resets included), a weight
update in the middle, SB3's rollout-buffer minibatches, gradients, and an LM without a hand-written forward."""

import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import DummyVecEnv

import textenv  # noqa: F401  (registers TextGen-v0)
from agents.sb3.lm_forward import RolloutCache, full_forward, shared_prefix_forward
from agents.sb3.text_policy import SyncTextEnvCallback, make_sb3_text_model
from textenv import TextGenEnv
from textenv.decoders import fast_decoder
from textenv.rewards import TokenCountReward
from textenv.testing import make_tiny_lm

PROMPTS = ["the movie was", "i", "this phone is really", "the book was"]  # different lengths: different padding
ATOL = 1e-5


def make_venv(lm, n_envs=3, max_new_tokens=5):
    model, tok = lm

    def make():
        return TextGenEnv(model=model, tokenizer=tok, prompts=PROMPTS, reward_fn=TokenCountReward("good", tok),
                          kl_coef=0.05, max_new_tokens=max_new_tokens, max_prompt_tokens=5)

    venv = DummyVecEnv([make] * n_envs)
    venv.seed(0)
    return venv


def as_tensors(obs):
    return torch.as_tensor(obs["input_ids"]).long(), torch.as_tensor(obs["attention_mask"]).long()


def hooked(lm):
    """The same LM behind a forward hook that changes nothing: no hand-written forward, the model's own runs."""
    model, tok = lm
    model.transformer.h[0].register_forward_hook(lambda module, args, output: None)
    assert fast_decoder(model) is None
    return model, tok


@pytest.mark.parametrize("path", ["decoder", "model"])
def test_rollout_cache_equals_the_plain_forward_over_episodes_with_resets_and_a_weight_update(path):
    lm = make_tiny_lm(seed=1) if path == "decoder" else hooked(make_tiny_lm(seed=1))
    model = lm[0].eval()
    venv, cache = make_venv(lm), RolloutCache()
    gen = torch.Generator().manual_seed(0)
    obs, done_rows = venv.reset(), 0
    for step in range(40):
        ids, mask = as_tensors(obs)
        cached, plain = cache.forward(model, ids, mask), full_forward(model, ids, mask)
        for got, want in zip(cached, plain, strict=True):  # logits (B, V), hidden (B, E)
            torch.testing.assert_close(got, want, atol=ATOL, rtol=0, msg=f"step {step}")
        actions = torch.multinomial(torch.softmax(plain[0], -1), 1, generator=gen).flatten()
        obs, _, dones, _ = venv.step(actions.numpy())
        done_rows += int(dones.sum())
        if step == 20:  # an optimizer step between rollouts: the cache must not serve the old weights
            with torch.no_grad():
                next(model.parameters()).add_(0.05)
    assert done_rows >= 15  # episodes of <= 5 tokens: every row was reset several times
    assert cache.stats["decoded"] > 2 * cache.stats["prefilled"]  # and most rows were served from the cache


def test_policy_values_and_log_probs_with_and_without_the_cache_agree_over_a_rollout():
    """What SB3's collect_rollouts takes from policy.forward: values and log-probs of the sampled actions."""
    lm = make_tiny_lm(seed=2)
    venv = make_venv(lm)
    with_cache = make_sb3_text_model("ppo", venv, n_steps=8, batch_size=8)
    plain = make_sb3_text_model("ppo", venv, n_steps=8, batch_size=8, policy_kwargs={"kv_cache": False})
    plain.policy.value_net.load_state_dict(with_cache.policy.value_net.state_dict())
    with torch.no_grad():  # a value head that is not zero, so that the values compare something
        with_cache.policy.value_net.weight.normal_()
        plain.policy.value_net.weight.copy_(with_cache.policy.value_net.weight)
    for policy in (with_cache.policy, plain.policy):
        policy.set_training_mode(False)
    obs = venv.reset()
    for step in range(25):
        obs_t, _ = with_cache.policy.obs_to_tensor(obs)
        with torch.no_grad():
            actions, values, logp = with_cache.policy(obs_t)
            values_p, logp_p, entropy_p = plain.policy.evaluate_actions(obs_t, actions)
        torch.testing.assert_close(values, values_p, atol=ATOL, rtol=0, msg=f"step {step}")
        torch.testing.assert_close(logp, logp_p, atol=ATOL, rtol=0, msg=f"step {step}")
        obs, *_ = venv.step(actions.numpy())
    assert with_cache.policy.features_extractor.rollout_cache.stats["decoded"] > 0


@pytest.mark.parametrize("path", ["decoder", "model"])
def test_shared_prefix_forward_equals_the_plain_forward_and_its_gradients(path):
    """SB3's training minibatches: states drawn at random from a rollout (prefixes of each other, duplicates)."""
    lm = make_tiny_lm(seed=3) if path == "decoder" else hooked(make_tiny_lm(seed=3))
    model = lm[0].eval()  # dropout off: the shared forward is the plain one otherwise
    venv = make_venv(lm, max_new_tokens=6)
    states, obs = [], venv.reset()
    for _ in range(16):
        states.append(as_tensors(obs))
        obs, *_ = venv.step(np.random.default_rng(len(states)).integers(3, 39, size=3))
    ids = torch.cat([s[0] for s in states])
    mask = torch.cat([s[1] for s in states])
    pick = torch.as_tensor(np.random.default_rng(0).integers(0, len(ids), size=40))  # with repeats
    ids, mask = ids[pick], mask[pick]
    weights = torch.randn(len(ids), model.config.vocab_size), torch.randn(len(ids), model.config.n_embd)
    grads = []
    for forward in (shared_prefix_forward, full_forward):
        model.zero_grad()
        logits, hidden = forward(model, ids, mask)
        ((logits * weights[0]).sum() + (hidden * weights[1]).sum()).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        if forward is shared_prefix_forward:
            shared = logits.detach(), hidden.detach()
        else:
            torch.testing.assert_close(shared[0], logits.detach(), atol=ATOL, rtol=0)
            torch.testing.assert_close(shared[1], hidden.detach(), atol=ATOL, rtol=0)
    for g_shared, g_plain in zip(*grads, strict=True):
        torch.testing.assert_close(g_shared, g_plain, atol=1e-4, rtol=1e-4)


def test_sb3_ppo_with_the_cache_trains_as_without_it():
    """Two SB3 PPO runs from the same weights and seed, cache on and off: the same rollouts and updates (to float
    rounding: the weights after training agree closely) and the LM the env scores is the one trained."""
    finals = []
    for kv_cache in (True, False):
        torch.manual_seed(0)
        lm = make_tiny_lm(seed=4)
        venv = make_venv(lm, n_envs=2, max_new_tokens=4)
        model = make_sb3_text_model("ppo", venv, n_steps=16, batch_size=16, n_epochs=2, seed=0, ent_coef=0.01,
                                    policy_kwargs={"kv_cache": kv_cache})
        model.learn(64, callback=SyncTextEnvCallback())
        assert model.policy.lm is venv.envs[0].unwrapped.policy
        finals.append(torch.cat([p.detach().flatten() for p in model.policy.lm.parameters()]))
    assert not torch.equal(finals[0], make_flat(make_tiny_lm(seed=4)[0]))  # it trained
    torch.testing.assert_close(finals[0], finals[1], atol=1e-4, rtol=0)


def make_flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])
