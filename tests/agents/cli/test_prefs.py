import argparse
import json

import pytest

from agents.cli import main
from agents.cli import prefs as prefs_cmd
from agents.loop.control.config import PrefsConfig
from agents.loop.control.run import build_loop
from rewardmodels.feedback.human import HumanLabeller, MixedLabeller

TINY = ["--env", "CartPole-v1", "--labels", "12", "--steps", "2048", "--rounds", "2", "--initial-steps", "512",
        "--segment-len", "20", "--ensemble", "2", "--reward-epochs", "5", "--eval-episodes", "3", "--eval-every", "1",
        "--no-progress", "--hyperparams", '{"n_envs": 4, "n_steps": 64, "batch_size": 128, "n_epochs": 2}']


def parse(argv):
    parser = argparse.ArgumentParser()
    prefs_cmd.add_parser(parser)
    return parser.parse_args(argv)


def test_cli_writes_summary_with_the_required_keys_on_a_tiny_budget(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["prefs", *TINY, "--out", str(out), "--seed", "3"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("true_return_mean", "true_return_std", "labels_used", "env_steps", "wall_s"):
        assert key in summary
    assert summary["labels_used"] == 12 and summary["env_steps"] <= 2048 and summary["eval_episodes"] == 3
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["seed"] == 3 and config["config"]["hyperparams"]["n_envs"] == 4
    assert config["config"]["labels"] == 12 and config["config"]["initial_steps"] == 512
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG" and any((out / "tb").iterdir())
    printed = capsys.readouterr().out
    assert "true_return_mean" in printed and str(out) in printed
    # a finished run is not overwritten by accident; --resume on it just re-evaluates and keeps the budget
    assert main(["prefs", *TINY, "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["prefs", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text())["labels_used"] == 12


@pytest.mark.parametrize("argv, message", [
    (["--env", "CartPol-v1"], "did you mean: CartPole-v1"),
    (["--algo", "trpo"], "choose one of: ppo, a2c, sac, dqn, td3, ddpg"),
    (["--algo", "dqn", "--env", "Pendulum-v1"], "algorithms that can: ppo, a2c, sac, td3, ddpg"),
    (["--teacher", "psychic"], "unknown teacher"),
    (["--selection", "best"], "selection"),
    (["--labels", "0"], "labels must be an integer >= 1"),
    (["--threads", "-1"], "--threads must be between 0"),
    (["--threads", "100000"], "--threads must be between 0"),
    (["--labeller", "mixed", "--human-fraction", "1.5"], "human_fraction must be a finite number >= 0 and <= 1"),
    (["--labeller", "human", "--label-timeout", "0"], "label_timeout must be a finite number > 0"),
    (["--labeller", "human", "--env", "Hopper-v5"], "no state-from-observation rule"),
    (["--preset", "christiano-atari", "--env", "Hopper-v5"], "christiano-atari needs an ALE env"),
    (["--preset", "christiano-mujoco", "--env", "Hopper-v5", "--labeller", "human"], "no state-from-observation"),
])
def test_cli_bad_input_is_a_specific_error(tmp_path, capsys, argv, message):
    assert main(["prefs", *argv, "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert message in capsys.readouterr().err


def test_cli_resume_without_checkpoint_is_an_error(tmp_path, capsys):
    assert main(["prefs", "--out", str(tmp_path / "nothing"), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_defaults_are_the_embedded_cartpole_run_and_options_override_them():
    cfg = prefs_cmd.config_from_args(parse([]))
    assert (cfg.env, cfg.algo, cfg.labels, cfg.steps, cfg.eval_episodes) == ("CartPole-v1", "ppo", 150, 50_000, 20)
    cfg = prefs_cmd.config_from_args(parse(["--env", "Pendulum-v1", "--teacher", "noisy", "--teacher-beta", "2",
                                            "--selection", "random", "--ensemble", "5", "--segment-len", "25"]))
    assert cfg.algo == "sac" and cfg.teacher == "noisy" and cfg.teacher_params == {"beta": 2.0}
    assert (cfg.selection, cfg.ensemble, cfg.segment_len) == ("random", 5, 25)


def test_cli_preset_runs_the_papers_protocol_end_to_end(tmp_path, capsys):
    out = tmp_path / "preset"
    argv = ["prefs", "--preset", "christiano-mujoco", "--env", "InvertedPendulum-v5", "--labels", "10", "--steps",
            "3000", "--eval-episodes", "2", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["preset"] == "christiano-mujoco" and summary["labels_used"] == 10
    assert json.loads((out / "config.json").read_text())["config"]["schedule_c_steps"] == 2e6
    assert '"preset": "christiano-mujoco"' in capsys.readouterr().out


def test_same_seed_same_run_and_the_labeller_choice_reaches_the_loop(tmp_path):

    cfg = prefs_cmd.config_from_args(parse([*TINY, "--seed", "5"]))
    runs = []
    for name in ("a", "b"):
        loop = build_loop(cfg, tmp_path / name)
        runs.append((loop.run(), loop.dataset))
        loop.agent.close()
    (s1, d1), (s2, d2) = runs
    assert s1["true_return_mean"] == s2["true_return_mean"]  # the random initial policy is seeded too
    assert d1.true_returns()[0].tolist() == d2.true_returns()[0].tolist() and d1.labels.tolist() == d2.labels.tolist()
    human = build_loop(PrefsConfig.for_env("CartPole-v1", labeller="human", steps=2048, labels=4), tmp_path / "h")
    mixed = build_loop(PrefsConfig.for_env("CartPole-v1", labeller="mixed", human_fraction=0.25, steps=2048,
                                           labels=4), tmp_path / "m")
    assert isinstance(human.labeller, HumanLabeller) and human.labeller.run_dir == tmp_path / "h"
    assert isinstance(mixed.labeller, MixedLabeller) and mixed.labeller.human_fraction == 0.25
    for loop in (human, mixed):
        loop.agent.close()
