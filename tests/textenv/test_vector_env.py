"""TextGenVectorEnv: same trajectories as the single env, NEXT_STEP autoreset, backends, vector info, bad input."""

import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

from textenv import (
    ActionTypeError,
    EpisodeEndedError,
    InvalidActionError,
    KeywordReward,
    TextGenEnv,
    TextGenVectorEnv,
    sample_tokens,
)
from textenv.testing import make_tiny_lm

PROMPTS = ["the movie was", "i loved this phone and", "it", "a really boring book but"]


@pytest.fixture(scope="module")
def lm():
    return make_tiny_lm()


@pytest.fixture(scope="module")
def ref():
    return make_tiny_lm(seed=7)[0]


def kwargs(lm, ref, **extra):
    return {
        "model": lm[0],
        "tokenizer": lm[1],
        "prompts": PROMPTS,
        "ref_model": ref,
        "kl_coef": 0.1,
        "max_new_tokens": 4,
        "max_prompt_tokens": 6,
        "reward_fn": KeywordReward(["good", "great"]),
        **extra,
    }


def action_schedule(n_steps, n_rows, eos, seed=0):
    rng = np.random.default_rng(seed)
    acts = rng.integers(3, 39, size=(n_steps, n_rows))  # the tiny vocabulary has 39 ids
    acts[rng.random((n_steps, n_rows)) < 0.2] = eos
    return acts


def test_single_and_vector_env_give_identical_trajectories(lm, ref):
    """N=1: the same engine, the same RNG draws -> bit-identical observations, rewards and infos over episodes."""
    single, vec = TextGenEnv(**kwargs(lm, ref)), TextGenVectorEnv(1, **kwargs(lm, ref))
    obs_s, info_s = single.reset(seed=11)
    obs_v, info_v = vec.reset(seed=11)
    assert info_s["prompt"] == info_v["prompt"][0]
    episodes, single_done = 0, False
    for a in action_schedule(25, 1, lm[1].eos_token_id)[:, 0]:
        assert all(np.array_equal(obs_s[k], obs_v[k][0]) for k in obs_s)
        obs_v, r_v, term_v, trunc_v, info_v = vec.step(np.array([a]))
        if single_done:
            obs_s, info_s = single.reset()  # NEXT_STEP: the vector env resets during this step
            single_done = False
            assert r_v[0] == 0 and not term_v[0] and not trunc_v[0] and not info_v["_policy_logprob"][0]
            continue
        obs_s, r_s, term_s, trunc_s, info_s = single.step(a)
        assert r_s == r_v[0] and term_s == term_v[0] and trunc_s == trunc_v[0]
        assert info_s["policy_logprob"] == info_v["policy_logprob"][0]
        single_done = term_s or trunc_s
        if single_done:
            episodes += 1
            for key in ("prompt", "response", "score", "kl_sum"):
                assert info_v["_" + key][0] and info_s[key] == info_v[key][0]
    assert episodes >= 3


def test_vector_rows_match_independent_single_envs(lm, ref):
    """N=3 with different prompt lengths (different left padding) vs three single envs fed the same actions."""
    vec = TextGenVectorEnv(3, **kwargs(lm, ref))
    singles = [TextGenEnv(**kwargs(lm, ref)) for _ in range(3)]
    prompts = PROMPTS[:3]
    vec.reset(seed=0, options={"prompts": prompts})
    for env, p in zip(singles, prompts, strict=True):
        env.reset(seed=0, options={"prompt": p})
    for a in action_schedule(4, 3, lm[1].eos_token_id, seed=3):  # one episode: no autoreset here
        obs_v, r_v, term_v, trunc_v, info_v = vec.step(a)
        for i, env in enumerate(singles):
            if env._ended:
                continue
            obs_s, r_s, term_s, trunc_s, info_s = env.step(int(a[i]))
            assert np.array_equal(obs_s["input_ids"], obs_v["input_ids"][i])
            assert r_s == pytest.approx(r_v[i], abs=1e-5) and (term_s, trunc_s) == (term_v[i], trunc_v[i])


def test_next_step_autoreset_semantics(lm, ref):
    env = TextGenVectorEnv(3, **kwargs(lm, ref))
    assert env.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    obs, info = env.reset(seed=0, options={"prompts": PROMPTS[:3]})
    eos = lm[1].eos_token_id
    obs, r, term, trunc, info = env.step(np.array([5, eos, 6]))  # row 1 ends now
    assert term.tolist() == [False, True, False] and not trunc.any()
    assert info["_response"].tolist() == [False, True, False] and info["response"][1] == ""
    assert info["prompt"][1] == PROMPTS[1] and info["score"][1] == 0.0
    before = obs["input_ids"].copy()
    obs, r, term, trunc, info = env.step(np.array([7, 10_000_000, 8]))  # row 1's action is ignored, even invalid
    assert r[1] == 0 and not term[1] and not trunc[1]
    assert info["_policy_logprob"].tolist() == [True, False, True] and info["_ref_logprob"].tolist() == [
        True,
        False,
        True,
    ]
    prompt_len = int(obs["attention_mask"][1].sum())
    assert obs["attention_mask"][1].tolist() == [0] * (10 - prompt_len) + [1] * prompt_len  # a fresh prompt
    for row, a in ((0, 7), (2, 8)):  # the other rows went on
        assert np.array_equal(obs["input_ids"][row], np.append(before[row][1:], a))
    obs, r, term, trunc, info = env.step(np.array([9, 9, 9]))
    assert obs["attention_mask"][1].sum() == prompt_len + 1 and info["_policy_logprob"].all()
    obs, r, term, trunc, info = env.step(np.array([9, 9, 9]))  # rows 0 and 2 reach max_new_tokens=4
    assert trunc.tolist() == [True, False, True] and info["_kl_sum"].tolist() == [True, False, True]


