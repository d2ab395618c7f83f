import json
import math

import numpy as np
import pytest

from agents.loop.text_rlhf import ALGO_DEFAULTS, IMPROVERS, TextRLHFConfig, run_text_rlhf
from rewardmodels.text_teachers import KeywordTeacher
from tests.agents.lm_fixtures import PROMPTS, TARGET_WORD
from textenv.testing import make_tiny_lm

SUMMARY_KEYS = ("oracle_score_before", "oracle_score_after", "kl_to_ref", "win_rate_vs_ref", "labels_used", "wall_s")


def tiny_run(algo, tmp_path, **overrides):
    model, tokenizer = make_tiny_lm()
    fields = {
        "max_new_tokens": 6,
        "max_prompt_tokens": 4,
        "num_pairs": 48,
        "rm_epochs": 2,
        "rm_learning_rate": 3e-3,
        "iterations": 12,
        "learning_rate": 1e-2,
        "num_envs": 16,
        "group_size": 4,
        "eval_prompts": 4,
        "eval_samples": 4,
        "eval_every": 4,
        "kl_coef": 0.01,
        **overrides,
    }
    config = TextRLHFConfig(algo=algo, **fields)
    teacher = KeywordTeacher([TARGET_WORD], normalize=True)
    return run_text_rlhf(config, tmp_path / algo, model, tokenizer, PROMPTS[:4], PROMPTS[4:], teacher)


@pytest.mark.parametrize("algo", ["ppo", "grpo", "rloo"])
def test_pipeline_writes_the_run_directory_and_improves_the_oracle(algo, tmp_path):
    result = tiny_run(algo, tmp_path)
    run = tmp_path / algo
    summary = json.loads((run / "summary.json").read_text())
    for key in SUMMARY_KEYS:
        assert key in summary, key
    assert summary["labels_used"] == 48 and 0 < summary["improve_wall_s"] < summary["wall_s"]
    assert summary["oracle_score_after"] > summary["oracle_score_before"] + 0.1, summary
    assert summary["win_rate_vs_ref"] > 0.5
    assert math.isfinite(summary["kl_to_ref"]) and summary["kl_to_ref"] > 0
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (run / "pairs.jsonl").exists() and (run / "checkpoints" / "last" / "model.safetensors").exists()
    keys = set().union(*(row.keys() for row in result.run_dir.read_metrics()))
    assert {"eval/oracle_score", "env/score_mean", "env/kl_to_ref", "rm/loss"} <= keys


def test_dpo_pipeline_runs_on_the_labelled_pairs(tmp_path):
    result = tiny_run("dpo", tmp_path, iterations=3, learning_rate=3e-3, kl_coef=0.1)
    assert result.summary["eval/reward_accuracy"] > 0.5
    assert result.summary["oracle_score_after"] > result.summary["oracle_score_before"]
    assert "rm_loss" not in result.summary  # DPO needs no reward model


def test_kto_pipeline_learns_from_the_pairs_as_unpaired_examples(tmp_path):
    result = tiny_run("kto", tmp_path, iterations=3, learning_rate=3e-3, kl_coef=0.1)
    s = result.summary
    assert s["eval/reward_margin"] > 0 and s["eval/rewards_desirable"] > s["eval/rewards_undesirable"]
    assert s["kto_steps"] > 0 and "rm_loss" not in s  # KTO needs no reward model
    assert s["oracle_score_after"] > s["oracle_score_before"], s


def test_config_validation_and_registry():
    assert {"ppo", "grpo", "rloo", "dpo", "kto"} <= set(IMPROVERS)
    with pytest.raises(ValueError, match="algo must be one of"):
        TextRLHFConfig(algo="trpo")
    with pytest.raises(ValueError, match="num_pairs must be >= 1"):
        TextRLHFConfig(num_pairs=0)
    assert TextRLHFConfig.for_algo("grpo").group_size >= 2
    assert set(IMPROVERS) == set(ALGO_DEFAULTS)  # every algorithm the config accepts has an improvement step


def test_cli_text_builds_the_config_from_flags(tmp_path, monkeypatch, capsys):
    import agents.cli.text as text_cli
    import agents.loop.text_rlhf as text_rlhf
    from agents.cli import main

    seen = {}

    def fake_run(config, out):
        seen.update(config=config, out=out)
        ev = text_rlhf.Evaluation(["p"], ["r"], np.zeros(1), np.zeros(1))
        summary = {
            "oracle_score_before": 0.0,
            "oracle_score_after": 0.5,
            "kl_to_ref": 1.0,
            "win_rate_vs_ref": 0.7,
            "labels_used": 8,
            "wall_s": 1.0,
        }
        return text_rlhf.TextRLHFResult(summary, ev, ev, None)

    monkeypatch.setattr(text_cli, "run_text_rlhf", fake_run)
    assert main(["text", "--algo", "grpo", "--out", str(tmp_path), "--iterations", "3", "--lr", "0.01"]) == 0
    config = seen["config"]
    assert (config.algo, config.iterations, config.learning_rate, config.group_size) == ("grpo", 3, 0.01, 8)
    assert "win rate vs ref 0.70" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["text", "--algo", "trpo", "--out", str(tmp_path)])
