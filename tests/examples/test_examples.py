"""Every script in examples/ runs end to end (a fresh process, as a user runs it) on a tiny budget."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

#: script -> tiny-budget arguments (each example's own defaults are its "small budget" for a user's CPU)
TINY = {
    "textgen_env.py": ["--episodes", "1", "--num-envs", "2", "--max-new-tokens", "6"],
    "reward_model_from_preferences.py": ["--steps", "2000", "--pairs", "150", "--epochs", "15"],
    "cartpole_preferences.py": ["--labels", "20", "--steps", "3000", "--rounds", "2"],
    "christiano_mujoco.py": ["--labels", "10", "--steps", "1500", "--eval-episodes", "2"],
    "text_rlhf.py": ["--algo", "grpo", "--iterations", "2", "--pairs", "16", "--eval-prompts", "4"],
    "sb3_on_textgen.py": ["--algo", "a2c", "--steps", "64", "--eval-episodes", "2"],
    "verifiable_reward.py": ["--iterations", "2", "--eval-prompts", "4"],
}


def run_example(script: str, args: list[str], out: Path | None) -> str:
    cmd = [sys.executable, str(EXAMPLES / script), *args] + (["--out", str(out)] if out else [])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_every_example_is_covered():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(TINY)


def run_dir_summary(out: Path) -> dict:
    for name in ("config.json", "summary.json", "curves.png", "metrics.jsonl"):
        assert (out / name).is_file(), f"{out} lacks {name}"
    assert (out / "checkpoints").is_dir() and any((out / "tb").iterdir())
    return json.loads((out / "summary.json").read_text())


def test_textgen_env_example_plays_episodes():
    stdout = run_example("textgen_env.py", TINY["textgen_env.py"], None)
    assert "prompt:" in stdout and "response:" in stdout and "vector env: " in stdout


def test_reward_model_example_learns_the_true_preferences(tmp_path):
    run_example("reward_model_from_preferences.py", TINY["reward_model_from_preferences.py"], tmp_path)
    s = run_dir_summary(tmp_path)
    assert s["true_agreement_after"] > 0.85 and s["true_agreement_after"] > s["true_agreement_before"] + 0.2
    assert (tmp_path / "pairs.npz").is_file() and s["next_queries"] == 20


@pytest.mark.slow
@pytest.mark.parametrize("script", ["cartpole_preferences.py", "christiano_mujoco.py"])
def test_control_examples_write_their_run_directory(script, tmp_path):
    stdout = run_example(script, TINY[script], tmp_path)
    s = run_dir_summary(tmp_path)
    assert s["eval_episodes"] >= 2 and s["labels_used"] > 0 and s["env_steps"] <= int(TINY[script][3])
    assert "true return" in stdout


@pytest.mark.slow
def test_text_rlhf_example_writes_its_run_directory(tmp_path):
    stdout = run_example("text_rlhf.py", TINY["text_rlhf.py"], tmp_path)
    s = run_dir_summary(tmp_path)
    assert s["algo"] == "grpo" and s["labels_used"] == 16
    assert {"oracle_score_before", "oracle_score_after", "kl_to_ref", "win_rate_vs_ref"} <= set(s)
    assert "before" in stdout and "after" in stdout


@pytest.mark.slow
def test_sb3_example_trains_and_saves_the_model(tmp_path):
    stdout = run_example("sb3_on_textgen.py", TINY["sb3_on_textgen.py"], tmp_path)
    s = run_dir_summary(tmp_path)
    assert s["algo"] == "sb3-a2c" and s["env_steps"] == 64
    assert (tmp_path / "checkpoints" / "a2c_text.zip").is_file() and "SB3 A2C" in stdout


@pytest.mark.slow
def test_verifiable_reward_example_checks_completions_against_each_prompts_column(tmp_path):
    stdout = run_example("verifiable_reward.py", TINY["verifiable_reward.py"], tmp_path / "run")
    s = run_dir_summary(tmp_path / "run")
    assert s["labels_used"] == 0 and s["judge"] == "reward functions (says_target)"
    assert 0 <= s["reward_functions_after"] <= 1 and "reward functions" in stdout
    assert not (tmp_path / "run" / "reward_model").exists()  # no labels, no reward model
