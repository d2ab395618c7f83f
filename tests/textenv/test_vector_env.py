"""TextGenVectorEnv: same trajectories as the single env, NEXT_STEP autoreset, backends, vector info, bad input."""

import gymnasium as gym
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
        "info_text": True,
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
    assert info["_response"].all() and info["response"].tolist() == ["", "", ""]  # every row that acted; "" until
    assert info["_score"].all() and info["score"].tolist() == [0.0, 0.0, 0.0]  # its end (row 1: an empty response)
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
    assert trunc.tolist() == [True, False, True] and info["_kl_sum"].all()  # every row acted: the KL so far


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


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_torch_backend_returns_device_tensors_and_matches_numpy(lm, ref, mode):
    envs = [TextGenVectorEnv(3, array_backend=b, autoreset_mode=mode, **kwargs(lm, ref)) for b in ("numpy", "torch")]
    (obs_n, _), (obs_t, _) = (e.reset(seed=2) for e in envs)
    finals = 0
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
        for info_n, info_t in ((out_n[4], out_t[4]), (out_n[4].get("final_info"), out_t[4].get("final_info"))):
            assert (info_n is None) == (info_t is None)
            if info_n is not None:  # the same keys and masks; log-probs as tensors, the rest as NumPy
                assert info_n.keys() == info_t.keys() and torch.is_tensor(info_t["policy_logprob"])
                assert np.allclose(info_n["policy_logprob"], info_t["policy_logprob"].numpy(), atol=1e-6)
                assert all(np.array_equal(info_n[k], info_t[k]) for k in info_n if k.startswith("_"))
        if "final_obs" in out_t[4]:
            finals += 1
            row = int(np.flatnonzero(out_t[4]["_final_obs"])[0])
            assert torch.is_tensor(out_t[4]["final_obs"][row]["input_ids"])
            assert np.array_equal(out_n[4]["final_obs"][row]["input_ids"], out_t[4]["final_obs"][row]["input_ids"])
    assert (finals > 0) == (mode == AutoresetMode.SAME_STEP)


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


# ---------------------------------------------------------------------- Gymnasium 1.x vector API, against SyncVectorEnv


def assert_same_vector_info(ours, ref, where="info"):
    """``ours`` holds what ``SyncVectorEnv`` gives (keys, masks, dtypes, values); a key only ours has must be
    masked out everywhere (we report the log-prob keys at every step, so their presence does not vary)."""
    for key in ours.keys() - ref.keys():
        assert key.startswith("_") or not ours["_" + key].any(), f"{where}[{key!r}] is not in SyncVectorEnv's info"
    for key, expected in ref.items():
        assert key in ours, f"{where}[{key!r}] missing"
        got = ours[key]
        if isinstance(expected, dict):
            assert_same_vector_info(got, expected, f"{where}[{key!r}]")
        elif key == "final_obs":
            assert got.dtype == object and [x is None for x in got] == [x is None for x in expected]
            for g, e in zip(got, expected, strict=True):
                assert e is None or all(np.array_equal(g[k], e[k]) for k in e), f"{where}[{key!r}]"
        else:
            assert isinstance(got, np.ndarray) and got.dtype == expected.dtype, (where, key, got, expected)
            if expected.dtype.kind == "f":
                np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=f"{where}[{key!r}]")
            else:
                assert got.tolist() == expected.tolist(), (where, key, got, expected)


def drive(venv, actions, reset_ended):
    """Reset, then step through ``actions``; with ``reset_ended`` (DISABLED mode) reset the rows that ended."""
    trace = [venv.reset(seed=0)]
    for a in actions:
        trace.append(venv.step(a))
        done = trace[-1][2] | trace[-1][3]
        if reset_ended and done.any():
            trace.append(venv.reset(options={"reset_mask": done}))
    return trace


@pytest.mark.parametrize("info_text", [True, False])
@pytest.mark.parametrize("mode", list(AutoresetMode))
def test_vector_env_matches_gymnasium_sync_vector_env(lm, ref, mode, info_text):
    """Observations, rewards, flags and info (keys, ``_key`` masks, dtypes, values, final_obs / final_info) equal
    what gymnasium's own SyncVectorEnv gives over single TextGenEnvs, in every autoreset mode. One prompt, so that
    the prompt draws (one generator here, one per sub-env there) agree."""
    from gymnasium.vector import SyncVectorEnv

    settings = kwargs(lm, ref, prompts=[PROMPTS[1]], info_text=info_text)
    ours = TextGenVectorEnv(3, autoreset_mode=mode, **settings)
    theirs = SyncVectorEnv([lambda: TextGenEnv(**settings)] * 3, autoreset_mode=mode)
    assert ours.autoreset_mode == theirs.autoreset_mode == ours.metadata["autoreset_mode"] == mode
    actions = action_schedule(16, 3, lm[1].eos_token_id, seed=2)
    disabled = mode == AutoresetMode.DISABLED
    trace_ours, trace_theirs = drive(ours, actions, disabled), drive(theirs, actions, disabled)
    assert len(trace_ours) == len(trace_theirs)
    ended = 0
    for step, (a, b) in enumerate(zip(trace_ours, trace_theirs, strict=True)):
        (obs_a, *rest_a, info_a), (obs_b, *rest_b, info_b) = a, b
        assert all(np.array_equal(obs_a[k], obs_b[k]) for k in obs_b), step
        for x, y in zip(rest_a, rest_b, strict=True):  # reward, terminated, truncated
            assert x.dtype == y.dtype and np.allclose(x, y, atol=1e-5), step
        assert_same_vector_info(info_a, info_b, f"step {step}: info")
        ended += int(np.sum(rest_a[1] | rest_a[2])) if rest_a else 0
    assert ended >= 6  # episodes ended at different steps in different rows


