"""TextGenVectorEnv.play(): whole episodes in one call, equal to stepping token by token; the state it leaves; bad
use; and collect_rollout giving the same batch through play() and through step()."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.llm.rollout import collect_rollout
from textenv import EpisodeEndedError, KeywordReward, TextGenVectorEnv, sample_tokens
from textenv.rewards import RewardFunctionError
from textenv.testing import make_tiny_lm

PROMPTS = ["the movie was", "i loved this phone and", "it", "a really boring book but"]
N, HORIZON = 24, 10


@pytest.fixture(scope="module")
def models():
    model, tok = make_tiny_lm()
    with torch.no_grad():  # make EOS likely enough that some rows terminate and others are truncated
        model.transformer.wte.weight[tok.eos_token_id] *= 4.0
    return model, tok, make_tiny_lm(seed=7)[0]


def make_env(models, **extra):
    model, tok, ref = models
    settings = {
        "model": model,
        "tokenizer": tok,
        "prompts": PROMPTS,
        "ref_model": ref,
        "kl_coef": 0.1,
        "max_new_tokens": HORIZON,
        "max_prompt_tokens": 8,
        "reward_fn": KeywordReward(["good", "great"]),
        "array_backend": "torch",
        "info_text": True,  # step_through reads the text from info
        **extra,
    }
    return TextGenVectorEnv(N, **settings)


def step_through(env, generator):
    """The reference: step() with sampled actions until every row's first episode ended; per-row records."""
    env.reset(seed=3)
    rec = {k: [[] for _ in range(N)] for k in ("action", "logp", "ref", "reward")}
    out = {"score": np.zeros(N), "prompt": [None] * N, "response": [None] * N, "eos": np.zeros(N, bool)}
    alive = np.ones(N, dtype=bool)
    while alive.any():
        actions = sample_tokens(env.next_token_logits(), generator)
        _, reward, terminated, truncated, info = env.step(actions)
        for i in np.flatnonzero(alive):
            rec["action"][i].append(int(actions[i]))
            rec["logp"][i].append(float(info["policy_logprob"][i]))
            rec["ref"][i].append(float(info["ref_logprob"][i]))
            rec["reward"][i].append(float(reward[i]))
            if bool(terminated[i]) or bool(truncated[i]):
                out["score"][i], out["eos"][i] = info["score"][i], bool(terminated[i])
                out["prompt"][i], out["response"][i] = info["prompt"][i], info["response"][i]
                alive[i] = False
    return rec, out


def test_play_equals_stepping_token_by_token(models):
    ref_rec, ref_out = step_through(make_env(models), torch.Generator().manual_seed(11))
    env = make_env(models)
    env.reset(seed=3)
    ep = env.play(torch.Generator().manual_seed(11))
    lengths = ep.mask.sum(1).tolist()
    assert ep.terminated.any() and not ep.terminated.all()  # both endings occur
    for i in range(N):
        k = lengths[i]
        assert k == len(ref_rec["action"][i])
        assert ep.tokens[i, :k].tolist() == ref_rec["action"][i]
        assert not ep.mask[i, k:].any() and (ep.tokens[i, k:] == env.engine.pad_id).all()
        np.testing.assert_allclose(ep.policy_logprob[i, :k].numpy(), ref_rec["logp"][i], atol=1e-5)
        np.testing.assert_allclose(ep.ref_logprob[i, :k].numpy(), ref_rec["ref"][i], atol=1e-5)
        np.testing.assert_allclose(ep.reward[i, :k].numpy(), ref_rec["reward"][i], atol=1e-5)
        assert float(ep.reward[i, k:].abs().sum()) == 0.0
    np.testing.assert_allclose(ep.scores, ref_out["score"])
    np.testing.assert_array_equal(ep.terminated, ref_out["eos"])
    assert ep.prompts == ref_out["prompt"] and ep.responses == ref_out["response"]
    kl = (ep.policy_logprob - ep.ref_logprob).sum(1).double().numpy()
    np.testing.assert_allclose(ep.kl_sums, kl, atol=1e-5)


