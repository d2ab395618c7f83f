"""The B-Pref environments by id: DeepMind Control through dm_control + shimmy, Meta-World; and ``rlhf-gym prefs``
with the pebble and surf presets on them (tiny budgets). Skipped, saying why, where a package is not installed
(``pip install -e ".[bpref]"``)."""

import json
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from agents.cli import main
from agents.loop.control.bpref import BPREF_ENVS, DMC_TASKS, METAWORLD_TASKS

_MISSING = {name: f"{name} is not installed: pip install -e '.[bpref]'" for name in ("shimmy", "metaworld")}


def _need(package: str) -> None:
    pytest.importorskip(package, reason=_MISSING[package])


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("env_id", BPREF_ENVS)
def test_every_bpref_id_makes_a_seeded_flat_env(env_id):
    _need("shimmy" if any(t in env_id for t in DMC_TASKS) else "metaworld")
    env = gym.make(env_id)
    obs, _ = env.reset(seed=3)
    assert obs.dtype == np.float32 and obs.shape == env.observation_space.shape and obs.ndim == 1
    again, _ = gym.make(env_id).reset(seed=3)
    assert np.array_equal(obs, again)  # seeded resets: the same start (Meta-World: the same goal)
    _, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert isinstance(float(reward), float) and not terminated and not truncated
    assert env.spec.max_episode_steps == (1_000 if any(t in env_id for t in DMC_TASKS) else 500)
    if any(t in env_id for t in METAWORLD_TASKS):
        assert "success" in info
    env.close()


@pytest.mark.parametrize("env_id", ["BPref/walker-walk-v0", "BPref/button-press-v3"])
def test_gymnasiums_env_checker_passes(env_id):
    _need("shimmy" if "walker" in env_id else "metaworld")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Meta-World declares bounds its observations leave (its own, not ours)
        check_env(gym.make(env_id), skip_render_check=True)


def test_metaworlds_expert_solves_button_press_on_mujoco_4():
    """The weld-constraint shim (``metaworld_mujoco4_welds``) leaves Meta-World's physics working: its scripted
    expert presses the button."""
    _need("metaworld")
    from metaworld.policies import SawyerButtonPressV3Policy

    env, expert = gym.make("BPref/button-press-v3"), SawyerButtonPressV3Policy()
    for seed in range(2):
        obs, _ = env.reset(seed=seed)
        success = 0.0
        for _ in range(500):
            obs, _, terminated, truncated, info = env.step(expert.get_action(obs))
            success = max(success, info["success"])
            if terminated or truncated:
                break
        assert success == 1.0


TINY_SAC = json.dumps({"learning_starts": 200, "batch_size": 64, "policy_kwargs": {"net_arch": [16, 16]}})


@pytest.mark.parametrize(("preset", "env_id", "package"), [("pebble", "BPref/walker-walk-v0", "shimmy"),
                                                           ("surf", "BPref/button-press-v3", "metaworld")])
def test_prefs_runs_the_presets_on_bpref_envs_by_id(preset, env_id, package, capsys):
    _need(package)
    argv = ["prefs", "--preset", preset, "--env", env_id, "--labels", "20", "--steps", "3000", "--rounds", "2",
            "--initial-steps", "1000", "--reward-epochs", "2", "--eval-episodes", "1", "--eval-every", "0",
            "--hyperparams", TINY_SAC, "--out", "run", "--no-progress"]
    main(argv)
    summary = json.loads(open("run/summary.json").read())
    assert summary["preset"] == preset and summary["labels_used"] == 20 and summary["env_steps"] == 3000
    config = json.loads(open("run/config.json").read())["config"]
    assert config["initial_policy"] == "explore" and config["segment_len"] == 50
    metrics = [json.loads(line) for line in open("run/metrics.jsonl")]
    assert metrics[0]["explore/steps"] == 1000
    if preset == "surf":
        pools = [m["reward_model/unlabelled_pairs"] for m in metrics if "reward_model/unlabelled_pairs" in m]
        assert config["segment_context"] == 5 and pools[-1] == 200  # 10 per label (SURF on Meta-World)