def test_autoreset_mode_is_chosen_by_name_or_enum_and_bad_ones_are_refused(lm, ref):
    for given in ("SameStep", "same_step", AutoresetMode.SAME_STEP):
        assert TextGenVectorEnv(1, autoreset_mode=given, **kwargs(lm, ref)).autoreset_mode == AutoresetMode.SAME_STEP
    with pytest.raises(ValueError, match=r"autoreset_mode must be one of .*NEXT_STEP.*got 'sometimes'"):
        TextGenVectorEnv(1, autoreset_mode="sometimes", **kwargs(lm, ref))
    venv = gym.make_vec("TextGen-v0", num_envs=2, autoreset_mode="Disabled", **kwargs(lm, ref))
    assert venv.autoreset_mode == AutoresetMode.DISABLED == venv.metadata["autoreset_mode"]
    assert TextGenVectorEnv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP  # the class default is untouched


def test_disabled_autoreset_needs_a_masked_reset_of_the_rows_that_ended(lm, ref):
    env = TextGenVectorEnv(3, autoreset_mode="Disabled", **kwargs(lm, ref))
    obs, _ = env.reset(seed=0, options={"prompts": PROMPTS[:3]})
    eos = lm[1].eos_token_id
    obs, *_ = env.step(np.array([5, eos, 6]))
    with pytest.raises(EpisodeEndedError, match=r"rows \[1\].*reset_mask"):
        env.step(np.array([5, 5, 5]))
    before = obs["input_ids"].copy()
    mask = np.array([False, True, False])
    obs, info = env.reset(options={"reset_mask": mask, "prompts": ["x", PROMPTS[3], "y"]})
    assert info["_prompt"].tolist() == [False, True, False] and info["prompt"][1] == PROMPTS[3]
    assert np.array_equal(obs["input_ids"][[0, 2]], before[[0, 2]])  # the other rows went on untouched
    obs, r, term, trunc, info = env.step(np.array([7, 8, 9]))
    assert info["_policy_logprob"].all() and obs["attention_mask"][1].sum() == len(PROMPTS[3].split()) + 1
    for bad, error in (
        (np.array([1, 0, 0]), TypeError),
        (np.array([True, False]), ValueError),
        (np.zeros(3, dtype=bool), ValueError),
    ):
        with pytest.raises(error, match="reset_mask"):
            env.reset(options={"reset_mask": bad})


def test_a_reward_function_that_raises_ends_every_episode(lm, ref):
    """Regression (issue 15): a reward server's ConnectionError used to leave the step's tokens in the state; the
    next step() went on and scored responses longer than max_new_tokens. Now the episodes end and reset() is
    required (the rows that did not end lose their episode too: the step's results never reached the caller)."""
    calls, scored = [], []

    def flaky_server(prompts, responses):  # every other request fails, as an overloaded server's do
        calls.append(len(responses))
        if len(calls) % 2 == 1:
            raise ConnectionError("reward server unreachable")
        scored.extend(responses)
        return np.array([len(r.split()) for r in responses], dtype=np.float64)

    env = TextGenVectorEnv(3, **kwargs(lm, ref, reward_fn=flaky_server, max_new_tokens=3, kl_coef=0.0))
    rng = np.random.default_rng(0)
    failures = episodes = 0
    env.reset(seed=0)
    for _ in range(60):
        actions = rng.integers(3, 39, size=3)
        try:
            obs, reward, terminated, truncated, info = env.step(actions)
        except ConnectionError as exc:
            failures += 1
            assert any("reset()" in note for note in exc.__notes__)
            with pytest.raises(EpisodeEndedError, match="ConnectionError"):
                env.step(actions)  # a retry does not extend the episodes
            with pytest.raises(EpisodeEndedError, match="ConnectionError"):
                env.play()
            env.reset()
            continue
        assert (obs["attention_mask"].sum(1) <= 6 + 3).all()
        ended = terminated | truncated
        episodes += int(ended.sum())
        assert (info["score"][ended] == 3.0).all() and truncated[ended].all() and (info["score"][~ended] == 0).all()
    assert failures >= 3 and episodes >= 6
    assert all(len(r.split()) == 3 for r in scored)
