import json

import numpy as np
import pytest

from agents.loop.control.config import PrefsConfig
from agents.loop.control.run import build_loop, run_prefs
from agents.loop.control.segment_pairs import Experience, SegmentPairSource
from agents.loop.preference_loop import LoopCallback, LoopConfig, label_allocation
from agents.rundir import CheckpointError, RunDir
from agents.sb3.control import (
    IncompatibleSpaceError,
    SB3Agent,
    UnknownAlgorithmError,
    UnknownEnvError,
    check_algorithm,
    check_env_id,
)
from rewardmodels.preferences import PreferenceDataset
from rewardmodels.teachers import make_teacher

TINY_PPO = {"n_envs": 4, "n_steps": 64, "batch_size": 128, "n_epochs": 4, "learning_rate": "lin_0.001",
            "gamma": 0.98, "gae_lambda": 0.8}


def tiny(**overrides):
    values = dict(env="CartPole-v1", algo="ppo", labels=24, steps=4_096, rounds=3, initial_steps=512,
                  initial_label_fraction=0.5, segment_len=20, ensemble=2, reward_epochs=10, eval_episodes=3,
                  eval_every=1, hyperparams=TINY_PPO, progress_bar=False)
    values.update(overrides)
    return PrefsConfig(**values)


# -- schedule and config --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["constant", "inverse_time"])
def test_label_allocation_spends_exactly_the_budget_front_loaded(schedule):
    cfg = LoopConfig(labels=150, steps=50_000, rounds=24, initial_label_fraction=0.4,
                     label_schedule=schedule, label_until=0.8)
    alloc = label_allocation(cfg)
    assert len(alloc) == 25 and sum(alloc) == 150 and alloc[0] == 60
    assert alloc[-4:] == [0, 0, 0, 0]  # no labels after label_until of the rounds
    if schedule == "inverse_time":
        assert alloc[1] > alloc[19] > 0


@pytest.mark.parametrize("bad, match", [
    (dict(labels=-1), "labels must be an integer >= 0"),
    (dict(initial_steps=60_000), "initial_steps"),
    (dict(selection="best"), "selection"),
    (dict(label_schedule="linear"), "label_schedule"),
    (dict(initial_label_fraction=1.5), "initial_label_fraction"),
])
def test_loop_config_validates(bad, match):
    with pytest.raises(ValueError, match=match):
        LoopConfig(**bad)


def test_unknown_env_and_algorithm_errors_list_the_choices():
    with pytest.raises(UnknownAlgorithmError, match="ppo, a2c, sac, dqn, td3, ddpg"):
        check_algorithm("trpo")
    with pytest.raises(UnknownEnvError, match="did you mean: CartPole-v1"):
        check_env_id("CartPole-v9")
    with pytest.raises(UnknownEnvError):
        PrefsConfig(env="NoSuchEnv-v0")
    with pytest.raises(UnknownAlgorithmError):
        PrefsConfig(algo="sarsa")
    assert check_algorithm("PPO") == "ppo"


def test_algorithm_that_cannot_act_in_the_space_is_refused():
    with pytest.raises(IncompatibleSpaceError, match="ppo, a2c, dqn"):
        SB3Agent("sac", "CartPole-v1", lambda o, a: np.zeros(len(o)), total_steps=1000)


# -- experience recording -------------------------------------------------------------------------------------------
def test_recorder_splits_terminated_from_truncated_episodes():
    source = SegmentPairSource("CartPole-v1", segment_len=10, seed=0)
    source.collect(None, 400)  # random policy: CartPole episodes end by termination after ~20 steps
    trajs = list(source.experience.done)
    assert source.env_steps == 400
    assert sum(len(t) for t in trajs) == 400
    assert trajs[0].terminated and np.all(trajs[0].rews == 1.0)
    assert not trajs[-1].terminated  # the envs' unfinished stretches are closed as not terminated
    pairs = source.candidates(16, np.random.default_rng(0))
    assert isinstance(pairs, PreferenceDataset) and len(pairs) == 16 and np.isnan(pairs.labels).all()
    labelled = source.label(make_teacher("oracle"), pairs)
    ret_a, ret_b = pairs.true_returns()
    np.testing.assert_array_equal(labelled.labels, np.where(ret_a > ret_b, 1.0, np.where(ret_a < ret_b, 0.0, 0.5)))


def test_experience_is_bounded_and_round_trips():
    exp = Experience(capacity=30)
    for t in range(100):
        exp.add(0, 0, np.full(3, t, np.float32), 1, 1.0, done=(t % 10 == 9), terminated=True)
    assert exp.steps == 100 and sum(len(t) for t in exp.done) <= 40
    other = Experience()
    other.load_arrays(exp.state_arrays())
    assert other.steps == 100 and [len(t) for t in other.done] == [len(t) for t in exp.done]
    np.testing.assert_array_equal(other.done[-1].obs, exp.done[-1].obs)


