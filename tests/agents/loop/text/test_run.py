import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from agents.loop.text.algorithms import TEXT_ALGORITHMS
from agents.loop.text.run import TextRLHFConfig, run_text_rlhf
from rewardmodels.text.lm_reward import LMRewardModel
from rewardmodels.text.preferences import TextPreferencePairs
from rewardmodels.text.teachers import KeywordTeacher
from tests.agents.lm_fixtures import PROMPTS, TARGET_WORD
from textenv.testing import make_tiny_lm

SUMMARY_KEYS = ("oracle_score_before", "oracle_score_after", "kl_to_ref", "win_rate_vs_ref", "labels_used", "wall_s")


def tiny_run(algo, tmp_path, **overrides):
    model, tokenizer = make_tiny_lm()
    tiny_run.model, tiny_run.tokenizer = model, tokenizer
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
    result_state, tokenizer_vocab = tiny_run.model.state_dict(), tiny_run.tokenizer.get_vocab()
    summary = json.loads((run / "summary.json").read_text())
    for key in SUMMARY_KEYS:
        assert key in summary, key
    assert summary["labels_used"] == 48 and 0 < summary["improve_wall_s"] < summary["wall_s"]
    assert summary["oracle_score_after"] > summary["oracle_score_before"] + 0.1, summary
    assert summary["win_rate_vs_ref"] > 0.5
    assert math.isfinite(summary["kl_to_ref"]) and summary["kl_to_ref"] > 0
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert len(TextPreferencePairs.load(run / "pairs.jsonl")) == 48
    # The run directory holds the trained policy (save_pretrained + tokenizer) and the reward model.
    policy = AutoModelForCausalLM.from_pretrained(run / "policy")
    assert all(torch.equal(v, result_state[k]) for k, v in policy.state_dict().items() if k in result_state)
    assert AutoTokenizer.from_pretrained(run / "policy").get_vocab() == tokenizer_vocab
    reward = LMRewardModel.from_pretrained(run / "reward_model")
    assert torch.isfinite(reward(["the movie was"], ["good good"])).all()
    keys = set().union(*(row.keys() for row in result.run_dir.read_metrics()))
    assert {"eval/oracle_score", "env/score_mean", "env/kl_to_ref", "rm/loss"} <= keys
    # every improvement row is stamped with the improvement wall-clock so far (time to a learned reward)
    clock = [row["time/improve_s"] for row in result.run_dir.read_metrics() if "env/score_mean" in row]
    assert clock == sorted(clock) and 0 < clock[-1] <= summary["improve_wall_s"]


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
    assert {"ppo", "grpo", "rloo", "dpo", "kto", "sb3-ppo", "sb3-a2c"} <= set(TEXT_ALGORITHMS)
    with pytest.raises(ValueError, match="algo must be one of"):
        TextRLHFConfig(algo="trpo")
    with pytest.raises(ValueError, match="num_pairs=0 .no labels. needs reward functions"):
        TextRLHFConfig(num_pairs=0)
    assert TextRLHFConfig.for_algo("grpo").group_size >= 2
    for name, algorithm in TEXT_ALGORITHMS.items():  # every trained algorithm builds its own, validated config
        assert (TextRLHFConfig.for_algo(name).agent_config() is None) == (algorithm.kind == "bon"), name


def test_cli_text_builds_the_config_from_flags(tmp_path):
    import argparse

    import agents.cli.text as text_cli
    from agents.cli import main

    parser = argparse.ArgumentParser()
    text_cli.add_parser(parser)
    args = parser.parse_args(["--algo", "grpo", "--out", str(tmp_path), "--iterations", "3", "--lr", "0.01",
                              "--rounds", "3", "--preferences", "p.jsonl"])
    config = text_cli.config_from_args(args)
    assert (config.algo, config.iterations, config.learning_rate, config.group_size) == ("grpo", 3, 0.01, 8)
    assert (config.rounds, config.preferences, config.labeller) == (3, "p.jsonl", "dataset")  # the file labels
    args = parser.parse_args(["--out", str(tmp_path), "--labeller", "human"])
    assert text_cli.config_from_args(args).labeller == "human" and config.num_pairs == 256  # the algo's default
    assert main(["text", "--algo", "trpo", "--out", str(tmp_path)]) == 2  # argparse's error, in one line


def test_a_new_algorithm_is_one_module_and_one_registry_line(tmp_path):
    """A toy algorithm defined in a test module (REINFORCE with the batch-mean baseline on the env's rewards, its KL
    penalty included) registered with one line runs through ``rlhf-gym text --algo``, writes the run directory and
    trains the policy."""
    from agents.cli import main
    from agents.loop.text.algorithms import TextAlgorithm, register_text_algorithm
    from tests.agents.loop.text import toy_algorithm

    register_text_algorithm("toy", TextAlgorithm(toy_algorithm.ToyAgent, "rl", defaults=dict(
        iterations=2, learning_rate=1e-3, kl_coef=0.05, num_envs=8)))
    out = tmp_path / "toy"
    argv = ["text", "--algo", "toy", "--out", str(out), "--pairs", "16", "--max-new-tokens", "6",
            "--eval-prompts", "2", "--samples", "0"]
    try:
        assert main(argv) == 0
    finally:
        del TEXT_ALGORITHMS["toy"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algo"] == "toy" and summary["tokens_seen"] > 0 and summary["labels_used"] == 16
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    toy_rows = [r for r in rows if "losses/toy_loss" in r]
    assert [r["step"] for r in toy_rows] == [1, 2]  # the loop logged what the agent reported, on the run's axis
    assert all(r["env/kl_coef"] == 0.05 for r in toy_rows)  # the run's kl_coef reached the env's reward
    assert toy_algorithm.ToyAgent.updates >= 2  # the registered class trained
    assert (out / "policy" / "model.safetensors").exists() and (out / "curves.png").exists()
    assert not (out / "agent_config.json").exists()  # the agent wrote nothing of its own
