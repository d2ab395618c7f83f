"""The Christiano et al. 2017 benchmark scripts at tiny budgets (the tables themselves: benchmarks/RESULTS.md): the
diagnosis statistics against hand-computed values, the table's ratios, and both scripts end to end, each run in its
own process, writing their results, table and plot."""

import json

import numpy as np
import pytest

from benchmarks.christiano_atari_agent import main as atari_main
from benchmarks.christiano_mujoco import _agreement, budget, summarise
from benchmarks.christiano_mujoco import main as mujoco_main


class LinearReward:
    """r(s, a) = s[0]: a reward whose segment sums and per-step values are known exactly."""

    def predict_reward(self, obs, acts):
        return np.asarray(obs)[:, 0]


def window(obs0, rewards, acts):
    obs = np.array([[x, 0.0] for x in obs0], np.float32)
    return obs, np.asarray(acts, np.float32)[:, None], np.asarray(rewards, np.float32)


def test_agreement_statistics_match_hand_computed_values():
    # learned segment returns 3, 7, 11, 15; true returns 1, 2, 4, 3: of the 6 pairs, only (3rd, 4th) is ordered wrong
    windows = [window([1, 2], [1, 0], [0, 1]), window([3, 4], [0, 2], [1, -1]), window([5, 6], [4, 0], [2, 0]),
               window([7, 8], [1, 2], [0, -2])]
    stats = _agreement(LinearReward(), windows)
    assert stats["segments"] == 4
    assert stats["pair_agreement"] == pytest.approx(5 / 6)
    assert stats["segment_r"] == pytest.approx(np.corrcoef([3, 7, 11, 15], [1, 2, 4, 3])[0, 1])
    assert stats["step_r"] == pytest.approx(np.corrcoef(np.arange(1, 9), [1, 0, 0, 2, 4, 0, 1, 2])[0, 1])
    effort = [0, 1, 1, 1, 4, 0, 0, 4]
    assert stats["learned_vs_action_sq_r"] == pytest.approx(np.corrcoef(np.arange(1, 9), effort)[0, 1])
    assert stats["true_vs_action_sq_r"] == pytest.approx(np.corrcoef([1, 0, 0, 2, 4, 0, 1, 2], effort)[0, 1])
    assert _agreement(LinearReward(), windows[:3]) == {"segments": 3}  # too few to say anything


def test_table_ratios_and_the_worst_seed():
    rows = [{"env": "E", "seed": s, "side": side, "algo": "sac", "steps": 10, "labels_used": 7,
             "true_return_mean": value}
            for s, (p, t) in enumerate([(90.0, 100.0), (50.0, 110.0)]) for side, value in (("prefs", p), ("rl", t))]
    summary, table = summarise(rows, {"E": 10.0})
    row = summary["E"]
    assert row["prefs"] == 70.0 and row["rl"] == 105.0 and row["seeds"] == 2
    assert row["ratio"] == pytest.approx(70 / 105)
    assert row["gain_ratio"] == pytest.approx(60 / 95)
    assert row["worst_seed_gain_ratio"] == pytest.approx(40 / 100)
    assert "| E | SAC | 10 | 2 | 7 | 70.0 | 105.0 | 10.0 | 0.67 | 0.63 | 0.40 |" in table


def test_budget_table_and_overrides():
    assert budget("HalfCheetah-v5", "cpu", None, None)["algo"] == "sac"
    assert budget("HalfCheetah-v5", "cpu", None, None)["steps"] == 150_000
    assert budget("Hopper-v5", "full", None, None) == {"steps": 2_000_000, "algo": None, "hyperparams": None}
    assert budget("Hopper-v5", "cpu", 5_000, "sac")["hyperparams"]["policy_kwargs"] == {"net_arch": [64, 64]}


