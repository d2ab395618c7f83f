"""The Christiano et al. 2017 presets: the paper's values, the label schedule formula, and tiny end-to-end runs."""

import argparse
import json
import math

import gymnasium as gym
import numpy as np
import pytest

from agents.loop.preference_loop import label_allocation
from agents.loop.presets import (
    ATARI_ENVS,
    MUJOCO_ENVS,
    PresetError,
    add_preset_argument,
    apply_preset,
    build_reward_ensemble,
    load_preset,
    mujoco_segment_len,
    run_cli,
)


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo writes MUJOCO_LOG.TXT (HalfCheetah's deprecation warning) into the cwd


def test_mujoco_preset_holds_the_papers_values():
    p = apply_preset("christiano-mujoco", "Hopper-v5")
    cfg, loop = p.prefs, p.loop_config()
    assert cfg.segment_len == 188  # 1.5 s / dt = 0.008 s
    assert cfg.ensemble == 3 and cfg.selection == "disagreement" and loop.oversample == 10
    assert cfg.initial_label_fraction == 0.25 and loop.initial_policy == "agent"
    assert cfg.reward_hidden == (64, 64) and p.net == "mlp" and p.reward_scale == 1.0
    assert p.fit["noise"] == 0.1 and p.fit["val_fraction"] == pytest.approx(1 / math.e)
    assert p.fit["adaptive_l2"] and tuple(p.fit["l2_target"]) == (1.1, 1.5)
    assert cfg.labels == 700 and p.schedule_c == 2e6
    assert cfg.hyperparams["gamma"] == 0.995 and cfg.hyperparams["gae_lambda"] == 0.97
    ens = build_reward_ensemble(p, gym.spaces.Box(-1, 1, (11,)), gym.spaces.Box(-1, 1, (3,)))
    acts = [m for m in ens.members[0].modules() if hasattr(m, "negative_slope")]
    assert len(ens.members) == 3 and len(acts) == 2 and acts[0].negative_slope == 0.01


def test_segment_length_is_1_5_seconds_capped_by_the_time_limit():
    assert [mujoco_segment_len(e) for e in ("HalfCheetah-v5", "Swimmer-v5", "Reacher-v5")] == [30, 38, 50]
    assert set(MUJOCO_ENVS) >= {"Hopper-v5", "Ant-v5", "InvertedDoublePendulum-v5"}


def test_atari_preset_holds_the_papers_values():
    p = apply_preset("christiano-atari", "ALE/Pong-v5")
    cfg = p.prefs
    assert cfg.env == "AtariPreprocessed/Pong-v5" and p.requested_env == "ALE/Pong-v5"
    assert cfg.segment_len == 25 and p.schedule_c == 5e6
    assert round(cfg.labels * cfg.initial_label_fraction) == 500
    assert p.pretrain_epochs == 200 and p.label_buffer == 3_000 and p.reward_scale == 0.05 and p.net == "cnn"
    assert p.net_kwargs["dropout"] == 0.5 and p.net_kwargs["batch_norm"]
    assert cfg.algo == "a2c" and cfg.hyperparams["n_envs"] == 16 and cfg.hyperparams["n_steps"] == 5
    ppo = apply_preset("christiano-atari", "ALE/Breakout-v5", {"algo": "ppo", "labels": 300})
    assert ppo.prefs.hyperparams["n_steps"] == 128 and ppo.prefs.initial_label_fraction == 1.0  # all 300 up front
    assert len(ATARI_ENVS) == 7


@pytest.mark.parametrize(("name", "env", "c"), [("christiano-mujoco", "HalfCheetah-v5", 2e6),
                                                ("christiano-atari", "ALE/Pong-v5", 5e6)])
def test_label_schedule_follows_c_over_t_plus_c(name, env, c):
    """Labels due by training step t: the integral of a rate proportional to c / (t + c), c in env steps."""
    p = apply_preset(name, env, {"labels": 3_300, "steps": 20_000_000})
    loop = p.loop_config()
    alloc = label_allocation(loop)
    initial, rest = alloc[0], loop.total_labels - alloc[0]
    assert sum(alloc) == 3_300
    horizon = loop.steps_per_round * loop.rounds
    t = loop.steps_per_round * np.arange(1, loop.rounds + 1)
    expected = np.floor(rest * np.log1p(t / c) / np.log1p(horizon / c) + 1e-9)
    np.testing.assert_array_equal(np.cumsum(alloc[1:]), expected)
    if name == "christiano-atari":
        assert initial == 500
    else:
        assert initial == round(0.25 * 3_300)
    # the rate decays as c / (t + c): first round vs last round
    ratio = alloc[1] / alloc[-1]
    assert ratio == pytest.approx((t[-1] + c) / (t[0] + c), rel=0.1)


def test_paper_reward_model_pretrains_then_fits_the_label_buffer():
    from agents.loop.presets import _paper_reward_model_class
    from rewardmodels.ensemble import FitConfig

    seen = []

    class FakeEnsemble:
        fit_count = 0

        def fit(self, dataset, cfg):
            seen.append((len(dataset), cfg.epochs, cfg.steps))
            self.fit_count += 1
            return {}

    class FakeDataset:
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

        def subset(self, sl):
            return FakeDataset(len(range(self.n)[sl]))

    model = _paper_reward_model_class()(FakeEnsemble(), FitConfig(epochs=3), pretrain_epochs=200, label_buffer=10)
    model.fit(FakeDataset(8))
    model.fit(FakeDataset(25))
    assert seen == [(8, 200, None), (10, 3, None)]
    # A.2's rate: 1 label per 10 env steps -> 3,200 new steps = 320 labels = 10 minibatches of 32
    seen.clear()
    clock = {"steps": 5_000}
    model = _paper_reward_model_class()(FakeEnsemble(), FitConfig(epochs=3, batch_size=32), pretrain_epochs=200,
                                        label_buffer=None, fit_rate=0.1, env_steps=lambda: clock["steps"])
    model.fit(FakeDataset(8))
    clock["steps"] += 3_200
    model.fit(FakeDataset(9))
    assert seen == [(8, 200, None), (9, 3, 10)]
    assert apply_preset("christiano-atari", "ALE/Pong-v5").fit_rate == 0.1
    assert apply_preset("christiano-atari", "ALE/Pong-v5", {"reward_epochs": 4}).fit_rate is None


def test_bad_presets_raise_preset_errors():
    with pytest.raises(PresetError, match="unknown preset"):
        apply_preset("christiano-robots", "Hopper-v5")
    with pytest.raises(PresetError, match="christiano-atari"):
        apply_preset("christiano-mujoco", "ALE/Pong-v5")
    with pytest.raises(PresetError, match="ALE env"):
        apply_preset("christiano-atari", "Hopper-v5")


def _tiny_args(out, **kw):
    parser = argparse.ArgumentParser()
    from agents.cli import prefs

    prefs.add_parser(parser)
    add_preset_argument(parser)
    argv = ["--preset", "christiano-mujoco", "--env", "InvertedPendulum-v5", "--labels", "20", "--steps", "700",
            "--rounds", "2", "--initial-steps", "200", "--reward-epochs", "3", "--eval-episodes", "2",
            "--eval-every", "0", "--hyperparams", json.dumps({"n_envs": 1, "n_steps": 64, "batch_size": 32}),
            "--out", str(out), "--no-progress"]
    return parser.parse_args(argv + [x for k, v in kw.items() for x in (f"--{k}", str(v))])


def test_mujoco_preset_end_to_end_writes_summary(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(_tiny_args(out)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["preset"] == "christiano-mujoco" and summary["env"] == "InvertedPendulum-v5"
    assert summary["labels_used"] == 20 and summary["env_steps"] <= 700
    assert summary["eval_episodes"] == 2 and np.isfinite(summary["true_return_mean"])
    config = json.loads((out / "config.json").read_text())
    assert config["preset"]["schedule_c"] == 2e6 and config["prefs"]["segment_len"] == 38
    assert (out / "curves.png").exists()
    resumed = load_preset(out)  # the saved config rebuilds the same preset
    assert resumed.prefs.segment_len == 38 and resumed.fit["l2_target"] == (1.1, 1.5)
    assert "error" in _rerun_error(out, capsys)


def _rerun_error(out, capsys):
    assert run_cli(_tiny_args(out)) == 2  # refuses to overwrite a run
    return capsys.readouterr().err


@pytest.mark.slow
def test_atari_preset_end_to_end_writes_summary(tmp_path):
    from agents.loop.presets import run_preset

    hyper = {"n_envs": 2, "n_steps": 5, "policy_kwargs": {"features_extractor_class": "NatureCNN"}}
    p = apply_preset("christiano-atari", "ALE/Pong-v5", dict(labels=8, steps=600, rounds=1, initial_steps=200,
                                                             eval_episodes=1, eval_every=0, ensemble=2,
                                                             reward_epochs=1, hyperparams=hyper))
    p.pretrain_epochs = 2
    summary = run_preset(p, tmp_path / "pong")
    assert summary["labels_used"] == 8 and summary["true_return_mean"] <= 21
    assert json.loads((tmp_path / "pong" / "summary.json").read_text())["env"] == "ALE/Pong-v5"
