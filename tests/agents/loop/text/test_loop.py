"""Text RLHF through the one preference loop (agents/loop/text/loop.py, text_pairs.py): online rounds on the current
policy's completions, resume without losing a label, ensemble disagreement, dataset and human labellers."""

import json
import threading

import numpy as np
import pytest

from agents.loop.preference_loop import LoopCallback, PreferenceLoop, label_allocation
from agents.loop.reward_model import EnsembleRewardModel
from agents.loop.text.loop import build_text_loop
from agents.loop.text.pairs import CompletionPairSource
from agents.loop.text.run import TextRLHFConfig, run_text_loop, run_text_rlhf
from rewardmodels.feedback.label_store import LabelStore, store_path
from rewardmodels.text.ensemble import LMRewardEnsemble
from rewardmodels.text.preferences import TextPreferencePairs
from rewardmodels.text.teachers import KeywordTeacher
from tests.agents.lm_fixtures import PROMPTS, TARGET_WORD
from tests.waiting import OUTER_TIMEOUT_S
from textenv.testing import make_tiny_lm

TINY = dict(max_new_tokens=6, max_prompt_tokens=4, rm_epochs=2, rm_learning_rate=3e-3, learning_rate=1e-2,
            num_envs=16, group_size=4, eval_prompts=4, eval_samples=4, eval_every=0, kl_coef=0.01, num_pairs=36)


def teacher():
    return KeywordTeacher([TARGET_WORD], normalize=True)


def build(tmp_path, name="run", callbacks=(), **overrides):
    model, tokenizer = make_tiny_lm()
    config = TextRLHFConfig(**{"algo": "grpo", "iterations": 9, "rounds": 3, **TINY, **overrides})
    return build_text_loop(config, tmp_path / name, model, tokenizer, PROMPTS[:4], PROMPTS[4:], teacher(),
                           callbacks=callbacks)


def test_online_loop_spreads_labels_over_rounds_on_the_current_policy(tmp_path):
    loop, agent = build(tmp_path, iterations=12, num_pairs=48)
    assert isinstance(loop, PreferenceLoop) and isinstance(loop.source, CompletionPairSource)
    allocation = label_allocation(loop.config)
    # The initial share on the untrained policy, the rest in rounds 1..R-1; the last round only improves.
    assert allocation[0] == round(48 * 0.4) and allocation[-1] == 0 and sum(allocation) == 48
    result = run_text_loop(loop, agent)
    s = result.summary
    assert s["labels_used"] == 48 and s["rounds"] == 3 and s["finished"]
    rows = result.run_dir.read_metrics()
    used = [r["labels/used"] for r in rows if "labels/used" in r]
    assert used == np.cumsum(allocation).tolist()  # one row per round, labels as allocated
    assert len([r for r in rows if "eval/oracle_score" in r]) == 4  # the oracle before, and after every round
    pairs = TextPreferencePairs.load(tmp_path / "run" / "pairs.jsonl")
    assert len(pairs) == 48 and np.isin(pairs.labels, [0.0, 0.5, 1.0]).all()
    # Labels are asked on the policy being trained (one object: the agent trains it in place, the source samples it).
    assert loop.source.ctx.policy is agent.ctx.policy
    print(s)
    assert s["oracle_score_after"] > s["oracle_score_before"]
    assert s["learned_reward_after"] > s["learned_reward_before"]


class StopAfter(LoopCallback):
    def __init__(self, round_):
        self.round = round_

    def on_round_end(self, loop, metrics):
        return loop.state.round < self.round


def test_resume_keeps_every_label_and_ends_where_an_uninterrupted_run_ends(tmp_path):
    straight = run_text_loop(*build(tmp_path, "straight"))
    loop, agent = build(tmp_path, "stopped", callbacks=[StopAfter(1)])
    stopped = run_text_loop(loop, agent)
    assert not stopped.summary["finished"] and stopped.summary["labels_used"] < 36
    kept = TextPreferencePairs.load(tmp_path / "stopped" / "pairs.jsonl")
    loop, agent = build(tmp_path, "stopped")
    resumed = run_text_loop(loop, agent, resume=True)
    assert resumed.summary["finished"] and resumed.summary["labels_used"] == 36
    final = TextPreferencePairs.load(tmp_path / "stopped" / "pairs.jsonl")
    assert final.prompts[: len(kept)] == kept.prompts and final.responses_a[: len(kept)] == kept.responses_a
    np.testing.assert_array_equal(final.labels[: len(kept)], kept.labels)  # no label lost or changed
    reference = TextPreferencePairs.load(tmp_path / "straight" / "pairs.jsonl")
    assert final.responses_a == reference.responses_a  # the same pairs as the run that never stopped
    assert resumed.before.responses == straight.before.responses  # "before" is kept in the checkpoint


