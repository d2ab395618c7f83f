import json
import logging
import math

import pytest
import torch

import agents.llm.kto as kto_module
from agents.llm.base import NonFiniteLossError
from agents.llm.kto import KTOConfig, KTOTrainer, kto_examples
from agents.llm.offline import sequence_logps
from rewardmodels.text.preferences import EmptyResponseError, TextPreferenceError, TextPreferencePairs
from tests.agents.lm_fixtures import PROMPTS, changed, snapshot
from textenv.testing import make_tiny_lm

GOOD = ["good good", "very good", "good and fun", "it was good"]
BAD = ["bad bad", "very bad", "awful and boring", "it was bad"]


def examples(n=24):
    """Unpaired rows: every other one a desirable ("good") completion, the rest undesirable ("bad") ones."""
    return [(PROMPTS[i % len(PROMPTS)], GOOD[i % 4] if i % 2 == 0 else BAD[i % 4], i % 2 == 0) for i in range(n)]


def log_ratios(model, ref_model, tokenizer, rows):
    """(N,) ``log pi(y|x) - log pi_ref(y|x)`` of each row, computed here rather than by the trainer."""
    prompts, completions, _ = zip(*rows, strict=True)
    with torch.no_grad():
        policy = sequence_logps(model, tokenizer, prompts, completions, True, "cpu")
        return policy - sequence_logps(ref_model, tokenizer, prompts, completions, True, "cpu")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"beta": 0.0}, "beta must be > 0"),
        ({"desirable_weight": 0.0}, "desirable_weight and undesirable_weight must be > 0"),
        ({"undesirable_weight": -1.0}, "desirable_weight and undesirable_weight must be > 0"),
        ({"batch_size": 1}, "batch_size must be >= 2 for KTO"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"learning_rate": 0.0}, "learning_rate and adam_eps must be > 0"),
        ({"max_grad_norm": 0.0}, "max_grad_norm must be > 0"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KTOConfig(**kwargs)


def test_kto_raises_desirable_and_lowers_undesirable_logprobs_against_the_reference(tmp_path):
    model, tokenizer = make_tiny_lm()
    before = snapshot(model)
    data = examples()
    trainer = KTOTrainer(model, tokenizer, data, KTOConfig(learning_rate=3e-3, epochs=4), run_dir=tmp_path)
    reference = snapshot(trainer.ref_model)
    assert trainer.evaluate()["eval/reward_margin"] == pytest.approx(0.0, abs=1e-5)  # policy == reference
    trainer.learn()
    assert changed(before, model)
    assert not changed(reference, trainer.ref_model)
    ratio = log_ratios(model, trainer.ref_model, tokenizer, data)
    desirable = torch.tensor([d for _, _, d in data])
    assert bool((ratio[desirable] > 1.0).all()), ratio[desirable]  # each desirable completion more likely
    assert bool((ratio[~desirable] < -1.0).all()), ratio[~desirable]  # each undesirable one less likely
    end = trainer.evaluate()
    assert end["eval/rewards_desirable"] == pytest.approx(0.1 * float(ratio[desirable].mean()), rel=1e-4)
    assert end["eval/rewards_undesirable"] == pytest.approx(0.1 * float(ratio[~desirable].mean()), rel=1e-4)
    checkpoint = tmp_path / "checkpoints" / "last"
    assert (checkpoint / "model.safetensors").exists()
    assert json.loads((checkpoint / "trainer_state.json").read_text()) == {"algo": "kto", "step": trainer.step}
    assert {"losses/rewards/desirable", "losses/kl", "losses/loss", "charts/examples_per_s"} <= set(
        trainer.last_metrics
    )


def test_one_batch_loss_against_a_hand_computation():
    model, tokenizer = make_tiny_lm()
    ref_model = make_tiny_lm(seed=1)[0]
    data = [
        ("the movie was", "good fun", True),
        ("i loved the", "bad plot", False),
        ("this book is", "very good", True),
        ("the phone was", "awful", False),
    ]
    cfg = KTOConfig(beta=0.5, desirable_weight=1.5, undesirable_weight=0.5, batch_size=4)
    trainer = KTOTrainer(model, tokenizer, data, cfg, ref_model=ref_model)
    rows = [2, 0, 3]
    loss, metrics = trainer.batch_loss(torch.tensor(rows))

    def log_ratio(prompt, completion):  # one row per forward: no padding shared with other rows
        return float(log_ratios(model, ref_model, tokenizer, [(prompt, completion, None)])[0])

    picked = [data[i] for i in rows]
    r = [log_ratio(p, c) for p, c, _ in picked]
    # Reference point: each row's prompt with the previous row's completion (cyclically), mean, clamped at 0.
    z0 = max(0.0, sum(log_ratio(picked[k][0], picked[k - 1][1]) for k in range(3)) / 3)
    assert z0 > 0.01  # this batch exercises the reference point
    sigmoid = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    by_hand = [
        1.5 * (1 - sigmoid(0.5 * (ri - z0))) if desirable else 0.5 * (1 - sigmoid(0.5 * (z0 - ri)))
        for ri, (_, _, desirable) in zip(r, picked, strict=True)
    ]
    assert loss.item() == pytest.approx(sum(by_hand) / 3, rel=1e-5)
    assert metrics["kl"].item() == pytest.approx(z0, abs=1e-5)
    assert metrics["rewards/desirable"].item() == pytest.approx(0.5 * (r[0] + r[1]) / 2, abs=1e-5)
    assert metrics["rewards/undesirable"].item() == pytest.approx(0.5 * r[2], abs=1e-5)
    assert loss.requires_grad


def test_pairs_give_a_desirable_and_an_undesirable_example():
    pairs = TextPreferencePairs(["p1", "p2", "p3"], ["a1", "a2", "a3"], ["b1", "b2", "b3"], [1.0, 0.0, 0.5])
    assert kto_examples(pairs) == [("p1", "a1", True), ("p1", "b1", False), ("p2", "b2", True), ("p2", "a2", False)]
    mixed = [
        {"prompt": "p", "completion": "c", "label": False},  # TRL's unpaired format
        {"prompt": "q", "completion": "d", "desirable": True},
        ("r", "e", True),
        ("s", "chosen", "rejected"),  # a pair
    ]
    assert kto_examples(mixed) == [
        ("p", "c", False),
        ("q", "d", True),
        ("r", "e", True),
        ("s", "chosen", True),
        ("s", "rejected", False),
    ]


def test_bad_examples_raise_errors_that_say_what_to_fix():
    with pytest.raises(TextPreferenceError, match="give True"):
        kto_examples([{"prompt": "p", "completion": "c", "label": 0.7}])
    with pytest.raises(EmptyResponseError):
        kto_examples([("p", "   ", True)])
    with pytest.raises(TextPreferenceError, match="no examples"):
        kto_examples([])
    model, tokenizer = make_tiny_lm()
    with pytest.raises(TextPreferenceError, match="at least 2 examples"):
        KTOTrainer(model, tokenizer, [("p", "c", True)])


def test_a_remainder_of_one_example_joins_the_previous_minibatch(monkeypatch):
    model, tokenizer = make_tiny_lm()
    trainer = KTOTrainer(model, tokenizer, examples(5), KTOConfig(batch_size=2, learning_rate=1e-3))
    sizes = []
    real = trainer.batch_loss
    monkeypatch.setattr(trainer, "batch_loss", lambda rows: (sizes.append(len(rows)), real(rows))[1])
    trainer.learn()
    assert sizes == [2, 3]  # never a minibatch of one, which has no mismatched pair for the reference point


def test_unbalanced_weights_are_reported(caplog):
    model, tokenizer = make_tiny_lm()
    with caplog.at_level(logging.WARNING, logger="agents.llm.kto"):
        KTOTrainer(model, tokenizer, [("p", "a", True), ("q", "b", True), ("r", "c", True), ("s", "d", False)])
    assert "outside the paper's advised [1, 4/3]" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="agents.llm.kto"):
        KTOTrainer(model, tokenizer, examples(4))
    assert not caplog.text


def test_nan_loss_stops_and_keeps_the_weights(monkeypatch):
    model, tokenizer = make_tiny_lm()
    trainer = KTOTrainer(model, tokenizer, examples(4), KTOConfig(batch_size=2))
    weights = snapshot(model)
    monkeypatch.setattr(kto_module, "kto_loss", lambda *a, **k: (torch.tensor(float("nan"), requires_grad=True), {}))
    with pytest.raises(NonFiniteLossError, match="KTO loss is nan"):
        trainer.learn()
    assert not changed(weights, model)