@pytest.mark.slow
def test_mujoco_table_end_to_end_in_separate_processes(tmp_path, capsys):
    out = tmp_path / "table"
    args = ["--envs", "InvertedPendulum-v5", "--seeds", "0", "--steps", "2000", "--labels", "16", "--eval-episodes",
            "2", "--jobs", "2", "--out", str(out)]
    mujoco_main(args)
    results = json.loads((out / "results.json").read_text())
    row = results["summary"]["InvertedPendulum-v5"]
    assert row["seeds"] == 1 and row["labels"] == 16 and row["agent"] == "ppo"
    prefs = json.loads((out / "InvertedPendulum-v5-seed0" / "prefs.json").read_text())
    assert prefs["env_steps"] <= 2000 and set(prefs["diagnose"]) >= {"final_policy", "random_policy"}
    assert (out / "InvertedPendulum-v5-seed0" / "prefs" / "summary.json").exists()
    assert "| InvertedPendulum-v5 | PPO | 2,000 | 1 | 16 |" in (out / "table.md").read_text()
    mtime = (out / "InvertedPendulum-v5-seed0" / "rl.json").stat().st_mtime
    mujoco_main(args)  # run again: finished runs are kept, not rerun
    assert (out / "InvertedPendulum-v5-seed0" / "rl.json").stat().st_mtime == mtime


@pytest.mark.slow
def test_atari_agent_comparison_end_to_end(tmp_path):
    out = tmp_path / "atari"
    atari_main(["--steps", "2000", "--eval-episodes", "1", "--random-episodes", "1", "--set",
                json.dumps({"labels": 12, "ensemble": 1, "experience_capacity": 2000}), "--out", str(out)])
    summary = json.loads((out / "results.json").read_text())["summary"]
    assert summary["labels"] == 12 and summary["frames"] == 8000
    assert np.isfinite(summary["eval_learned_reward"]) and np.isfinite(summary["eval_game_score"])
    assert (out / "curves.png").stat().st_size > 1000
    assert (out / "prefs" / "summary.json").exists()
    assert (out / "rl_agent.zip").exists()  # the game-score agent, to evaluate again


@pytest.mark.parametrize("flag", ["--steps", "--eval-episodes", "--random-episodes"])
def test_atari_agent_comparison_refuses_empty_budgets(flag, capsys):
    with pytest.raises(SystemExit):
        atari_main([flag, "0"])
    assert f"{flag} must be at least 1" in capsys.readouterr().err


def test_bpref_budget_keeps_the_presets_agent_with_cpu_nets():
    row = budget("BPref/walker-walk-v0", "bpref", None, None)
    assert row == {"steps": 100_000, "algo": "sac", "hyperparams": None, "cpu_nets": True}


@pytest.mark.slow
def test_bpref_row_end_to_end_reports_metaworld_success_and_reuses_an_rl_side(tmp_path):
    pytest.importorskip("metaworld", reason="metaworld is not installed: pip install -e '.[bpref]'")
    out = tmp_path / "bpref"
    args = ["--table", "bpref", "--preset", "surf", "--envs", "BPref/button-press-v3", "--seeds", "0", "--steps",
            "2000", "--labels", "10", "--eval-episodes", "1", "--jobs", "1", "--out", str(out)]
    mujoco_main(args)
    prefs = json.loads((out / "BPref/button-press-v3-seed0" / "prefs.json").read_text())
    config = json.loads((out / "BPref/button-press-v3-seed0" / "prefs" / "config.json").read_text())["config"]
    assert config["preset"] == "surf" and config["hyperparams"]["policy_kwargs"]["net_arch"] == [64, 64]
    assert prefs["success"] in (0.0, 1.0) and prefs["labels_used"] == 10
    summary = json.loads((out / "results.json").read_text())["summary"]["BPref/button-press-v3"]
    assert summary["success_prefs"] == prefs["success"] and "success_rl" in summary
    again = tmp_path / "again"
    mujoco_main([*args[:-1], str(again), "--rl-from", str(out)])  # the rl side is taken, not rerun
    assert (again / "BPref/button-press-v3-seed0" / "rl.json").read_text() == \
        (out / "BPref/button-press-v3-seed0" / "rl.json").read_text()