def test_seeded_vector_env_is_deterministic(lm, ref):
    runs = []
    for _ in range(2):
        env = TextGenVectorEnv(4, **kwargs(lm, ref))
        obs, info = env.reset(seed=5)
        trace = [obs["input_ids"].copy(), list(info["prompt"])]
        for a in action_schedule(12, 4, lm[1].eos_token_id, seed=1):
            obs, r, term, trunc, info = env.step(a)
            trace += [obs["input_ids"].copy(), r.copy(), term.copy(), trunc.copy()]
        runs.append(trace)
    for x, y in zip(*runs, strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_torch_backend_returns_device_tensors_and_matches_numpy(lm, ref):
    envs = [TextGenVectorEnv(3, array_backend=b, **kwargs(lm, ref)) for b in ("numpy", "torch")]
    (obs_n, _), (obs_t, _) = (e.reset(seed=2) for e in envs)
    assert isinstance(obs_t["input_ids"], torch.Tensor) and obs_t["input_ids"].dtype == torch.long
    assert envs[0].observation_space.contains(obs_n)
    for a in action_schedule(8, 3, lm[1].eos_token_id, seed=4):
        logits = envs[1].next_token_logits()
        assert logits.shape == (3, envs[1].single_action_space.n)
        out_n = envs[0].step(a)
        out_t = envs[1].step(torch.as_tensor(a))
        assert isinstance(out_t[1], torch.Tensor) and out_t[2].dtype == torch.bool
        assert isinstance(out_t[4]["policy_logprob"], torch.Tensor)
        assert np.array_equal(out_n[0]["input_ids"], out_t[0]["input_ids"].numpy())
        assert np.allclose(out_n[1], out_t[1].numpy()) and np.array_equal(out_n[2], out_t[2].numpy())
        assert np.array_equal(out_n[3], out_t[3].numpy())
        assert envs[0].observation_space.contains(out_n[0])


def test_returned_torch_observations_are_not_modified_later(lm, ref):
    env = TextGenVectorEnv(2, array_backend="torch", **kwargs(lm, ref))
    obs, _ = env.reset(seed=0)
    kept = obs["input_ids"].clone()
    for _ in range(6):
        env.step(torch.tensor([1, 5]))  # row 0 keeps ending and being reset
    assert torch.equal(obs["input_ids"], kept)


def test_bad_input_raises_specific_errors(lm, ref):
    env = TextGenVectorEnv(2, **kwargs(lm, ref))
    with pytest.raises(EpisodeEndedError, match="reset"):
        env.step(np.array([5, 5]))
    env.reset(seed=0)
    with pytest.raises(InvalidActionError, match="shape"):
        env.step(np.array([5, 5, 5]))
    with pytest.raises(InvalidActionError, match="Discrete"):
        env.step(np.array([5, 999]))
    with pytest.raises(InvalidActionError, match="Discrete"):
        env.step(torch.tensor([-1, 5]))
    with pytest.raises(ActionTypeError):
        env.step(np.array([1.0, 2.0]))
    with pytest.raises(ActionTypeError):
        env.step(torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="num_envs"):
        env.reset(options={"prompts": ["only one"]})
    with pytest.raises(ValueError, match="array_backend"):
        TextGenVectorEnv(2, array_backend="jax", **kwargs(lm, ref))
    with pytest.raises(ValueError, match="num_envs"):
        TextGenVectorEnv(0, **kwargs(lm, ref))


def test_torch_backend_step_makes_one_device_to_host_transfer(lm, ref, monkeypatch):
    """The native loop syncs once per step (the EOS check, as generate's stopping check does), nowhere else."""
    env = TextGenVectorEnv(3, array_backend="torch", **kwargs(lm, ref, max_new_tokens=20))
    env.reset(seed=0)
    env.step(torch.tensor([5, 6, 7]))
    calls = []
    for name in ("cpu", "item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kw):
            calls.append(_name)
            return _original(self, *args, **kw)

        monkeypatch.setattr(torch.Tensor, name, counted)
    gen = torch.Generator().manual_seed(0)
    for _ in range(6):  # no episode ends in these steps (max_new_tokens=20, EOS masked)
        logits = env.next_token_logits().index_fill(1, torch.tensor([lm[1].eos_token_id]), -float("inf"))
        env.step(sample_tokens(logits, gen))
    monkeypatch.undo()
    assert calls == ["cpu"] * 6
