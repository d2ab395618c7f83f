"""What DPO and KTO read: preference data in TRL's standard and conversational formats, explicit and implicit
prompt, from JSONL files, ``datasets.Dataset`` and lists, with errors that name the record (agents/llm/offline.py)."""

import json

import pytest

from agents.llm.dpo import DPOConfig, DPOTrainer
from agents.llm.kto import KTOTrainer
from agents.llm.offline import preference_triples
from rewardmodels.text.preferences import TextPreferenceError, TextPreferenceFileError, load_text_preferences
from tests.agents.lm_fixtures import changed, snapshot
from tests.chat_fixtures import make_chat_lm
from textenv.testing import make_tiny_lm

HH = [  # Anthropic HH layout: the prompt is the shared start of chosen and rejected
    {"chosen": "the movie was good and fun", "rejected": "the movie was bad"},
    {"chosen": "it was very good", "rejected": "it was awful"},
]
STANDARD = [{"prompt": "the movie was", "chosen": "good and fun", "rejected": "bad"},
            {"prompt": "it was", "chosen": "very good", "rejected": "awful"}]


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_implicit_prompt_records_give_prompt_chosen_rejected():
    # rlhf-gym 0.1 raised KeyError: 'prompt' here
    assert preference_triples(HH) == [("the movie was", " good and fun", " bad"), ("it was", " very good", " awful")]


def test_dpo_trains_from_a_jsonl_path_and_a_dataset_alike(tmp_path):
    datasets = pytest.importorskip("datasets")
    path = _write(tmp_path / "prefs.jsonl", STANDARD)
    config = DPOConfig(learning_rate=3e-3, epochs=2, batch_size=2)
    weights = []
    for source in (path, datasets.Dataset.from_list(STANDARD), STANDARD):
        model, tok = make_tiny_lm()
        before = snapshot(model)
        trainer = DPOTrainer(model, tok, source, config).learn()
        assert trainer.triples == [(r["prompt"], r["chosen"], r["rejected"]) for r in STANDARD]
        assert changed(before, model)
        weights.append(snapshot(model))
    for other in weights[1:]:  # the same data in another container trains the same weights
        assert all((other[k] == weights[0][k]).all() for k in weights[0])


def test_conversational_records_are_rendered_with_the_chat_template(tmp_path):
    model, tok = make_chat_lm()
    user = [{"role": "user", "content": "the movie was"}]
    records = [{"prompt": user, "chosen": [{"role": "assistant", "content": "good"}],
                "rejected": [{"role": "assistant", "content": "bad"}]},
               {"chosen": user + [{"role": "assistant", "content": "very fun"}],  # implicit, conversational
                "rejected": user + [{"role": "assistant", "content": "boring"}]}]
    path = _write(tmp_path / "conv.jsonl", records)
    prompt = "user : the movie was <eos> assistant : "
    assert preference_triples(path, tok) == [(prompt, "good <eos> ", "bad <eos> "),
                                             (prompt, "very fun <eos> ", "boring <eos> ")]
    with pytest.raises(TextPreferenceFileError, match=r"conv.jsonl:1: .*tokenizer"):
        preference_triples(path)  # rendering needs the tokenizer's template
    trainer = DPOTrainer(model, tok, load_text_preferences(path, tok), DPOConfig(batch_size=2))
    assert trainer.num_rows == 2 and trainer.ref_chosen.shape == (2,)
    direct = DPOTrainer(model, tok, path, DPOConfig(batch_size=2))  # the trainer renders with its own tokenizer
    assert direct.triples == preference_triples(path, tok)
    kto = KTOTrainer(model, tok, path)
    assert kto.examples[:2] == [(prompt, "good <eos> ", True), (prompt, "bad <eos> ", False)]


def test_kto_reads_pairs_from_a_dataset():
    datasets = pytest.importorskip("datasets")
    model, tok = make_tiny_lm()
    trainer = KTOTrainer(model, tok, datasets.Dataset.from_list(HH))
    assert trainer.examples == [("the movie was", " good and fun", True), ("the movie was", " bad", False),
                                ("it was", " very good", True), ("it was", " awful", False)]


def test_kto_reads_unpaired_examples_from_a_file_plain_and_conversational(tmp_path):
    model, tok = make_chat_lm()
    user = [{"role": "user", "content": "the movie was"}]
    rows = [{"prompt": "it was", "completion": "very good", "label": True},
            {"prompt": user, "completion": [{"role": "assistant", "content": "bad"}], "label": False},
            STANDARD[0]]  # a pair among unpaired rows gives one desirable and one undesirable example
    trainer = KTOTrainer(model, tok, _write(tmp_path / "kto.jsonl", rows))
    assert trainer.examples == [("it was", "very good", True),
                                ("user : the movie was <eos> assistant : ", "bad <eos> ", False),
                                ("the movie was", "good and fun", True), ("the movie was", "bad", False)]
    _write(tmp_path / "kto.jsonl", [rows[0], {"prompt": "p", "completion": "x", "label": "yes"}])
    with pytest.raises(TextPreferenceError, match=r"kto.jsonl:2 has desirable='yes'"):
        KTOTrainer(model, tok, tmp_path / "kto.jsonl")


def test_bad_files_fail_at_construction_naming_the_line_and_field(tmp_path):
    model, tok = make_tiny_lm()
    path = _write(tmp_path / "bad.jsonl", [STANDARD[0], {"prompt": "it was", "chosen": "good"}])
    with pytest.raises(TextPreferenceFileError, match=r"bad.jsonl:2: field 'rejected' is missing"):
        DPOTrainer(model, tok, path)
    _write(path, [STANDARD[0], {"chosen": "good movie", "rejected": "bad movie"}])
    with pytest.raises(TextPreferenceFileError, match=r"bad.jsonl:2: .*no 'prompt'.*share no leading text"):
        DPOTrainer(model, tok, path)
    _write(path, [{"prompt": "p", "output": "x"}])
    with pytest.raises(TextPreferenceFileError, match=r"bad.jsonl:1: expected keys"):
        DPOTrainer(model, tok, path)
