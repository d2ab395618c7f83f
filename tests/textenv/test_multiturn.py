"""TextGen-v0 with an environment that answers: turns, replies, rewards, budgets, vector == single, play == step."""

import gymnasium as gym
import numpy as np
import pytest
import torch

import textenv  # noqa: F401  (registers TextGen-v0)
from textenv import KeywordReward, TextGenEnv, TextGenVectorEnv
from textenv.conversation import TurnFormat
from textenv.environments import EnvironmentSpecError, TurnEnvironment
from textenv.prompts import PromptTooLongError
from textenv.sampling import sample_tokens
from textenv.testing import DEFAULT_WORDS, make_tiny_lm, make_tiny_tokenizer

torch.set_num_threads(1)


class Quiz(TurnEnvironment):
    """``1 + seed % 3`` turns (3 unseeded); reward 1 per turn that says "good"; replies "it was" between turns."""

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.turns, self.k, self.heard = 1 + (3 if seed is None else seed) % 3, 0, []
        return "the movie was", {}

    def step(self, action):
        self.k += 1
        self.heard.append(action)
        done = self.k >= self.turns
        return ("" if done else "it was"), float("good" in action.split()), done, False, {}


@pytest.fixture(scope="module")
def lm():
    return make_tiny_lm()


@pytest.fixture(scope="module")
def ref():
    return make_tiny_lm(seed=7)[0]


def kwargs(lm, ref, **extra):
    return {"model": lm[0], "tokenizer": lm[1], "environment": Quiz, "ref_model": ref, "kl_coef": 0.1,
            "max_new_tokens": 16, "max_prompt_tokens": 6, "max_turn_tokens": 3, "info_text": True, **extra}


def schedule(n_steps, n_rows, eos, seed=0):
    rng = np.random.default_rng(seed)
    acts = rng.integers(3, 39, size=(n_steps, n_rows))
    acts[rng.random((n_steps, n_rows)) < 0.25] = eos
    return acts


def test_turns_end_at_eos_or_the_turn_limit_and_the_reply_joins_the_state(lm, ref):
    tok = lm[1]
    env = TextGenEnv(**kwargs(lm, ref))
    good, eos = tok.convert_tokens_to_ids("good"), tok.eos_token_id
    obs, _ = env.reset(options={"environment_seed": 1})  # two turns
    quiz = env.engine.conv.envs[0].env
    assert env.engine.conv.messages[0] == [{"role": "user", "content": "the movie was"}]
    _, r, term, trunc, info = env.step(good)
    assert info["turns"] == 0 and not (term or trunc)
    obs, r, term, trunc, info = env.step(eos)  # the turn ends at EOS: its text goes to the environment
    assert quiz.heard == ["good"] and info["turns"] == 1 and not (term or trunc)
    kl_only = -0.1 * (info["policy_logprob"] - info["ref_logprob"])
    assert r == pytest.approx(kl_only + 1.0, abs=1e-5)  # the environment's reward on the turn's last token
    ids = obs["input_ids"][obs["attention_mask"] == 1].tolist()
    reply = tok("it was", add_special_tokens=False)["input_ids"]
    assert ids[-3] == eos and ids[-2:] == reply  # the environment's reply, after the policy's EOS
    for a in (5, 6):
        _, _, term, trunc, info = env.step(a)
    assert not (term or trunc)
    _, r, term, trunc, info = env.step(good)  # the third token: the turn limit ends the turn, and the episode
    assert term and not trunc and quiz.heard[1].split() == [tok.decode([5]), tok.decode([6]), "good"]
    assert info["score"] == 2.0 and info["turns"] == 2
    assert info["response"] == "good it was " + quiz.heard[1]  # the conversation after the prompt


def test_render_shows_the_conversation_turn_by_turn(lm, ref):
    tok = lm[1]
    env = TextGenEnv(**kwargs(lm, ref), render_mode="ansi")
    env.reset(options={"environment_seed": 1})
    for a in ("good", "<eos>", "fun"):
        env.step(tok.convert_tokens_to_ids(a))
    assert env.render().splitlines() == ["user: the movie was", "assistant: good", "user: it was", "assistant: fun"]


def test_environment_tokens_are_marked_and_never_actions(lm, ref):
    env = TextGenVectorEnv(3, **kwargs(lm, ref, array_backend="torch"))
    env.reset(seed=0, options={"environment_seeds": [0, 1, 2]})  # 1, 2 and 3 turns
    ep = env.play(torch.Generator().manual_seed(0), sample_tokens)
    assert ep.turns.tolist() == [1, 2, 3] and ep.terminated.all()
    reply = lm[1]("it was", add_special_tokens=False)["input_ids"]
    for i in range(3):
        ctx = ep.context_mask[i]
        assert int(ctx.sum()) == len(reply) * i  # one reply between each two turns
        assert not (ep.mask[i] & ctx).any()
        assert (ep.policy_logprob[i][ctx] == 0).all() and (ep.ref_logprob[i][ctx] == 0).all()
        assert (ep.reward[i][ctx] == 0).all()
        assert ep.tokens[i][ctx].tolist() == reply * i
    assert ep.scores.tolist() == env.engine.conv.returns.tolist()  # no reward_fn: the environment's rewards


