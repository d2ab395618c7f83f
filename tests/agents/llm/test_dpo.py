import math

import pytest
import torch

import agents.llm.dpo as dpo_module
from agents.llm.base import NonFiniteLossError
from agents.llm.dpo import DPOConfig, DPOTrainer
from agents.llm.offline import preference_triples, sequence_logps
from rewardmodels.text.preferences import EmptyResponseError, IdenticalResponsesError, TextPreferencePairs
from tests.agents.lm_fixtures import PROMPTS, changed, snapshot
from textenv.testing import make_tiny_lm


def pairs(n=24):
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
    good = ["good good", "very good", "good and fun", "it was good"]
    bad = ["bad bad", "very bad", "awful and boring", "it was bad"]
    a = [good[i % 4] if i % 2 == 0 else bad[i % 4] for i in range(n)]
    b = [bad[i % 4] if i % 2 == 0 else good[i % 4] for i in range(n)]
    labels = [1.0 if i % 2 == 0 else 0.0 for i in range(n)]  # the "good" response always wins, on either side
    return TextPreferencePairs(prompts, a, b, labels)


@pytest.mark.parametrize(("loss_type", "smoothing"), [("sigmoid", 0.0), ("sigmoid", 0.1), ("ipo", 0.0), ("hinge", 0.0)])
def test_dpo_implicit_reward_margin_grows(loss_type, smoothing, tmp_path):
    model, tokenizer = make_tiny_lm()
    before = snapshot(model)
    config = DPOConfig(beta=0.1, loss_type=loss_type, label_smoothing=smoothing, learning_rate=3e-3, epochs=4)
    trainer = DPOTrainer(model, tokenizer, pairs(), config, run_dir=tmp_path)
    start = trainer.evaluate()
    assert abs(start["eval/reward_margin"]) < 1e-5  # policy == reference at the start
    trainer.learn()
    end = trainer.evaluate()
    assert end["eval/reward_margin"] > start["eval/reward_margin"] + 0.1, end
    assert end["eval/reward_accuracy"] > 0.9
    assert changed(before, model)
    assert not changed(snapshot(trainer.ref_model), trainer.ref_model)
    assert (tmp_path / "checkpoints" / "last" / "model.safetensors").exists()
    assert "losses/rewards/margin" in trainer.last_metrics


def test_dpo_raises_chosen_logprob_relative_to_rejected():
    model, tokenizer = make_tiny_lm()
    trainer = DPOTrainer(model, tokenizer, pairs(), DPOConfig(learning_rate=3e-3, epochs=3))

    def lp(text):
        with torch.no_grad():
            return float(sequence_logps(model, tokenizer, ["the movie was"], [text], True, "cpu")[0])

    gap_before = lp("very good") - lp("very bad")
    trainer.learn()
    assert lp("very good") - lp("very bad") > gap_before


def test_labels_follow_the_convention_and_ties_are_dropped():
    data = TextPreferencePairs(
        ["p", "p", "p", "p"], ["a1", "a2", "a3", "a4"], ["b1", "b2", "b3", "b4"], [1.0, 0.0, 0.5, math.nan]
    )
    assert preference_triples(data) == [("p", "a1", "b1"), ("p", "b2", "a2")]


def test_bad_pairs_raise_specific_errors():
    with pytest.raises(EmptyResponseError):
        preference_triples([("p", "   ", "fine")])
    with pytest.raises(IdenticalResponsesError):
        preference_triples([("p", "same text", "same text")])
    with pytest.raises(EmptyResponseError):  # TextPreferencePairs refuses them at construction as well
        TextPreferencePairs(["p"], [""], ["x"], [1.0])
    with pytest.raises(ValueError, match="no pair with a strict preference"):
        preference_triples([("p", "a", "b", 0.5)])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"beta": 0.0}, "beta must be > 0"),
        ({"loss_type": "kto"}, "loss_type must be one of"),
        ({"label_smoothing": 0.5}, r"label_smoothing must be in \[0, 0.5\)"),
        ({"loss_type": "ipo", "label_smoothing": 0.1}, "cDPO"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DPOConfig(**kwargs)


def test_nan_loss_stops_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    model, tokenizer = make_tiny_lm()
    trainer = DPOTrainer(model, tokenizer, pairs(8), DPOConfig(learning_rate=1e-3), run_dir=tmp_path)
    trainer.learn()
    saved = (tmp_path / "checkpoints" / "last" / "model.safetensors").read_bytes()
    weights = snapshot(model)
    monkeypatch.setattr(dpo_module, "dpo_loss", lambda *a, **k: (torch.tensor(float("nan"), requires_grad=True), {}))
    with pytest.raises(NonFiniteLossError, match="DPO loss is nan"):
        trainer.learn()
    assert (tmp_path / "checkpoints" / "last" / "model.safetensors").read_bytes() == saved
    assert not changed(weights, model)
