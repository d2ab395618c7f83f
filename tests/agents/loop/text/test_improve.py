"""`rlhf-gym text --algo sb3-ppo|sb3-a2c`: unmodified SB3 inside the text RLHF pipeline, same summary as native."""

import json
import math

import pytest
import torch

from agents.loop.text.improve import make_learner, make_text_vec_env
from agents.loop.text.run import TextRLHFConfig, TextRLHFContext, run_text_rlhf
from agents.rundir import RunDir
from rewardmodels.text.teachers import KeywordTeacher
from tests.agents.lm_fixtures import PROMPTS, TARGET_WORD, changed, snapshot
from textenv.models import frozen_copy
from textenv.testing import make_tiny_lm


@pytest.mark.parametrize("algo", ["sb3-ppo", "sb3-a2c"])
def test_sb3_algorithms_run_the_pipeline_and_report_the_native_summary(algo, tmp_path):
    model, tokenizer = make_tiny_lm()
    config = TextRLHFConfig(
        algo=algo, max_new_tokens=4, max_prompt_tokens=4, num_pairs=16, rm_epochs=1, iterations=2,
        learning_rate=1e-3, num_envs=8, eval_prompts=2, eval_samples=2, eval_every=1,
        extra={"n_envs": 4, "n_steps": 8, **({"batch_size": 16, "n_epochs": 1} if algo == "sb3-ppo" else {})},
    )
    before = snapshot(model)
    result = run_text_rlhf(config, tmp_path / algo, model, tokenizer, PROMPTS[:4], PROMPTS[4:],
                           KeywordTeacher([TARGET_WORD], normalize=True))
    summary = json.loads((tmp_path / algo / "summary.json").read_text())
    assert result.summary["algo"] == summary["algo"] == algo
    assert result.summary["tokens_seen"] == summary["tokens_seen"]
    assert changed(before, model)  # SB3 trained the pipeline's own policy object, in place
    # The native budget in tokens (iterations * num_envs * max_new_tokens), as whole SB3 rollouts of 4 envs x 8 steps.
    assert (summary["tokens_seen"], summary["sb3_n_envs"], summary["sb3_n_steps"]) == (2 * 8 * 4, 4, 8)
    assert summary["labels_used"] == 16
    # The oracle is the fraction of response words equal to TARGET_WORD, so its means and the win rate lie in [0, 1].
    for key in ("oracle_score_before", "oracle_score_after", "win_rate_vs_ref"):
        assert 0.0 <= summary[key] <= 1.0, (key, summary[key])
    assert math.isfinite(summary["kl_to_ref"]) and summary["wall_s"] > 0
    logged = [json.loads(line) for line in (tmp_path / algo / "metrics.jsonl").read_text().splitlines()]
    # One row of episode means per rollout (each rollout ends episodes of 4 tokens), then the evaluations.
    score_rows = [row for row in logged if "env/score_mean" in row]
    assert [row["step"] for row in score_rows] == [1, 2]
    assert all(math.isfinite(row["env/score_mean"]) and math.isfinite(row["env/kl_to_ref"]) for row in score_rows)
    eval_steps = [row["step"] for row in logged if "eval/oracle_score" in row]
    assert eval_steps == [0, 1, 2, 2]  # before, every rollout (eval_every=1), after
    assert (tmp_path / algo / "curves.png").exists()
    assert (tmp_path / algo / "tb" / "sb3").is_dir()  # SB3's own scalars go to TensorBoard, not to stdout


def _context(tmp_path, **config) -> TextRLHFContext:
    model, tokenizer = make_tiny_lm()
    cfg = TextRLHFConfig(algo="sb3-a2c", max_new_tokens=4, max_prompt_tokens=4, learning_rate=1e-3, **config)

    def length_reward(prompts, responses):  # varies across responses, so the advantages (and gradients) are not 0
        return torch.tensor([float(len(r)) for r in responses])

    return TextRLHFContext(cfg, model, frozen_copy(model), tokenizer, None, None, length_reward, PROMPTS, [],
                           RunDir(tmp_path, tensorboard=False), torch.device("cpu"), kl=cfg.kl_penalty())


def test_sb3_text_envs_act_with_the_pipeline_policy_against_its_frozen_reference(tmp_path):
    ctx = _context(tmp_path, kl_coef=0.1, seed=3)
    venv = make_text_vec_env(ctx, 3)  # one batched engine behind SB3's VecEnv
    assert venv.num_envs == 3 == venv.engine.num_rows
    assert venv.policy is ctx.policy and venv.engine.ref_model is ctx.ref_model  # no copies: one set of weights
    assert venv.engine.kl_coef == 0.1 and venv.engine.temperature == ctx.config.temperature
    venv.reset()
    assert all(p in PROMPTS for p in venv.engine.prompt_text)  # the pipeline's training prompts


def test_sb3_a2c_step_spends_the_token_budget_and_logs_episode_means(tmp_path):
    ctx = _context(tmp_path, iterations=2, num_envs=4, eval_every=0, extra={"n_envs": 2, "n_steps": 8})
    before = snapshot(ctx.policy)
    ref_before = snapshot(ctx.ref_model)
    extra = make_learner(ctx).learn(ctx.config.iterations)  # cfg.algo is sb3-a2c
    assert extra == {"tokens_seen": 2 * 4 * 4, "sb3_n_envs": 2, "sb3_n_steps": 8}
    assert changed(before, ctx.policy)
    assert not changed(ref_before, ctx.ref_model)  # the KL anchor stays frozen
    rows = ctx.run_dir.read_metrics()
    assert [row["step"] for row in rows] == [1, 2]  # one row per rollout, no evaluation with eval_every=0
    assert all(row["env/score_mean"] > 0 for row in rows)  # mean response length in characters