def test_play_equals_stepping_token_for_token(lm, ref):
    """play() (one call, the reference in one teacher-forced forward) and step() with the same sampled actions."""
    played = TextGenVectorEnv(3, **kwargs(lm, ref, array_backend="torch"))
    stepped = TextGenVectorEnv(3, **kwargs(lm, ref, array_backend="torch"))
    for env in (played, stepped):
        env.reset(seed=0, options={"environment_seeds": [2, 0, 1]})
    ep = played.play(torch.Generator().manual_seed(3), sample_tokens)
    gen, done = torch.Generator().manual_seed(3), np.zeros(3, dtype=bool)
    rewards: list[list[float]] = [[], [], []]
    responses, scores, messages = [None] * 3, [None] * 3, [None] * 3
    while not done.all():
        a = sample_tokens(stepped.next_token_logits(), gen)
        _, r, term, trunc, info = stepped.step(a)
        ended = (term | trunc).cpu().numpy()
        for i in np.flatnonzero(~done):
            rewards[i].append(float(r[i]))
            if ended[i]:
                responses[i], scores[i] = info["response"][i], info["score"][i]
                messages[i] = list(stepped.engine.conv.messages[i])  # before NEXT_STEP starts its next episode
        done |= ended
    for i in range(3):
        torch.testing.assert_close(ep.reward[i][ep.mask[i]], torch.tensor(rewards[i]), atol=1e-5, rtol=0)
    assert responses == ep.responses and scores == ep.scores.tolist()
    assert played.engine.conv.messages == messages


def test_vector_rows_match_single_envs_over_different_numbers_of_turns(lm, ref):
    vec = TextGenVectorEnv(3, **kwargs(lm, ref))
    singles = [TextGenEnv(**kwargs(lm, ref)) for _ in range(3)]
    seeds = [2, 0, 1]  # 3, 1 and 2 turns
    obs_v, _ = vec.reset(seed=0, options={"environment_seeds": seeds})
    for env, s in zip(singles, seeds, strict=True):
        env.reset(seed=0, options={"environment_seed": s})
    ended = [False] * 3
    for a in schedule(20, 3, lm[1].eos_token_id, seed=5):
        obs_v, r_v, term_v, trunc_v, info_v = vec.step(a)
        for i, env in enumerate(singles):
            if ended[i]:
                continue
            obs_s, r_s, term_s, trunc_s, info_s = env.step(int(a[i]))
            assert np.array_equal(obs_s["input_ids"], obs_v["input_ids"][i])
            assert np.array_equal(obs_s["attention_mask"], obs_v["attention_mask"][i])
            assert r_s == pytest.approx(r_v[i], abs=1e-5) and (term_s, trunc_s) == (term_v[i], trunc_v[i])
            assert info_s["turns"] == info_v["turns"][i]
            ended[i] = term_s or trunc_s
            if ended[i]:
                assert info_s["response"] == info_v["response"][i] and info_s["score"] == info_v["score"][i]
        if all(ended):
            break
    assert all(ended) and sorted(e.engine.conv.turns[0] for e in singles) != [1, 1, 1]


def test_single_and_vector_env_agree_over_autoreset_episodes(lm, ref):
    """N=1 vector env and the single env draw the same environment seeds from the same np_random: the same
    trajectories over several episodes of different lengths."""
    single, vec = TextGenEnv(**kwargs(lm, ref)), TextGenVectorEnv(1, **kwargs(lm, ref))
    single.reset(seed=4)
    vec.reset(seed=4)
    single_done, episodes, turns = False, 0, set()
    for a in schedule(80, 1, lm[1].eos_token_id, seed=1)[:, 0]:
        obs_v, r_v, term_v, trunc_v, info_v = vec.step(np.array([a]))
        if single_done:  # NEXT_STEP: the vector env starts the next episode in this step
            obs_s, _ = single.reset()
            assert np.array_equal(obs_s["input_ids"], obs_v["input_ids"][0])
            single_done = False
            continue
        obs_s, r_s, term_s, trunc_s, info_s = single.step(a)
        assert np.array_equal(obs_s["input_ids"], obs_v["input_ids"][0]) and r_s == r_v[0]
        single_done = term_s or trunc_s
        if single_done:
            episodes += 1
            turns.add(int(info_s["turns"]))
            assert info_s["response"] == info_v["response"][0]
    assert episodes >= 3 and len(turns) >= 2


