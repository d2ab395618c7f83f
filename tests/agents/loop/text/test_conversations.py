"""The preference loop on conversations with an environment that answers (``TextRLHFConfig.environment``): pairs of
conversations of one task, labelled by a teacher that compares the environment's returns, or by people who see the
turns; the policy learns from the reward model alone and the environment's return (the gold) rises."""

import json
import threading

import pytest
import torch

from agents.loop.text.config import TextRLHFConfig
from agents.loop.text.run import run_text_rlhf
from rewardmodels.feedback.label_store import LabelStore, store_path
from tests.waiting import OUTER_TIMEOUT_S, wait_until

torch.set_num_threads(1)

SECOND_OPINION = "textenv.environments.reviews:SecondOpinion"


def config(**overrides):
    settings = dict(environment=SECOND_OPINION, num_pairs=64, iterations=20, max_new_tokens=40,
                    max_turn_tokens=16, eval_prompts=8, eval_samples=4, eval_every=0, progress_bar=False, seed=0)
    return TextRLHFConfig.for_algo("grpo", **{**settings, **overrides})


@pytest.mark.slow
def test_a_return_teacher_labels_conversations_and_the_environments_return_rises(tmp_path):
    result = run_text_rlhf(config(), tmp_path / "run")
    s = result.summary
    # The policy never saw the environment's reward (environment_reward=0): only the reward model fitted on the
    # teacher's labels of conversation pairs. The untrained default LM's return is about 0.05.
    assert s["oracle_score_before"] < 0.2 and s["oracle_score_after"] > s["oracle_score_before"] + 0.2, s
    pairs = [json.loads(line) for line in (tmp_path / "run" / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 64
    assert all("My sister" in p["response_a"] and "My sister" in p["response_b"] for p in pairs)  # whole conversations
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/environment_return" in m for m in metrics)


def test_people_see_both_conversations_turn_by_turn_and_their_labels_train_the_reward_model(tmp_path):
    run = tmp_path / "run"
    cfg = config(labeller="human", num_pairs=8, iterations=1, eval_prompts=2, eval_samples=1, label_timeout=600)
    seen: list[dict] = []

    def person() -> None:  # a scripted person who prefers the side whose last turn agrees with the sister
        wait_until(store_path(run).exists, "the run's label store")
        with LabelStore(store_path(run)) as store:
            labelled = 0
            while labelled < 8:
                pair = store.next_pair("ada")
                if pair is None:
                    done = labelled
                    wait_until(lambda done=done: store.progress()["queued"] > done, "more pairs")
                    continue
                seen.append(pair["payload"])
                store.submit(pair["pair_id"], 1.0, "ada")
                labelled += 1

    thread = threading.Thread(target=person, daemon=True)
    thread.start()
    result = run_text_rlhf(cfg, run)
    thread.join(OUTER_TIMEOUT_S)
    assert len(seen) == 8 and result.summary["labels_used"] == 8
    for payload in seen:
        for side in "ab":
            turns = payload[f"turns_{side}"]
            assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
            assert turns[2]["content"] in ("My sister loved it.", "My sister hated it.")  # the environment's turn
            assert turns[0]["content"] == payload[f"turns_{'b' if side == 'a' else 'a'}"][0]["content"]  # one task
    assert (run / "reward_model" / "config.json").is_file()


def test_bad_environment_settings_are_refused_before_the_run():
    with pytest.raises(ValueError, match="drop --prompts"):
        TextRLHFConfig(environment=SECOND_OPINION, prompts="prompts.txt")
    with pytest.raises(ValueError, match="whole responses"):
        TextRLHFConfig.for_algo("dpo", environment=SECOND_OPINION)
    with pytest.raises(ValueError, match="environment=... too"):
        TextRLHFConfig(max_turn_tokens=8)
    with pytest.raises(Exception, match="nope"):
        TextRLHFConfig(environment="nope:Nothing")