def test_play_scores_the_reference_in_one_forward_as_stepping_does(models):
    """The reference model scores finished episodes in one teacher-forced forward (not a decoding step per token),
    with the same log-probs as stepping gives, at a temperature too; in row chunks when the logits would be big."""
    from textenv.sampling import sequence_logprobs

    ref_rec, _ = step_through(make_env(models, temperature=0.7), torch.Generator().manual_seed(5))
    env = make_env(models, temperature=0.7)
    env.reset(seed=3)
    calls = []
    hook = models[2].register_forward_hook(lambda module, args, kwargs_out: calls.append(1))
    try:
        ep = env.play(torch.Generator().manual_seed(5))
    finally:
        hook.remove()
    assert len(calls) == 1
    for i, k in enumerate(ep.mask.sum(1).tolist()):
        np.testing.assert_allclose(ep.ref_logprob[i, :k].numpy(), ref_rec["ref"][i], atol=1e-5)
    eng = env.engine
    whole = sequence_logprobs(models[2], eng.tokens, eng.mask, 6, 0.7)
    chunked = sequence_logprobs(models[2], eng.tokens, eng.mask, 6, 0.7, max_logits_bytes=1)  # a row at a time
    torch.testing.assert_close(whole, chunked, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="n_scored"):
        sequence_logprobs(models[2], eng.tokens, eng.mask, eng.tokens.shape[1], 1.0)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_play_equals_stepping_for_the_llama_family(family):
    """The same with a Llama-family policy and reference (the fast decoder steps; the reference scores at the end)."""
    from tests.textenv.test_decoders_llama import tiny

    (policy, tok), (ref, _) = tiny(family, seed=0), tiny(family, seed=1)
    with torch.no_grad():
        policy.lm_head.weight[tok.eos_token_id] *= 3.0
    models = (policy, tok, ref)
    ref_rec, _ = step_through(make_env(models), torch.Generator().manual_seed(2))
    env = make_env(models)
    env.reset(seed=3)
    ep = env.play(torch.Generator().manual_seed(2))
    for i, k in enumerate(ep.mask.sum(1).tolist()):
        assert ep.tokens[i, :k].tolist() == ref_rec["action"][i]
        np.testing.assert_allclose(ep.ref_logprob[i, :k].numpy(), ref_rec["ref"][i], atol=2e-5)
        np.testing.assert_allclose(ep.reward[i, :k].numpy(), ref_rec["reward"][i], atol=2e-5)


def test_play_leaves_the_final_states_and_the_next_step_starts_new_episodes(models):
    env = make_env(models)
    env.reset(seed=0)
    ep = env.play(torch.Generator().manual_seed(0))
    tok = env.tokenizer
    state_ids, state_mask = env.engine.tokens, env.engine.mask
    for i in range(N):
        ids = state_ids[i][state_mask[i].bool()].tolist()
        k = int(ep.mask[i].sum())
        prompt_ids = tok(ep.prompts[i])["input_ids"]
        assert ids == prompt_ids + ep.tokens[i, :k].tolist()  # prompt + response, right-aligned
        assert bool(state_mask[i, -1])
    with pytest.raises(EpisodeEndedError, match="reset"):
        env.play()  # every episode is over
    obs, reward, terminated, truncated, info = env.step(torch.zeros(N, dtype=torch.long))
    assert not terminated.any() and not truncated.any() and float(reward.abs().sum()) == 0.0
    assert not info["_policy_logprob"].any()  # every row was in its reset step
    # the new episodes decode as usual (the caches were rebuilt from the new prompts)
    logits = env.next_token_logits()
    fresh = make_env(models)
    fresh.engine.fast_decode = False
    fresh.reset(options={"prompts": list(env.engine.prompt_text)})
    torch.testing.assert_close(logits, fresh.next_token_logits(), atol=1e-5, rtol=0)


def test_play_needs_fresh_episodes(models):
    env = make_env(models)
    with pytest.raises(EpisodeEndedError, match="reset"):
        env.play()
    env.reset(seed=0)
    env.step(torch.full((N,), 5))
    with pytest.raises(EpisodeEndedError, match="reset"):
        env.play()  # mid-episode


def test_a_failing_reward_function_in_play_needs_a_reset(models):
    env = make_env(models, reward_fn=lambda prompts, responses: [float("nan")] * len(prompts))
    env.reset(seed=0)
    with pytest.raises(RewardFunctionError):
        env.play()
    with pytest.raises(EpisodeEndedError):
        env.step(torch.zeros(N, dtype=torch.long))


class SteppedOnly(TextGenVectorEnv):
    play = None  # an env without play(): collect_rollout steps it token by token


def test_collect_rollout_is_the_same_through_play_and_through_step(models):
    model, tok, ref = models
    batches = []
    for cls in (TextGenVectorEnv, SteppedOnly):
        env = cls(
            N, model=model, tokenizer=tok, prompts=PROMPTS, reward_fn=KeywordReward(["good"]), kl_coef=0.0,
            max_new_tokens=HORIZON, max_prompt_tokens=8, array_backend="torch",
        )  # fmt: skip
        batches.append(collect_rollout(env, seed=5, generator=torch.Generator().manual_seed(2), ref_model=ref))
    a, b = batches
    torch.testing.assert_close(a.response_mask, b.response_mask)
    torch.testing.assert_close(a.response_ids, b.response_ids)
    torch.testing.assert_close(a.query_ids, b.query_ids)
    for x, y in ((a.old_logprobs, b.old_logprobs), (a.ref_logprobs, b.ref_logprobs), (a.scores, b.scores)):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)
    assert a.responses == b.responses and a.prompts == b.prompts
    torch.testing.assert_close(a.ended_with_eos, b.ended_with_eos)