def test_the_budget_truncates_and_a_reply_that_does_not_fit_ends_the_episode(lm, ref):
    env = TextGenEnv(**kwargs(lm, ref, max_new_tokens=5, max_turn_tokens=3))
    env.reset(options={"environment_seed": 2})  # three turns wanted
    for _ in range(2):
        *_, term, trunc, info = env.step(5)
    _, _, term, trunc, info = env.step(6)  # turn 1 ends at its limit (3 tokens) and the reply fills 5 of 5
    assert trunc and not term and info["turns"] == 1  # no room for the reply and a token after it
    env = TextGenEnv(**kwargs(lm, ref, max_new_tokens=7, max_turn_tokens=3))
    env.reset(options={"environment_seed": 2})
    for _ in range(3):  # turn 1 ends at its limit; the reply fits: 3 + 2 tokens of 7
        *_, term, trunc, info = env.step(5)
    assert not (term or trunc) and info["turns"] == 1
    *_, term, trunc, info = env.step(5)
    assert not (term or trunc)
    *_, term, trunc, info = env.step(5)  # the 7th token: the budget ends the episode in the middle of turn 2
    assert trunc and not term and info["turns"] == 1 and env.engine.conv.envs[0].env.heard == ["{0} {0} {0}".format(
        lm[1].decode([5]))]


def test_reward_fn_scores_the_whole_conversation_beside_the_environments_reward(lm, ref):
    env = TextGenEnv(**kwargs(lm, ref, reward_fn=KeywordReward(["was"]), kl_coef=0.0))
    env.reset(options={"environment_seed": 1})
    tok = lm[1]
    good = tok.convert_tokens_to_ids("good")
    for a in (good, tok.eos_token_id, 5, 6, 7):
        _, r, term, trunc, info = env.step(a)
    assert term and info["turns"] == 2
    assert "it was" in info["response"]  # the environment's reply is part of what reward_fn reads
    assert info["score"] == pytest.approx(1.0 + KeywordReward(["was"])([""], [info["response"]])[0])
    assert r == pytest.approx(KeywordReward(["was"])([""], [info["response"]])[0])  # last turn: no "good"


def test_gym_make_and_the_checkers_pass(lm, ref):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make("TextGen-v0", **kwargs(lm, ref))
    check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(TextGenEnv(**kwargs(lm, ref)), warn=False)


def test_bad_settings_are_refused_at_the_boundary(lm, ref):
    with pytest.raises(ValueError, match="prompts=None"):
        TextGenEnv(**kwargs(lm, ref, prompts=["the movie"]))
    with pytest.raises(ValueError, match="environment="):
        TextGenEnv(model=lm[0], tokenizer=lm[1], max_turn_tokens=4)
    with pytest.raises(ValueError, match="max_turn_tokens"):
        TextGenEnv(**kwargs(lm, ref, max_turn_tokens=0))
    with pytest.raises(EnvironmentSpecError, match="class or a zero-argument factory"):
        TextGenVectorEnv(2, **kwargs(lm, ref, environment=Quiz())).reset(seed=0)

    class Long(Quiz):
        def reset(self, seed=None, options=None):
            super().reset(seed=seed)
            return "the movie was " * 5, {}

    with pytest.raises(PromptTooLongError, match="first observation"):
        TextGenEnv(**kwargs(lm, ref, environment=Long)).reset(seed=0)
    env = TextGenEnv(**kwargs(lm, ref))
    with pytest.raises(ValueError, match="environment seeds"):
        env.reset(options={"prompt": "the movie"})


def test_chat_template_turns_and_the_end_of_turn_token():
    words = [*DEFAULT_WORDS, "<|user|>", "<|assistant|>", "<eot>"]
    tok = make_tiny_tokenizer(words)
    tok.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>", "<eot>"]})
    tok.chat_template = ("{% for m in messages %}<|{{ m.role }}|> {{ m.content }} <eot> {% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|> {% endif %}")
    fmt = TurnFormat(tok)
    eot = tok.convert_tokens_to_ids("<eot>")
    assert fmt.end_ids == (tok.eos_token_id, eot)
    text, ids = fmt.prompt("the movie")
    assert tok.convert_ids_to_tokens(ids) == ["<|user|>", "the", "movie", "<eot>", "<|assistant|>"]
    closed = tok.convert_ids_to_tokens(fmt.reply("it was", closed=True))
    assert closed == ["<|user|>", "it", "was", "<eot>", "<|assistant|>"]  # the policy wrote <eot> itself
    cut = tok.convert_ids_to_tokens(fmt.reply("it was", closed=False))
    assert cut == ["<eot>", "<|user|>", "it", "was", "<eot>", "<|assistant|>"]  # closed for it at the turn limit
    assert TurnFormat(tok, end_of_turn=["<eot>"]).end_ids == (eot,)
    with pytest.raises(ValueError, match="2 tokens"):
        TurnFormat(tok, end_of_turn=["the movie"])
