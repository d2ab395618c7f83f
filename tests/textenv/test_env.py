"""TextGenEnv: API contracts (Gymnasium and SB3 checkers, seeding), MDP dynamics, info, bad input, registration."""

import gymnasium as gym
import numpy as np
import pytest
import torch

import textenv
from textenv import (
    ActionTypeError,
    EmptyPromptSourceError,
    EpisodeEndedError,
    InvalidActionError,
    PromptTooLongError,
    RewardFunctionError,
    TextGenEnv,
    VocabularyMismatchError,
)
from textenv.testing import make_tiny_lm, make_tiny_tokenizer

PROMPTS = ["the movie was", "i loved this phone and", "it", "a really boring book but"]


@pytest.fixture(scope="module")
def lm():
    return make_tiny_lm()


def make(lm, **kwargs):
    model, tok = lm
    kwargs = {"prompts": PROMPTS, "max_new_tokens": 5, "max_prompt_tokens": 6, **kwargs}
    return TextGenEnv(model=model, tokenizer=tok, **kwargs)


def rollout(env, actions, seed):
    obs, info = env.reset(seed=seed)
    out = [(obs, info)]
    for a in actions:
        out.append(env.step(a))
        if out[-1][2] or out[-1][3]:
            break
    return out


def test_gymnasium_check_env_passes(lm):
    from gymnasium.utils.env_checker import check_env

    check_env(make(lm, ref_model=make_tiny_lm(seed=2)[0]), skip_render_check=True)


def test_sb3_check_env_passes(lm):
    from stable_baselines3.common.env_checker import check_env

    check_env(make(lm), warn=True)


