"""The learner lives across rounds (a 2-round run on an unchanged reward is the uninterrupted run; its state goes
through a checkpoint), gold and proxy against KL in every text run with a teacher, and best-of-n (``--algo bon``)."""

import json
import math

import numpy as np
import pytest
import torch

from agents.loop.text.config import TextRLHFConfig
from agents.loop.text.loop import LEARNER_FILE, build_text_loop
from agents.loop.text.run import run_text_rlhf
from rewardmodels.text.teachers import KeywordTeacher, SentimentTeacher, repetition
from tests.agents.lm_fixtures import PROMPTS, TARGET_WORD, snapshot
from textenv.testing import make_tiny_lm

TINY = dict(max_new_tokens=6, max_prompt_tokens=4, rm_epochs=2, rm_learning_rate=3e-3, learning_rate=1e-2,
            num_envs=8, group_size=4, eval_prompts=2, eval_samples=2, eval_every=0, kl_coef=0.05, num_pairs=12)


def word_reward(prompts, responses):  # a fixed reward: the learner sees the same function every round
    return torch.tensor([float(r.split().count(TARGET_WORD)) + 0.1 * len(r.split()) for r in responses])


def agent_after(tmp_path, name, rounds_of, algo, **overrides):
    model, tokenizer = make_tiny_lm()
    cfg = TextRLHFConfig(**{**TINY, "algo": algo, "iterations": sum(rounds_of), **overrides})
    _, agent = build_text_loop(cfg, tmp_path / name, model, tokenizer, PROMPTS[:4], PROMPTS[4:],
                               KeywordTeacher([TARGET_WORD], normalize=True))
    agent.set_reward_fn(word_reward)
    for its in rounds_of:
        agent.learn(its)
    return agent


@pytest.mark.parametrize(("algo", "extra"), [("ppo", {"kl_target": 0.5}), ("grpo", {}), ("rloo", {})])
def test_two_rounds_on_an_unchanged_reward_equal_one_uninterrupted_run(tmp_path, algo, extra):
    split = agent_after(tmp_path, "split", [2, 2], algo, **extra)
    whole = agent_after(tmp_path, "whole", [4], algo, **extra)
    a, b = snapshot(split.ctx.policy), snapshot(whole.ctx.policy)
    assert all(torch.equal(a[k], b[k]) for k in a)  # Adam's moments and every random stream went on
    if algo == "ppo":  # the value head and the adaptive KL penalty too
        assert all(torch.equal(x, y) for x, y in zip(split.learner.agent.value_head.state_dict().values(),
                                                     whole.learner.agent.value_head.state_dict().values(), strict=True))
        assert split.ctx.kl.value == whole.ctx.kl.value != 0.05
    assert split.step == whole.step == 4


def test_the_learner_goes_through_a_checkpoint(tmp_path):
    agent = agent_after(tmp_path, "a", [2], "ppo", kl_target=0.5)
    agent.save(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / LEARNER_FILE).is_file()
    again = agent_after(tmp_path, "b", [], "ppo", kl_target=0.5, iterations=2)
    again.load(tmp_path / "ckpt")
    state, saved = again.learner.agent.optimizer.state_dict(), agent.learner.agent.optimizer.state_dict()
    assert [v["step"] for v in state["state"].values()] == [v["step"] for v in saved["state"].values()]
    assert again.learner.step == 2 and again.ctx.kl.value == agent.ctx.kl.value
    agent.learn(1)
    again.learn(1)  # the resumed learner takes the same step as the one that never stopped
    a, b = snapshot(agent.ctx.policy), snapshot(again.ctx.policy)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_with_a_teacher_logs_gold_and_proxy_against_kl(tmp_path):
    model, tokenizer = make_tiny_lm()
    cfg = TextRLHFConfig(**{**TINY, "algo": "grpo", "iterations": 4, "eval_every": 2})
    run_text_rlhf(cfg, tmp_path / "run", model, tokenizer, PROMPTS[:4], PROMPTS[4:],
                  KeywordTeacher([TARGET_WORD], normalize=True))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/proxy_score" in r]
    assert len(evals) >= 2 and all({"eval/oracle_score", "eval/kl_to_ref", "eval/sqrt_kl"} <= set(r) for r in evals)
    assert all(r["eval/sqrt_kl"] == pytest.approx(math.sqrt(max(r["eval/kl_to_ref"], 0))) for r in evals)


def test_best_of_n_keeps_the_proxys_best_and_has_the_analytic_kl(tmp_path):
    model, tokenizer = make_tiny_lm()
    cfg = TextRLHFConfig.for_algo("bon", **{**TINY, "iterations": 3})
    before = snapshot(model)
    result = run_text_rlhf(cfg, tmp_path / "bon", model, tokenizer, PROMPTS[:4], PROMPTS[4:],
                           KeywordTeacher([TARGET_WORD], normalize=True))
    rows = [json.loads(line) for line in (tmp_path / "bon" / "metrics.jsonl").read_text().splitlines()]
    curve = {r["step"]: r for r in rows if "eval/proxy_score" in r and r["step"] > 0}
    for k in (1, 2, 3):
        n = 2**k
        assert curve[k]["eval/kl_to_ref"] == pytest.approx(math.log(n) - (n - 1) / n)
    proxies = [curve[k]["eval/proxy_score"] for k in (1, 2, 3)]
    assert proxies == sorted(proxies)  # the best of more draws (the same draws and more) scores higher or equal
    assert all(torch.equal(v, before[k]) for k, v in snapshot(model).items())  # nothing trained
    assert result.summary["best_of"] == 8 and result.summary["kl_to_ref"] == pytest.approx(math.log(8) - 7 / 8)


def test_the_repetition_penalised_teacher():
    assert repetition("great great great") == pytest.approx(2 / 3) and repetition("") == 0.0
    plain, hard = SentimentTeacher(), SentimentTeacher(repetition_penalty=1.0)
    repeated, varied = "great great great great", "a great and fun movie"
    assert plain.score([""], [repeated])[0] > plain.score([""], [varied])[0]  # VADER alone: repeating wins
    assert hard.score([""], [repeated])[0] < hard.score([""], [varied])[0]  # the harder teacher: it loses
    assert np.isnan(hard.label([""], [repeated], [varied])).sum() == 0
    with pytest.raises(ValueError, match="repetition_penalty"):
        SentimentTeacher(repetition_penalty=-1.0)


def test_the_benchmarks_matched_kl_comparison_by_hand():
    from benchmarks.text_overoptimisation import binned, matched

    one_shot = [(0.5, 0.2, 1.0), (1.5, 0.6, 2.0), (1.8, 0.4, 2.5), (4.2, 0.1, 3.0)]  # (sqrt KL, gold, proxy)
    online = [(0.4, 0.3, 0.0), (1.2, 0.7, 0.0), (2.5, 0.9, 0.0)]
    assert binned(one_shot) == {0: 0.2, 1: pytest.approx(0.5), 4: 0.1}
    gold_one, gold_onl, bins = matched(one_shot, online)  # bins 0 and 1 are common
    assert (gold_one, gold_onl, bins) == (pytest.approx((0.2 + 0.5) / 2), pytest.approx((0.3 + 0.7) / 2), 2)
    assert matched(one_shot, [(9.0, 1.0, 0.0)])[2] == 0