# -- the loop end to end --------------------------------------------------------------------------------------------
def test_small_run_learns_a_reward_that_agrees_with_the_truth(tmp_path):
    summary = run_prefs(tiny(seed=1), tmp_path / "run")
    assert summary["labels_used"] == 24 and summary["env_steps"] <= 4_096 and summary["finished"]
    loop = build_loop(tiny(seed=1), tmp_path / "run")
    assert loop.resume()
    # fresh pairs from a random policy, never labelled: the learned reward ranks them like the true reward
    fresh = SegmentPairSource("CartPole-v1", segment_len=20, seed=123)
    fresh.collect(None, 2_000)
    pairs = fresh.candidates(300, np.random.default_rng(5))
    agreement = loop.reward_model.ensemble.evaluate(pairs)["true_accuracy"]
    assert agreement > 0.75, agreement  # chance is 0.5
    metrics = loop.run_dir.read_metrics()
    assert [m["labels/used"] for m in metrics] == np.cumsum(label_allocation(tiny())).tolist()
    assert any("reward_model/true_agreement" in m for m in metrics)
    assert all(k in metrics[-1] for k in ("eval/true_return", "env/steps", "time/wall_s"))
    # the x axis of the curves is env steps: every round at its own x, the rounds after the last label included
    steps = [m["step"] for m in metrics]
    assert steps == [m["env/steps"] for m in metrics] and all(a < b for a, b in zip(steps, steps[1:], strict=False))
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "summary.json", "metrics.jsonl", "curves.png", "tb", "checkpoints"} <= files


class StopAfter(LoopCallback):
    def __init__(self, rounds):
        self.rounds, self.calls = rounds, []

    def on_round_end(self, loop, metrics):
        self.calls.append(loop.state.round)
        return loop.state.round < self.rounds


def test_callback_stops_and_resume_keeps_every_label_and_reaches_the_same_budget(tmp_path):
    stop = StopAfter(1)
    first = run_prefs(tiny(), tmp_path / "run", callbacks=[stop])
    assert stop.calls == [0, 1] and not first["finished"] and first["labels_used"] < 24
    ckpt = tmp_path / "run" / "checkpoints"
    saved = json.loads((ckpt / "latest.json").read_text())["checkpoint"]
    labels_before = PreferenceDataset.load(ckpt / saved / "preferences.npz")
    assert len(labels_before) == first["labels_used"]
    assert {p.name for p in (ckpt / saved).iterdir()} >= {"agent.zip", "reward_model.safetensors", "state.json",
                                                          "rng.pt", "experience.npz", "preferences.npz"}

    resumed = run_prefs(tiny(), tmp_path / "run", resume=True)
    assert resumed["finished"] and resumed["labels_used"] == 24 and resumed["env_steps"] <= 4_096
    assert resumed["env_steps"] > first["env_steps"]
    final = PreferenceDataset.load(ckpt / json.loads((ckpt / "latest.json").read_text())["checkpoint"] /
                                   "preferences.npz")
    assert len(final) == 24
    np.testing.assert_array_equal(final.labels[: len(labels_before)], labels_before.labels)
    np.testing.assert_array_equal(final.obs_a[: len(labels_before)], labels_before.obs_a)


class KilledAfterLogging(LoopCallback):
    """Dies where kill -9 leaves the most behind: round ``r``'s metrics row written, its checkpoint not."""

    def __init__(self, r):
        self.r = r

    def on_round_end(self, loop, metrics):
        if loop.state.round == self.r:
            raise RuntimeError("killed")


def test_resume_cuts_metrics_back_to_the_checkpoint_so_no_round_is_logged_twice(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="killed"):
        run_prefs(tiny(), out, callbacks=[KilledAfterLogging(1)])
    assert [r["labels/used"] for r in RunDir(out, tensorboard=False).read_metrics()] == np.cumsum(
        label_allocation(tiny())).tolist()[:2]  # round 1's row is there, its checkpoint is not
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["checkpoint"] == "round-0000"
    assert run_prefs(tiny(), out, resume=True)["finished"]
    rows = RunDir(out, tensorboard=False).read_metrics()
    steps = [r["step"] for r in rows]
    assert [r["labels/used"] for r in rows] == np.cumsum(label_allocation(tiny())).tolist()  # one row per round
    assert all(a < b for a, b in zip(steps, steps[1:], strict=False)), steps  # no stale point on the curves


@pytest.mark.slow
def test_off_policy_agent_relabels_its_replay_buffer_after_each_fit(tmp_path):
    cfg = tiny(algo="dqn", steps=3_000, rounds=2, initial_steps=500,
               hyperparams={"learning_starts": 200, "buffer_size": 5_000, "train_freq": 4, "target_update_interval":
                            100, "policy_kwargs": {"net_arch": [32]}})
    loop = build_loop(cfg, tmp_path / "run")
    summary = loop.run()
    loop.agent.close()
    assert summary["finished"] and summary["env_steps"] <= 3_000
    relabelled = [m["agent/relabelled"] for m in loop.run_dir.read_metrics() if "agent/relabelled" in m]
    assert relabelled and relabelled[-1] > 1_000
    buf = loop.agent.model.replay_buffer
    n = buf.pos
    obs, acts = buf.observations[:n, 0], buf.actions[:n, 0, 0].astype(np.int64)
    np.testing.assert_allclose(buf.rewards[:n, 0], loop.reward_model.ensemble.predict_reward(obs, acts), atol=1e-5)


def test_checkpoints_naming_a_moved_pairs_module_still_load():
    """A run checkpointed while people labelled text pairs names their class by its module then
    (``rewardmodels.text_preferences``); that module moved to ``rewardmodels.text.preferences`` and the run resumes."""
    from agents.loop.preference_loop import _pairs_class
    from rewardmodels.text.preferences import TextPreferencePairs

    assert _pairs_class("rewardmodels.text_preferences:TextPreferencePairs") is TextPreferencePairs
    assert _pairs_class("rewardmodels.text.preferences:TextPreferencePairs") is TextPreferencePairs
    with pytest.raises(CheckpointError, match="not an rlhf-gym class"):
        _pairs_class("os:system")