def test_an_sb3_algorithm_trains_on_the_env(lm):
    from stable_baselines3 import PPO

    env = make(lm, reward_fn=textenv.KeywordReward(["good"]))
    agent = PPO("MultiInputPolicy", env, n_steps=32, batch_size=16, n_epochs=1, seed=0, device="cpu")
    before = [p.detach().clone() for p in agent.policy.parameters()]
    agent.learn(total_timesteps=32)
    after = list(agent.policy.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_seeded_reset_and_steps_are_deterministic(lm):
    ref = make_tiny_lm(seed=3)[0]
    a = rollout(make(lm, ref_model=ref), [5, 9, 7, 11, 4], seed=7)
    b = rollout(make(lm, ref_model=ref), [5, 9, 7, 11, 4], seed=7)
    for x, y in zip(a, b, strict=True):
        assert len(x) == len(y)
        for u, v in zip(x, y, strict=True):
            if isinstance(u, dict) and "input_ids" in u:
                assert all(np.array_equal(u[k], v[k]) for k in u)
            else:
                assert u == v
    prompts = {make(lm, info_text=True).reset(seed=s)[1]["prompt"] for s in range(20)}
    assert len(prompts) > 1  # the seed chooses the prompt


def test_observation_is_the_previous_one_shifted_with_the_action_appended(lm):
    env = make(lm)
    obs, info = env.reset(seed=0, options={"prompt": "the movie was"})
    assert obs["input_ids"].shape == (11,) and obs["input_ids"].dtype == np.int64
    assert obs["attention_mask"].tolist() == [0] * 8 + [1] * 3  # left padding
    for a in [5, 8, 13]:
        nxt, *_ = env.step(a)
        assert np.array_equal(nxt["input_ids"], np.append(obs["input_ids"][1:], a))
        assert np.array_equal(nxt["attention_mask"], np.append(obs["attention_mask"][1:], 1))
        obs = nxt


def test_eos_terminates_and_info_holds_the_episode(lm):
    tok = lm[1]
    env = make(lm, reward_fn=textenv.KeywordReward(["good"]), info_text=True)
    env.reset(seed=0, options={"prompt": "the movie was"})
    good = tok.convert_tokens_to_ids("good")
    _, r1, term, trunc, info = env.step(good)
    assert not term and not trunc  # every key at every step: the score is 0 and the response empty until the end
    assert info["prompt"] == "the movie was" and info["response"] == "" and info["score"] == 0.0
    _, r2, term, trunc, end = env.step(tok.eos_token_id)
    assert term and not trunc and set(end) == set(info) == {"policy_logprob", "ref_logprob", "score", "kl_sum",
                                                              "prompt", "response"}
    assert end["prompt"] == "the movie was" and end["response"] == "good"  # EOS is not part of the text
    assert end["score"] == 1.0 and end["kl_sum"] == 0.0  # the reference is a copy of the policy
    assert r2 == pytest.approx(1.0)
    with pytest.raises(EpisodeEndedError, match="reset"):
        env.step(5)


def test_max_new_tokens_truncates(lm):
    env = make(lm, max_new_tokens=3)
    env.reset(seed=0)
    flags = [env.step(5)[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]
    with pytest.raises(EpisodeEndedError):
        env.step(5)


def test_step_before_reset_raises(lm):
    with pytest.raises(EpisodeEndedError, match="reset"):
        make(lm).step(5)


def test_native_and_sb3_paths_give_the_same_reward(lm):
    """A native agent samples from next_token_logits() (no second forward); an SB3 agent only calls step()."""
    ref = make_tiny_lm(seed=4)[0]
    native, sb3 = make(lm, ref_model=ref, kl_coef=0.2), make(lm, ref_model=ref, kl_coef=0.2)
    native.reset(seed=3)
    sb3.reset(seed=3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        logits = native.next_token_logits()
        a = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
        _, r_native, term, trunc, info_n = native.step(a)
        _, r_sb3, *_, info_s = sb3.step(np.int64(a))
        assert r_native == r_sb3 and info_n == info_s
        assert info_n["policy_logprob"] == pytest.approx(float(torch.log_softmax(logits, -1)[a]), abs=1e-6)
        if term or trunc:
            break


def test_final_reward_adds_the_score_to_the_kl_term(lm):
    ref = make_tiny_lm(seed=5)[0]
    env = make(lm, ref_model=ref, kl_coef=0.5, max_new_tokens=2, reward_fn=textenv.LengthReward(target=4))
    env.reset(seed=1)
    _, r1, *_, i1 = env.step(5)
    _, r2, _, trunc, i2 = env.step(6)
    assert trunc and i2["score"] == pytest.approx(-0.5)
    assert r1 == pytest.approx(-0.5 * (i1["policy_logprob"] - i1["ref_logprob"]), abs=1e-6)
    kl2 = i2["policy_logprob"] - i2["ref_logprob"]
    assert r2 == pytest.approx(-0.5 * kl2 - 0.5, abs=1e-6)
    assert i2["kl_sum"] == pytest.approx(i1["policy_logprob"] - i1["ref_logprob"] + kl2, abs=1e-5)


def test_without_reference_there_is_no_kl_term(lm):
    for kwargs in ({"ref_model": None}, {"kl_coef": 0.0}):
        env = make(lm, **kwargs)
        assert env.ref_model is None
        env.reset(seed=0)
        _, r, *_, info = env.step(5)
        assert r == 0.0 and "ref_logprob" not in info


@pytest.mark.parametrize(
    ("action", "error"),
    [
        (10_000, InvalidActionError),
        (-1, InvalidActionError),
        (1.5, ActionTypeError),
        (True, ActionTypeError),
        ("good", ActionTypeError),
        (np.float32(3), ActionTypeError),
        (torch.tensor(2.0), ActionTypeError),
        (np.array([1, 2]), ActionTypeError),
    ],
)
def test_bad_actions_raise_specific_errors(lm, action, error):
    env = make(lm)
    env.reset(seed=0)
    with pytest.raises(error, match="token id|integer|dtype"):
        env.step(action)
    env.step(np.int64(5))  # the env is still usable: the bad action changed nothing
    assert issubclass(ActionTypeError, TypeError) and issubclass(InvalidActionError, ValueError)


@pytest.mark.parametrize(
    ("scores", "match"),
    [(lambda n: [float("nan")] * n, "non-finite"), (lambda n: [1.0] * (n + 1), "shape"), (lambda n: "x", "not")],
)
def test_bad_reward_function_output_raises(lm, scores, match):
    env = make(lm, max_new_tokens=1, reward_fn=lambda prompts, responses: scores(len(responses)))
    env.reset(seed=0)
    with pytest.raises(RewardFunctionError, match=match):
        env.step(5)
    with pytest.raises(EpisodeEndedError):  # the episode is over, unscored: reset, don't continue
        env.step(5)


def test_bad_constructor_arguments_raise_specific_errors(lm):
    model, tok = lm
    with pytest.raises(PromptTooLongError, match="max_prompt_tokens"):
        make(lm, max_prompt_tokens=2)
    with pytest.raises(EmptyPromptSourceError):
        make(lm, prompts=[])
    big_tok = make_tiny_tokenizer(list(textenv.testing.DEFAULT_WORDS) + ["extra", "words"])
    with pytest.raises(VocabularyMismatchError, match="tokenizer"):
        TextGenEnv(model=model, tokenizer=big_tok, prompts=PROMPTS)
    for bad in ({"kl_coef": -1.0}, {"temperature": 0.0}, {"max_new_tokens": 0}):
        with pytest.raises(ValueError):
            make(lm, **bad)
    with pytest.raises(ValueError, match="positions"):
        make(lm, max_new_tokens=200)
    with pytest.raises(TypeError, match="callable"):
        make(lm, reward_fn="sentiment")


def test_gym_make_and_make_vec(lm):
    model, tok = lm
    kwargs = {"model": model, "tokenizer": tok, "prompts": PROMPTS, "max_new_tokens": 4, "max_prompt_tokens": 6}
    env = gym.make("TextGen-v0", **kwargs)
    assert isinstance(env.unwrapped, TextGenEnv)
    env.reset(seed=0)
    env.step(env.action_space.sample())
    assert isinstance(gym.make("textenv:TextGen-v0", **kwargs).unwrapped, TextGenEnv)
    venv = gym.make_vec("TextGen-v0", num_envs=3, **kwargs)
    assert isinstance(venv, textenv.TextGenVectorEnv) and venv.num_envs == 3
    obs, _ = venv.reset(seed=0)
    obs, reward, *_ = venv.step(venv.action_space.sample())
    assert obs["input_ids"].shape == (3, 10) and reward.shape == (3,)


def test_render_ansi(lm):
    env = make(lm, render_mode="ansi")
    env.reset(seed=0, options={"prompt": "the movie was"})
    env.step(lm[1].convert_tokens_to_ids("good"))
    assert env.render() == "the movie was | good"


def test_no_argument_forms_use_the_default_lm():
    default_lm = pytest.importorskip("textenv.default_lm")
    for env in (gym.make("TextGen-v0", info_text=True), gym.make("textenv:TextGen-v0", info_text=True)):
        obs, info = env.reset(seed=0)
        assert info["prompt"] in default_lm.default_prompts()
        env.step(env.action_space.sample())
    venv = gym.make_vec("TextGen-v0", num_envs=2)
    venv.reset(seed=0)
    venv.step(venv.action_space.sample())


@pytest.mark.cuda
def test_cuda_env_matches_cpu():
    cpu_model, tok = make_tiny_lm()
    gpu_model, _ = make_tiny_lm(device="cuda")
    envs = [
        TextGenEnv(model=m, tokenizer=tok, prompts=PROMPTS, max_new_tokens=4, max_prompt_tokens=6, device=d)
        for m, d in ((cpu_model, "cpu"), (gpu_model, "cuda"))
    ]
    outs = [rollout(env, [5, 9, 7, 11], seed=0) for env in envs]
    envs[1].reset(seed=0)
    assert envs[1].next_token_logits().is_cuda and envs[1].engine.tokens.is_cuda
    for (o1, *r1), (o2, *r2) in zip(outs[0][1:], outs[1][1:], strict=True):
        assert np.array_equal(o1["input_ids"], o2["input_ids"])
        assert r1[0] == pytest.approx(r2[0], abs=1e-5)
        assert r1[3]["policy_logprob"] == pytest.approx(r2[3]["policy_logprob"], abs=1e-4)
    venv = textenv.TextGenVectorEnv(
        4,
        model=gpu_model,
        tokenizer=tok,
        prompts=PROMPTS,
        max_new_tokens=3,
        max_prompt_tokens=6,
        array_backend="torch",
    )
    obs, _ = venv.reset(seed=0)
    for _ in range(5):
        actions = torch.distributions.Categorical(logits=venv.next_token_logits()).sample()
        obs, reward, term, trunc, info = venv.step(actions)
        assert obs["input_ids"].is_cuda and reward.is_cuda and term.is_cuda and trunc.is_cuda


class FlakyRewardServer:
    """A remote scorer that fails the way servers do: calls listed in ``fail_calls`` raise ``error`` (default a
    ``ConnectionError``); the others score each response by its number of words and remember what they scored."""

    def __init__(self, fail_calls, error=None):
        self.fail_calls, self.error, self.calls, self.scored = set(fail_calls), error, 0, []

    def __call__(self, prompts, responses):
        self.calls += 1
        if self.calls in self.fail_calls:
            raise self.error or ConnectionError("reward server unreachable")
        self.scored += list(responses)
        return np.array([len(r.split()) for r in responses], dtype=np.float64)


@pytest.mark.parametrize(
    "error", [ConnectionError("reward server unreachable"), TimeoutError("read timed out"), KeyboardInterrupt()]
)
def test_a_reward_function_that_raises_ends_the_episode(lm, error):
    """Regression (issue 15): a ConnectionError used to leave the failed step's token in the state; the next step()
    appended a 4th token to a max_new_tokens=3 episode and scored it (truncated=True, reward 4.0)."""
    server = FlakyRewardServer(fail_calls={1}, error=error)
    env = make(lm, max_new_tokens=3, kl_coef=0.0, reward_fn=server, info_text=True)
    env.reset(seed=0)
    env.step(5)
    env.step(6)
    with pytest.raises(type(error)) as raised:
        env.step(7)  # the last step: the score is requested, the server fails
    assert any("reset()" in note for note in getattr(raised.value, "__notes__", []))  # says what to do
    with pytest.raises(EpisodeEndedError, match=rf"{type(error).__name__}.*reset\(\)"):
        env.step(8)  # the episode is over: no 4th token, nothing scored
    assert server.scored == [] and int(env.engine.t[0]) == 3
    obs, info = env.reset(seed=0)
    for a in (5, 6, 7):
        obs, reward, terminated, truncated, info = env.step(a)
    assert truncated and not terminated and reward == 3.0 and info["score"] == 3.0
    assert server.scored == [info["response"]] and len(info["response"].split()) == 3
    assert int(obs["attention_mask"].sum()) == len(lm[1](info["prompt"])["input_ids"]) + 3


def test_flaky_reward_server_never_scores_a_response_past_max_new_tokens(lm):
    """A driver that retries a failed step (as one retries a request) is told to reset; it never extends the
    episode. Before issue 15's fix the retry appended a 4th token and the server scored it."""
    server = FlakyRewardServer(fail_calls=range(1, 40, 2))  # every other request fails
    env = make(lm, max_new_tokens=3, kl_coef=0.0, reward_fn=server)
    rng = np.random.default_rng(0)
    failures = episodes = 0
    env.reset(seed=0)
    for _ in range(80):
        action = int(rng.integers(3, 39))
        try:
            obs, reward, terminated, truncated, info = env.step(action)
        except ConnectionError:
            failures += 1
            with pytest.raises(EpisodeEndedError, match="ConnectionError"):
                env.step(action)  # the retry
            env.reset()
            continue
        assert int(obs["attention_mask"].sum()) <= 6 + 3
        if terminated or truncated:
            episodes += 1
            assert truncated and info["score"] == 3.0 == reward
            env.reset()
    assert failures >= 5 and episodes >= 5
    assert all(len(r.split()) == 3 for r in server.scored)


def test_info_values_are_numpy(lm):
    """TorchRL's info readers (and SyncVectorEnv's batching) need NumPy values, not Python floats."""
    env = make(lm, max_new_tokens=1, ref_model=make_tiny_lm(seed=2)[0], reward_fn=textenv.KeywordReward(["good"]))
    env.reset(seed=0)
    *_, info = env.step(5)
    assert isinstance(info["policy_logprob"], np.float32) and isinstance(info["ref_logprob"], np.float32)
    assert isinstance(info["score"], np.float64) and isinstance(info["kl_sum"], np.float64)


def test_every_info_key_is_in_every_step_and_text_only_on_request(lm):
    """TorchRL's vectorised readers fix the info keys when they first read one and take numbers only (issue 25):
    the same numeric keys at every step, the KL summed so far, the score at the end; text with info_text=True."""
    ref = make_tiny_lm(seed=2)[0]
    env = make(lm, max_new_tokens=3, ref_model=ref, kl_coef=0.1, reward_fn=textenv.KeywordReward(["good"]))
    _, reset_info = env.reset(seed=0)
    assert reset_info == {}
    kl, infos = 0.0, []
    for a in (5, 6, 7):
        *_, truncated, info = env.step(a)
        infos.append(info)
        kl += float(info["policy_logprob"]) - float(info["ref_logprob"])
        assert set(info) == {"policy_logprob", "ref_logprob", "score", "kl_sum"}
        assert all(isinstance(v, np.generic) for v in info.values())  # numbers TorchRL reads as tensors
        assert info["kl_sum"] == pytest.approx(kl, abs=1e-5) and info["kl_sum"] != 0.0
    assert truncated and [i["score"] for i in infos] == [0.0, 0.0, 0.0]  # no "good": the end's score is 0 too
    texts = make(lm, max_new_tokens=3, info_text=True)
    assert set(texts.reset(seed=0)[1]) == {"prompt"}
    assert {"prompt", "response"} <= set(texts.step(5)[-1])
    with pytest.raises(TypeError, match="info_text must be True or False"):
        make(lm, info_text="yes")
