"""`rlhf-gym text --algo sb3-ppo|sb3-a2c`: unmodified SB3 inside the text RLHF pipeline, same summary as native."""

import json

import pytest

from agents.loop.text_rlhf import IMPROVERS, TextRLHFConfig, run_text_rlhf
from rewardmodels.text_teachers import KeywordTeacher
from tests.agents.lm_fixtures import PROMPTS, TARGET_WORD
from textenv.testing import make_tiny_lm

SUMMARY_KEYS = ("oracle_score_before", "oracle_score_after", "kl_to_ref", "win_rate_vs_ref", "labels_used", "wall_s")


@pytest.mark.parametrize("algo", ["sb3-ppo", "sb3-a2c"])
def test_sb3_algorithms_run_the_pipeline_and_report_the_native_summary(algo, tmp_path):
    assert algo in IMPROVERS
    model, tokenizer = make_tiny_lm()
    config = TextRLHFConfig(
        algo=algo, max_new_tokens=4, max_prompt_tokens=4, num_pairs=16, rm_epochs=1, iterations=2,
        learning_rate=1e-3, num_envs=8, eval_prompts=2, eval_samples=2, eval_every=1,
        extra={"n_envs": 4, "n_steps": 8, **({"batch_size": 16, "n_epochs": 1} if algo == "sb3-ppo" else {})},
    )
    before = [p.detach().clone() for p in model.parameters()]
    result = run_text_rlhf(config, tmp_path / algo, model, tokenizer, PROMPTS[:4], PROMPTS[4:],
                           KeywordTeacher([TARGET_WORD], normalize=True))
    summary = json.loads((tmp_path / algo / "summary.json").read_text())
    for key in SUMMARY_KEYS:
        assert key in summary, key
    assert summary["tokens_seen"] == 2 * 8 * 4  # the native budget in tokens
    assert any(not p.equal(q) for p, q in zip(before, model.parameters(), strict=True))
    assert (tmp_path / algo / "curves.png").exists()
    logged = [json.loads(line) for line in (tmp_path / algo / "metrics.jsonl").read_text().splitlines()]
    assert any("env/score_mean" in row for row in logged)
    assert result.summary["algo"] == algo
