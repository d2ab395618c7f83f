"""The Christiano et al. 2017 presets: the paper's values, the label schedule formula, and tiny end-to-end runs."""

import json
import math

import gymnasium as gym
import numpy as np
import pytest

from agents.cli import main
from agents.loop.config import RunConfigError
from agents.loop.control.config import PrefsConfig
from agents.loop.control.presets import (
    ATARI_ENVS,
    MUJOCO_ENVS,
    MUJOCO_SAC,
    PREFS_PRESETS,
    TUNED_PER_ENV,
    PresetError,
    apply_preset,
    mujoco_segment_len,
)
from agents.loop.control.run import build_reward_ensemble, run_prefs
from agents.loop.preference_loop import label_allocation
from agents.loop.reward_model import EnsembleRewardModel
from rewardmodels.ensemble import FitConfig


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo writes MUJOCO_LOG.TXT (HalfCheetah's deprecation warning) into the cwd


def test_mujoco_preset_holds_the_papers_values():
    cfg = PrefsConfig.from_preset("christiano-mujoco", "Hopper-v5")
    assert cfg.segment_len == 188  # 1.5 s / dt = 0.008 s
    assert cfg.ensemble == 3 and cfg.selection == "disagreement" and cfg.oversample == 10
    assert cfg.initial_label_fraction == 0.25 and cfg.initial_policy == "agent" and cfg.label_until == 1.0
    assert cfg.reward_hidden == (64, 64) and cfg.reward_net == "mlp" and cfg.reward_scale == 1.0
    assert cfg.fit["noise"] == 0.1 and cfg.fit["val_fraction"] == pytest.approx(1 / math.e)
    assert cfg.fit["adaptive_l2"] and tuple(cfg.fit["l2_target"]) == (1.1, 1.5)
    assert cfg.labels == 700 and cfg.schedule_c_steps == 2e6 and cfg.preset == "christiano-mujoco"
    assert cfg.hyperparams["gamma"] == 0.995 and cfg.hyperparams["gae_lambda"] == 0.97
    ens = build_reward_ensemble(cfg, gym.spaces.Box(-1, 1, (11,)), gym.spaces.Box(-1, 1, (3,)))
    acts = [m for m in ens.members[0].modules() if hasattr(m, "negative_slope")]
    assert len(ens.members) == 3 and len(acts) == 2 and acts[0].negative_slope == 0.01


def test_mujoco_preset_with_an_off_policy_agent_gets_settings_it_accepts():
    cfg = PrefsConfig.from_preset("christiano-mujoco", "HalfCheetah-v5", algo="sac")
    assert cfg.algo == "sac" and cfg.hyperparams == MUJOCO_SAC  # PEBBLE's agent, the MuJoCo table's
    assert PrefsConfig.from_preset("christiano-mujoco", "Hopper-v5", algo="td3").hyperparams is None  # SB3's
    mine = {"n_envs": 1, "batch_size": 64}
    assert PrefsConfig.from_preset("christiano-mujoco", "Hopper-v5", algo="sac", hyperparams=mine).hyperparams == mine


def test_segment_length_is_1_5_seconds_capped_by_the_time_limit():
    assert [mujoco_segment_len(e) for e in ("HalfCheetah-v5", "Swimmer-v5", "Reacher-v5")] == [30, 38, 50]
    assert set(MUJOCO_ENVS) >= {"Hopper-v5", "Ant-v5", "InvertedDoublePendulum-v5"}


def test_atari_preset_holds_the_papers_values():
    cfg = PrefsConfig.from_preset("christiano-atari", "ALE/Pong-v5")
    assert cfg.env_id == "AtariPreprocessed/Pong-v5" and cfg.env == "ALE/Pong-v5"
    assert cfg.segment_len == 25 and cfg.schedule_c_steps == 5e6
    assert round(cfg.labels * cfg.initial_label_fraction) == 500
    assert cfg.pretrain_epochs == 200 and cfg.label_buffer == 3_000 and cfg.reward_scale == 0.05
    assert cfg.reward_net == "cnn" and cfg.reward_net_kwargs["dropout"] == 0.5 and cfg.reward_net_kwargs["batch_norm"]
    assert cfg.algo == "a2c" and cfg.hyperparams["n_envs"] == 16 and cfg.hyperparams["n_steps"] == 5
    ppo = PrefsConfig.from_preset("christiano-atari", "ALE/Breakout-v5", algo="ppo", labels=300)
    assert ppo.hyperparams["n_steps"] == 128 and ppo.initial_label_fraction == 1.0  # all 300 up front
    assert len(ATARI_ENVS) == 7


@pytest.mark.parametrize(("name", "env", "c"), [("christiano-mujoco", "HalfCheetah-v5", 2e6),
                                                ("christiano-atari", "ALE/Pong-v5", 5e6)])
def test_label_schedule_follows_c_over_t_plus_c(name, env, c):
    """Labels due by training step t: the integral of a rate proportional to c / (t + c), c in env steps."""
    loop = PrefsConfig.from_preset(name, env, labels=3_300, steps=20_000_000)
    alloc = label_allocation(loop)
    initial, rest = alloc[0], loop.labels - alloc[0]
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

    model = EnsembleRewardModel(FakeEnsemble(), FitConfig(epochs=3), pretrain_epochs=200, label_buffer=10)
    model.fit(FakeDataset(8))
    model.fit(FakeDataset(25))
    assert seen == [(8, 200, None), (10, 3, None)]
    # A.2's rate: 1 label per 10 env steps -> 3,200 new steps = 320 labels = 10 minibatches of 32
    seen.clear()
    clock = {"steps": 5_000}
    model = EnsembleRewardModel(FakeEnsemble(), FitConfig(epochs=3, batch_size=32), pretrain_epochs=200,
                                label_buffer=None, fit_rate=0.1, env_steps=lambda: clock["steps"])
    model.fit(FakeDataset(8))
    clock["steps"] += 3_200
    model.fit(FakeDataset(9))
    assert seen == [(8, 200, None), (9, 3, 10)]
    assert apply_preset("christiano-atari", "ALE/Pong-v5")["fit_rate"] == 0.1
    assert apply_preset("christiano-atari", "ALE/Pong-v5", {"reward_epochs": 4})["fit_rate"] is None
    with pytest.raises(ValueError, match="fit_rate needs env_steps"):
        EnsembleRewardModel(FakeEnsemble(), FitConfig(), fit_rate=0.1)


def test_bad_presets_raise_preset_errors():
    with pytest.raises(PresetError, match="unknown preset"):
        apply_preset("christiano-robots", "Hopper-v5")
    with pytest.raises(PresetError, match="christiano-atari"):
        apply_preset("christiano-mujoco", "ALE/Pong-v5")
    with pytest.raises(PresetError, match="ALE env"):
        apply_preset("christiano-atari", "Hopper-v5")


def test_one_registry_holds_every_preset_and_unset_overrides_keep_its_values():
    assert set(PREFS_PRESETS) == {"tuned", "christiano-mujoco", "christiano-atari", "pebble", "surf"}
    tuned = PrefsConfig.for_env("CartPole-v1", labels=None, seed=4)  # None = "keep the preset's"
    cartpole = TUNED_PER_ENV["CartPole-v1"]
    assert tuned.labels == cartpole["labels"] and tuned.segment_len == cartpole["segment_len"]
    assert tuned.seed == 4 and tuned.preset is None
    assert PrefsConfig.for_env("MountainCar-v0").rounds == PrefsConfig().rounds  # no tuned entry: the defaults
    budget = PrefsConfig.from_preset("christiano-mujoco", "Swimmer-v5", steps=200_000)
    assert budget.rounds == 20 and budget.initial_steps == 5_000 and budget.hyperparams["ent_coef"] == 0.001


TINY = ["--preset", "christiano-mujoco", "--env", "InvertedPendulum-v5", "--labels", "20", "--steps", "700",
        "--rounds", "2", "--initial-steps", "200", "--reward-epochs", "3", "--eval-episodes", "2", "--eval-every", "0",
        "--hyperparams", json.dumps({"n_envs": 1, "n_steps": 64, "batch_size": 32}), "--no-progress"]


def test_mujoco_preset_end_to_end_writes_summary(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["prefs", *TINY, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["preset"] == "christiano-mujoco" and summary["env"] == "InvertedPendulum-v5"
    assert summary["labels_used"] == 20 and summary["env_steps"] <= 700
    assert summary["eval_episodes"] == 2 and np.isfinite(summary["true_return_mean"])
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["schedule_c_steps"] == 2e6 and config["config"]["segment_len"] == 38
    assert (out / "curves.png").exists()
    resumed = PrefsConfig.load(out)  # the saved config rebuilds the same settings
    assert resumed.segment_len == 38 and resumed.fit["l2_target"] == (1.1, 1.5) and resumed.preset == TINY[1]
    assert main(["prefs", *TINY, "--out", str(out)]) == 2  # refuses to overwrite a run
    assert "--resume" in capsys.readouterr().err


def test_a_v01_preset_run_directory_loads_into_the_one_config(tmp_path):
    """config.json as rlhf-gym 0.1 wrote it for a preset run ("prefs" + "preset" sections) still resumes."""
    prefs = dict(env="AtariPreprocessed/Pong-v5", algo="a2c", labels=8, steps=600, seed=2, segment_len=25,
                 rounds=1, initial_steps=200, initial_label_fraction=1.0, reward_epochs=1, ensemble=2,
                 teacher_params={"beta": "inf"}, reward_hidden=[64, 64], progress_bar=False)
    preset = dict(name="christiano-atari", requested_env="ALE/Pong-v5", schedule_c=5e6, initial_policy="agent",
                  label_until=1.0, oversample=10, net="cnn", net_kwargs={"channels": 16}, reward_scale=0.05,
                  fit={"noise": 0.1, "l2_target": [1.1, 1.5]}, pretrain_epochs=200, label_buffer=3000,
                  fit_rate=0.1, experience_capacity=50_000)
    (tmp_path / "config.json").write_text(json.dumps({"prefs": prefs, "preset": preset, "loop": {}}))
    cfg = PrefsConfig.load(tmp_path)
    assert cfg.env == "ALE/Pong-v5" and cfg.env_id == "AtariPreprocessed/Pong-v5" and cfg.atari_preprocessing
    assert cfg.schedule_c_steps == 5e6 and cfg.reward_net == "cnn" and cfg.fit["l2_target"] == (1.1, 1.5)
    assert cfg.teacher_params["beta"] == math.inf and cfg.label_buffer == 3000 and cfg.preset == "christiano-atari"
    (tmp_path / "config.json").write_text('{"prefs": ')
    with pytest.raises(RunConfigError, match="config.json cannot be read"):
        PrefsConfig.load(tmp_path)


@pytest.mark.slow
def test_atari_preset_end_to_end_writes_summary(tmp_path):
    hyper = {"n_envs": 2, "n_steps": 5, "policy_kwargs": {"features_extractor_class": "NatureCNN"}}
    cfg = PrefsConfig.from_preset("christiano-atari", "ALE/Pong-v5", labels=8, steps=600, rounds=1,
                                  initial_steps=200, eval_episodes=1, eval_every=0, ensemble=2, reward_epochs=1,
                                  hyperparams=hyper, pretrain_epochs=2)
    summary = run_prefs(cfg, tmp_path / "pong")
    assert summary["labels_used"] == 8 and summary["true_return_mean"] <= 21
    assert json.loads((tmp_path / "pong" / "summary.json").read_text())["env"] == "ALE/Pong-v5"


@pytest.mark.slow
def test_sac_on_the_learned_reward_relabels_its_buffer_and_learns(tmp_path):
    """PEBBLE's agent on the christiano-mujoco protocol (the MuJoCo table's agent for HalfCheetah), tiny: the replay
    buffer is relabelled after every reward fit, and the agent, which never sees the true reward, balances far longer
    than a random policy (3,000 steps: 66-74 on seeds 0-2 against ~5 at random)."""
    from benchmarks.christiano_mujoco import random_return

    cfg = PrefsConfig.from_preset("christiano-mujoco", "InvertedPendulum-v5", algo="sac", labels=60, steps=3_000,
                                  rounds=4, initial_steps=500, reward_epochs=10, eval_episodes=5, eval_every=0,
                                  progress_bar=False)
    summary = run_prefs(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    relabelled = [r["agent/relabelled"] for r in rows if "agent/relabelled" in r]
    assert len(relabelled) == 4 and relabelled == sorted(relabelled) and relabelled[-1] > 2_000  # the whole buffer
    assert summary["true_return_mean"] > max(30.0, 4 * random_return("InvertedPendulum-v5", 10))


def test_pebble_preset_holds_bprefs_values():
    cfg = PrefsConfig.from_preset("pebble", "BPref/walker-walk-v0")
    assert cfg.algo == "sac" and cfg.steps == 500_000 and cfg.segment_len == 50 and cfg.ensemble == 3
    assert cfg.initial_policy == "explore" and cfg.initial_steps == 10_000 and cfg.explore_k == 5
    assert cfg.selection == "disagreement" and cfg.oversample == 10 and cfg.label_schedule == "constant"
    assert label_allocation(cfg) == [100] * 10 + [0] * 15  # 100 after pre-training, then 100 per 20,000 steps
    assert cfg.reward_hidden == (256, 256, 256) and cfg.reward_net_kwargs == {"output_activation": "tanh"}
    assert cfg.fit == {"lr": 3e-4, "batch_size": 128, "stop_accuracy": 0.97} and cfg.reward_epochs == 50
    sac = cfg.hyperparams
    assert (sac["learning_rate"], sac["batch_size"], sac["policy_kwargs"]["net_arch"]) == (5e-4, 1_024, [1_024, 1_024])
    assert (sac["gamma"], sac["tau"], sac["ent_coef"], sac["target_update_interval"]) == (0.99, 0.005, "auto_0.1", 2)
    quadruped = PrefsConfig.from_preset("pebble", "BPref/quadruped-walk-v0")
    assert quadruped.hyperparams["learning_rate"] == 1e-4 and quadruped.rounds == (1_000_000 - 10_000) // 30_000
    metaworld = PrefsConfig.from_preset("pebble", "BPref/button-press-v3")
    # 50 labels after pre-training, then 50 per 5,000 steps: 9,950 by 1M steps (max_feedback 10,000 not reached)
    assert metaworld.labels == 9_950 and label_allocation(metaworld)[:2] == [50, 50] and metaworld.reward_epochs == 10
    assert metaworld.hyperparams["policy_kwargs"]["net_arch"] == [256, 256, 256]
    short = PrefsConfig.from_preset("pebble", "BPref/walker-walk-v0", steps=100_000)
    assert short.labels == 500 and label_allocation(short) == [100] * 5  # what PEBBLE's rate reaches in 100k steps
    ppo = PrefsConfig.from_preset("pebble", "BPref/walker-walk-v0", algo="ppo")
    assert ppo.initial_steps == 32_000 and ppo.hyperparams["n_envs"] == 32 and ppo.hyperparams["clip_range"] == 0.4


def test_surf_preset_is_pebble_plus_surfs_values():
    cfg = PrefsConfig.from_preset("surf", "BPref/walker-walk-v0")
    assert cfg.preset == "surf" and cfg.initial_policy == "explore" and cfg.segment_len == 50
    assert cfg.segment_context == 5 and cfg.unlabelled_per_label == 100
    assert cfg.fit == {"lr": 3e-4, "batch_size": 128, "stop_accuracy": 0.97, "pseudo_threshold": 0.99,
                       "pseudo_ratio": 4, "pseudo_weight": 1.0, "crop": 5}
    assert PrefsConfig.from_preset("surf", "BPref/button-press-v3").unlabelled_per_label == 10
    mine = PrefsConfig.from_preset("surf", "BPref/walker-walk-v0", fit={"pseudo_threshold": 0.95})
    assert mine.fit["pseudo_threshold"] == 0.95 and mine.fit["crop"] == 5


def test_a_preset_name_adds_pebble_and_surf_to_another_protocol():
    cfg = PrefsConfig.from_preset("christiano-mujoco+pebble+surf", "Hopper-v5", steps=150_000)
    paper = PrefsConfig.from_preset("christiano-mujoco", "Hopper-v5", steps=150_000)
    assert cfg.preset == "christiano-mujoco+pebble+surf" and cfg.segment_len == paper.segment_len == 188
    assert cfg.initial_policy == "explore" and cfg.initial_steps == 10_000 and cfg.labels == paper.labels
    assert cfg.fit == {**paper.fit, "pseudo_threshold": 0.99, "pseudo_ratio": 4, "pseudo_weight": 1.0, "crop": 5}
    assert cfg.segment_context == 5 and cfg.unlabelled_per_label == 10
    assert PrefsConfig.from_preset("christiano-mujoco+surf", "Reacher-v5").segment_context == 0  # 50-step episodes
    assert PrefsConfig.from_preset("christiano-mujoco+pebble", "Hopper-v5", steps=50_000).initial_steps == 5_000
    assert PrefsConfig.from_preset("christiano-mujoco+pebble", "Hopper-v5", initial_steps=7_000).initial_steps == 7_000
    with pytest.raises(PresetError, match=r"\+pebble"):
        apply_preset("christiano-mujoco+curiosity", "Hopper-v5")