def test_disagreement_selects_the_pairs_the_reward_ensemble_disagrees_on(tmp_path):
    loop, agent = build(tmp_path, rm_ensemble=2, selection="disagreement", oversample=3, rounds=2, iterations=2)
    run_text_loop(loop, agent)
    rm = loop.reward_model  # the loop's one reward-model adapter, over the LM ensemble
    assert isinstance(rm, EnsembleRewardModel) and isinstance(rm.ensemble, LMRewardEnsemble)
    assert len(rm.ensemble.members) == 2
    candidates = loop.source.candidates(12, np.random.default_rng(0))
    chosen = rm.select(candidates, 4, "disagreement", np.random.default_rng(0))
    spread = rm.ensemble.disagreement(candidates)
    assert len(chosen) == 4 and spread.std() > 0
    assert np.sort(rm.ensemble.disagreement(chosen)) == pytest.approx(np.sort(spread)[-4:])  # the top-4 by variance
    with pytest.raises(ValueError, match="rm_ensemble >= 2"):
        TextRLHFConfig(selection="disagreement", rm_ensemble=1)


def test_dataset_labeller_uses_the_files_pairs_and_never_samples_for_labels(tmp_path):
    prefs = [{"prompt": p, "chosen": "good good good", "rejected": "bad awful"} for p in PROMPTS[:4]] * 3
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in prefs))
    model, tokenizer = make_tiny_lm()
    config = TextRLHFConfig(**{**TINY, "algo": "dpo", "iterations": 4, "rounds": 2, "labeller": "dataset",
                               "preferences": str(path), "num_pairs": 100, "kl_coef": 0.1, "learning_rate": 3e-3})
    result = run_text_rlhf(config, tmp_path / "run", model, tokenizer, PROMPTS[:4], PROMPTS[4:], teacher())
    pairs = TextPreferencePairs.load(tmp_path / "run" / "pairs.jsonl")
    assert result.summary["labels_used"] == 12 == len(pairs)  # the budget is capped at the file's size
    assert set(pairs.responses_a) == {"good good good"} and (pairs.labels == 1.0).all()
    # DPO learnt the file's preferences: its implicit reward ranks every chosen response first.
    assert result.summary["eval/reward_accuracy"] == 1.0 and result.summary["eval/reward_margin"] > 0


def test_people_label_the_loops_pairs_through_the_label_store(tmp_path):
    """--labeller human without a browser: a scripted person labels through the store's API while the loop waits."""
    loop, agent = build(tmp_path, rounds=2, iterations=4, num_pairs=12, labeller="human")
    done = threading.Event()

    def person():
        with LabelStore(store_path(tmp_path / "run")) as store:
            while not done.is_set():
                pair = store.next_pair("ada")
                if pair is None:
                    done.wait(0.05)
                    continue
                a, b = pair["payload"]["response_a"], pair["payload"]["response_b"]
                choice = "left" if a.split().count(TARGET_WORD) >= b.split().count(TARGET_WORD) else "right"
                store.submit(pair["pair_id"], choice, "ada")

    worker = threading.Thread(target=person, daemon=True)
    worker.start()
    try:
        result = run_text_loop(loop, agent)
    finally:
        done.set()
        worker.join(5)
    assert result.summary["labels_used"] == 12
    with LabelStore(store_path(tmp_path / "run")) as store:
        assert len(store.rows()) == 12 and {r["labeller"] for r in store.rows()} == {"ada"}
        notes = store.notes()  # what the labelling page shows people: the task, and how the run goes
    assert notes["instructions"].startswith("Each pair is two responses") and "12 labels so far" in notes["status"]
    assert "agreed with" in notes["status"]  # round 2's labels measured against the round-1 model


def test_mixed_labeller_sends_a_share_to_people_and_the_rest_to_the_teacher(tmp_path):
    from rewardmodels.feedback.human import HumanLabeller, MixedLabeller

    prompts = ["the movie was"] * 6
    a = [f"good {w}" for w in "fun story plot music price screen".split()]
    b = [f"bad {w}" for w in "fun story plot music price screen".split()]
    human = HumanLabeller(tmp_path, timeout=OUTER_TIMEOUT_S, poll_s=0.05)  # the bound of a broken test
    mixed = MixedLabeller(human, teacher(), human_fraction=0.5, seed=0)
    done = threading.Event()

    def person():  # prefers the right-hand response, whatever it says: people's labels are told apart by that
        with LabelStore(store_path(tmp_path)) as store:
            while not done.is_set():
                pair = store.next_pair("bo")
                if pair is None:
                    done.wait(0.05)
                    continue
                store.submit(pair["pair_id"], "right", "bo")

    worker = threading.Thread(target=person, daemon=True)
    worker.start()
    try:
        labels = mixed.label_texts(prompts, a, b)
    finally:
        done.set()
        worker.join(5)
    with LabelStore(store_path(tmp_path)) as store:
        asked = {r["pair_id"] for r in store.rows()}
    assert len(asked) == 3  # half of the six pairs went to people, labelled "right" (0.0) ...
    assert sorted(labels.tolist()) == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]  # ... the rest to the teacher, who prefers "good"
    assert mixed.needs_media  # the loop checkpoints the queued pairs before it waits for people
