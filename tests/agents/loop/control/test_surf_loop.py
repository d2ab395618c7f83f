"""SURF in the control loop: segments cut with context and labelled on their core, the unlabelled pool, and a run
with pseudo-labels and crops that stops and resumes."""

import json

import numpy as np
import pytest

from agents.loop.control.config import PrefsConfig
from agents.loop.control.run import build_loop, run_prefs
from agents.loop.control.segment_pairs import SegmentPairSource
from agents.loop.preference_loop import LoopCallback
from agents.loop.reward_model import UnlabelledPool
from rewardmodels.teachers import make_teacher


def _source(context: int) -> SegmentPairSource:
    source = SegmentPairSource("Pendulum-v1", 20, seed=0, context=context)
    source.collect(None, 1_000)
    return source


def test_pairs_carry_context_and_the_teacher_judges_only_their_core():
    source = _source(context=5)
    pairs = source.candidates(64, np.random.default_rng(0))
    assert pairs.segment_len == 30 and pairs.context == 5
    labelled = source.label(make_teacher("oracle", seed=0), pairs)
    core_a, core_b = pairs.true_rew_a[:, 5:25].sum(1), pairs.true_rew_b[:, 5:25].sum(1)
    assert np.array_equal(labelled.labels, (core_a > core_b).astype(np.float32))  # not the 30 stored steps
    full_a, full_b = pairs.true_rew_a.sum(1), pairs.true_rew_b.sum(1)
    assert ((full_a > full_b) != (core_a > core_b)).any()  # (the context would have changed some labels)
    assert np.array_equal(source.true_preferences(pairs), (core_a > core_b).astype(float))


def test_the_pool_draws_per_new_label_keeps_the_latest_and_round_trips(tmp_path):
    source = _source(context=0)
    pool = UnlabelledPool(source.candidates, per_label=3, capacity=50, seed=1)
    assert len(pool.update(10)) == 30 and len(pool.update(10)) == 30  # nothing new: nothing drawn
    assert len(pool.update(20)) == 50  # 30 + 30 drawn, the latest 50 kept
    latest = pool.pairs.obs_a.copy()
    pool.save(tmp_path)
    again = UnlabelledPool(source.candidates, per_label=3, capacity=50, seed=1)
    again.load(tmp_path)
    assert again.labels_seen == 20 and np.array_equal(again.pairs.obs_a, latest)
    assert np.array_equal(again.update(21).obs_a, pool.update(21).obs_a)  # the same draws after a resume


class _StopAfterRound(LoopCallback):
    def on_round_end(self, loop, metrics):
        return loop.state.round < 1


def _surf_config(**overrides):
    values = dict(labels=24, steps=2_400, rounds=3, initial_steps=600, initial_label_fraction=0.5, segment_len=20,
                  segment_context=5, unlabelled_per_label=5, reward_epochs=3, eval_episodes=1, eval_every=0,
                  progress_bar=False, fit={"pseudo_threshold": 0.6, "crop": 5, "batch_size": 8},
                  hyperparams=dict(learning_starts=200, policy_kwargs=dict(net_arch=[16, 16])))
    return PrefsConfig.for_env("Pendulum-v1", algo="sac", **{**values, **overrides})


@pytest.mark.slow
def test_a_surf_run_fits_on_unlabelled_pairs_and_resumes_with_its_pool(tmp_path):
    first = run_prefs(_surf_config(), tmp_path / "run", callbacks=[_StopAfterRound()])
    assert not first["finished"]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["reward_model/unlabelled_pairs"] for m in metrics] == [60, 90]  # 5 per label: 12, then 18 labels
    assert all(0 <= m["reward_model/pseudo_confident"] <= 1 for m in metrics)
    resumed = run_prefs(_surf_config(), tmp_path / "run", resume=True)
    assert resumed["finished"] and resumed["labels_used"] == 24
    pool = build_loop(_surf_config(), tmp_path / "other").reward_model.unlabelled
    ckpt = tmp_path / "run" / "checkpoints"
    pool.load(ckpt / json.loads((ckpt / "latest.json").read_text())["checkpoint"])
    assert pool.labels_seen == 24 and len(pool.pairs) == 120 and pool.pairs.context == 5


def test_surf_settings_are_checked_where_they_enter():
    with pytest.raises(ValueError, match="unlabelled_per_label"):
        PrefsConfig(env="Pendulum-v1", fit={"pseudo_threshold": 0.99})
    with pytest.raises(ValueError, match="segment_context"):
        PrefsConfig(env="Pendulum-v1", segment_context=-1)
