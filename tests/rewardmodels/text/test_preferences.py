"""rewardmodels.text.preferences: pairs, validation, rankings -> pairs, files and datasets in TRL's formats, Elo."""

import json
import math

import numpy as np
import pytest

from rewardmodels.text.preferences import (
    EmptyResponseError,
    IdenticalResponsesError,
    PreferencePromptTooLongError,
    TextPair,
    TextPreferenceError,
    TextPreferenceFileError,
    TextPreferencePairs,
    elo_ratings,
    load_text_preferences,
    split_implicit_prompt,
)
from tests.chat_fixtures import make_chat_tokenizer
from textenv.testing import make_tiny_tokenizer

NAN = float("nan")


def _pairs():
    return TextPreferencePairs(
        prompts=["p1", "p2", "p3", "p4"],
        responses_a=["good", "bad", "fine", "meh"],
        responses_b=["bad", "great", "okay", "so so"],
        labels=[1.0, 0.0, 0.5, NAN],
    )


def test_construction_views_and_indexing():
    pairs = _pairs()
    assert len(pairs) == 4 and pairs.labels.dtype == np.float32
    assert pairs[0] == TextPair("p1", "good", "bad", 1.0)
    assert isinstance(pairs[1:3], TextPreferencePairs) and pairs[1:3].prompts == ["p2", "p3"]
    assert len(pairs.labelled()) == 3
    strict = pairs.strict()
    assert strict.prompts == ["p1", "p2"]
    assert strict.chosen == ["good", "great"] and strict.rejected == ["bad", "bad"]
    with pytest.raises(TextPreferenceError, match="strict"):
        _ = pairs.chosen
    both = pairs.append(strict)
    assert len(both) == 6 and both.prompts[-1] == "p2"
    cr = TextPreferencePairs.from_chosen_rejected(["p"], ["yes"], ["no"])
    assert cr[0] == TextPair("p", "yes", "no", 1.0)


@pytest.mark.parametrize(
    "a,b,error",
    [("", "x", EmptyResponseError), ("x", "   ", EmptyResponseError), ("same", "same", IdenticalResponsesError),
     ("same ", " same", IdenticalResponsesError)],
)
def test_empty_or_identical_responses_raise_specific_errors(a, b, error):
    with pytest.raises(error, match="pair #1"):
        TextPreferencePairs(["p", "p"], ["ok", a], ["fine", b], [1.0, 1.0])
    assert issubclass(error, ValueError)


def test_bad_labels_and_lengths():
    with pytest.raises(TextPreferenceError, match="label"):
        TextPreferencePairs(["p"], ["a"], ["b"], [0.7])
    with pytest.raises(TextPreferenceError, match="same length"):
        TextPreferencePairs(["p", "q"], ["a"], ["b"], [1.0])


def test_rankings_expand_to_all_pairs():
    # K = 4 -> 6 pairs, K = 2 -> 1 pair, best first
    pairs = TextPreferencePairs.from_rankings(["p", "q"], [["w", "x", "y", "z"], ["best", "worst"]])
    assert len(pairs) == 4 * 3 // 2 + 1
    got = list(zip(pairs.prompts, pairs.chosen, pairs.rejected, strict=True))
    assert got[:6] == [("p", "w", "x"), ("p", "w", "y"), ("p", "w", "z"), ("p", "x", "y"), ("p", "x", "z"),
                       ("p", "y", "z")]
    assert got[6] == ("q", "best", "worst")
    assert np.all(pairs.labels == 1.0)
    # with an rng, sides are randomised but the preference is unchanged
    swapped = TextPreferencePairs.from_rankings(["p", "q"], [["w", "x", "y", "z"], ["best", "worst"]], rng=0)
    assert set(swapped.labels.tolist()) == {0.0, 1.0}
    assert list(zip(swapped.chosen, swapped.rejected, strict=True)) == [(c, r) for _, c, r in got]
    with pytest.raises(TextPreferenceError, match="K >= 2"):
        TextPreferencePairs.from_rankings(["p"], [["only"]])
    with pytest.raises(IdenticalResponsesError):
        TextPreferencePairs.from_rankings(["p"], [["dup", "other", "dup"]])


def test_save_load_roundtrip(tmp_path):
    pairs = TextPreferencePairs(["p\n1", "ünï"], ["a \"quoted\"", "x"], ["b", "y"], [1.0, NAN])
    path = tmp_path / "sub" / "pairs.jsonl"
    pairs.save(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["label"] is None
    loaded = TextPreferencePairs.load(path)
    assert loaded.prompts == pairs.prompts and loaded.responses_a == pairs.responses_a
    np.testing.assert_array_equal(loaded.labels, pairs.labels)  # NaN == NaN here
    assert sorted(p.name for p in path.parent.iterdir()) == ["pairs.jsonl"]  # no temporary file left


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "pairs.jsonl"
    _pairs().save(path)
    before = path.read_text()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("textenv.files.os.replace", boom)  # the one rename of every atomic write
    with pytest.raises(OSError, match="disk full"):
        TextPreferencePairs(["x"], ["y"], ["z"], [0.0]).save(path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["pairs.jsonl"]


def test_load_reports_corrupt_lines(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "p", "response_a": "a", "response_b": "b", "label": 1}\n{"prompt": "p", "resp')
    with pytest.raises(TextPreferenceFileError, match=r"bad.jsonl:2: not valid JSON"):
        TextPreferencePairs.load(path)
    path.write_text('{"prompt": "p", "response_a": "a", "response_b": "a", "label": 1}\n')
    with pytest.raises(IdenticalResponsesError, match=r"bad.jsonl:1"):
        TextPreferencePairs.load(path)
    path.write_text('{"prompt": "p", "text": "a"}\n')
    with pytest.raises(TextPreferenceFileError, match="expected keys"):
        TextPreferencePairs.load(path)
    path.write_text('{"prompt": "p", "response_a": "a", "response_b": "b", "label": "yes"}\n')
    with pytest.raises(TextPreferenceFileError, match="label"):
        TextPreferencePairs.load(path)


def test_load_chosen_rejected_records(tmp_path):
    path = tmp_path / "hh.jsonl"
    path.write_text('{"prompt": "q", "chosen": "good answer", "rejected": "bad answer"}\n\n')
    pairs = TextPreferencePairs.load(path)
    assert pairs.chosen == ["good answer"] and pairs.labels.tolist() == [1.0]


def test_elo_hand_values():
    # game 1: equal ratings, E = 0.5 -> winner +16, loser -16
    # game 2: E_a = 1 / (1 + 10^((984 - 1016) / 400)) = 0.545922 -> a += 32 * (1 - 0.545922) = 14.5305
    pairs = TextPreferencePairs(["p", "p"], ["a", "b"], ["b", "a"], [1.0, 0.0])
    r = elo_ratings(pairs)
    assert r["a"] == pytest.approx(1030.5305, abs=1e-3)
    assert r["b"] == pytest.approx(969.4695, abs=1e-3)
    # a tie between equal ratings changes nothing; skipped pairs are ignored
    tie = elo_ratings(TextPreferencePairs(["p", "p"], ["a", "a"], ["b", "b"], [0.5, NAN]))
    assert tie == {"a": 1000.0, "b": 1000.0}


def test_elo_from_rankings_matches_sequential_games():
    rankings = [["x", "y", "z"], ["z", "x"]]
    r = elo_ratings(rankings, k=16, initial=1500)
    # the same games, by hand: x>y, x>z, y>z, z>x
    ref = {"x": 1500.0, "y": 1500.0, "z": 1500.0}
    for w, l in [("x", "y"), ("x", "z"), ("y", "z"), ("z", "x")]:
        e = 1 / (1 + 10 ** ((ref[l] - ref[w]) / 400))
        ref[w] += 16 * (1 - e)
        ref[l] -= 16 * (1 - e)
    assert r == pytest.approx(ref)
    assert sum(r.values()) == pytest.approx(3 * 1500)  # Elo is zero-sum
    assert r["x"] > r["y"] and math.isfinite(r["z"])
    with pytest.raises(TypeError, match="string"):
        elo_ratings(["xyz"])


# ---------------------------------------------------------------------- TRL formats, datasets, errors at load

HH_CHOSEN = "\n\nHuman: was the movie good?\n\nAssistant: Yes it was great"
HH_REJECTED = "\n\nHuman: was the movie good?\n\nAssistant: No"


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _user(text):
    return [{"role": "user", "content": text}]


def _assistant(text):
    return [{"role": "assistant", "content": text}]


def test_standard_format_explicit_and_implicit_prompt(tmp_path):
    path = _jsonl(tmp_path / "hh.jsonl", [
        {"prompt": "q", "chosen": "good answer", "rejected": "bad answer"},
        {"chosen": HH_CHOSEN, "rejected": HH_REJECTED},  # Anthropic HH: no prompt field
        {"prompt": "p", "response_a": "x", "response_b": "y", "label": 0.0},
    ])
    pairs = load_text_preferences(path)
    assert pairs.prompts == ["q", "\n\nHuman: was the movie good?\n\nAssistant:", "p"]
    assert pairs.responses_a == ["good answer", " Yes it was great", "x"]
    assert pairs.responses_b == ["bad answer", " No", "y"]
    assert pairs.labels.tolist() == [1.0, 1.0, 0.0]
    # prompt + response gives back the original texts of the implicit record
    assert pairs.prompts[1] + pairs.responses_a[1] == HH_CHOSEN
    assert pairs.prompts[1] + pairs.responses_b[1] == HH_REJECTED
    assert TextPreferencePairs.load(path).prompts == pairs.prompts  # the old entry point reads the same


def test_implicit_prompt_never_splits_a_word():
    assert split_implicit_prompt("I like cats a lot", "I like cars") == ("I like", " cats a lot", " cars")
    assert split_implicit_prompt("A:\n\nfoo", "A: foo") == ("A:", "\n\nfoo", " foo")  # differing whitespace
    with pytest.raises(TextPreferenceFileError, match=r"x.jsonl:7: .*no 'prompt'.*share no leading text"):
        split_implicit_prompt("cats", "dogs", "x.jsonl:7")
    with pytest.raises(TextPreferenceFileError, match="share no leading message"):
        split_implicit_prompt(_user("a") + _assistant("b"), _user("c") + _assistant("b"), "r")


def test_conversational_format_is_rendered_with_the_chat_template(tmp_path):
    tok = make_chat_tokenizer()
    conv = [
        {"prompt": _user("was the movie good"), "chosen": _assistant("it was great"), "rejected": _assistant("no")},
        {"chosen": _user("the plot") + _assistant("fun story"), "rejected": _user("the plot") + _assistant("boring")},
    ]
    path = _jsonl(tmp_path / "conv.jsonl", conv)
    pairs = load_text_preferences(path, tok)
    # the prompt is rendered with add_generation_prompt=True; prompt + response is the whole rendered conversation
    assert pairs.prompts[0] == tok.apply_chat_template(conv[0]["prompt"], tokenize=False, add_generation_prompt=True)
    assert pairs.prompts[0] == "user : was the movie good <eos> assistant : "
    assert pairs.responses_a[0] == "it was great <eos> " and pairs.responses_b[0] == "no <eos> "
    full = tok.apply_chat_template(conv[1]["chosen"], tokenize=False)
    assert pairs.prompts[1] == "user : the plot <eos> assistant : " and pairs.prompts[1] + pairs.responses_a[1] == full
    with pytest.raises(TextPreferenceFileError, match=r"conv.jsonl:1: .*pass the model's tokenizer"):
        load_text_preferences(path)
    with pytest.raises(TextPreferenceFileError, match=r"conv.jsonl:1: .*no chat template"):
        load_text_preferences(path, make_tiny_tokenizer())


def test_datasets_dataset_and_list_sources_read_alike():
    datasets = pytest.importorskip("datasets")
    records = [{"prompt": "q", "chosen": "good answer", "rejected": "bad answer"},
               {"prompt": "r", "chosen": "fun", "rejected": "boring"}]
    from_list = load_text_preferences(records)
    from_dataset = load_text_preferences(datasets.Dataset.from_list(records))
    assert from_dataset.prompts == from_list.prompts == ["q", "r"] and from_dataset.chosen == ["good answer", "fun"]
    conv = datasets.Dataset.from_list([{"chosen": _user("hi") + _assistant("fun"),
                                        "rejected": _user("hi") + _assistant("boring")}])
    assert load_text_preferences(conv, make_chat_tokenizer()).responses_b == ["boring <eos> "]
    broken = datasets.Dataset.from_list([records[0], {"prompt": "r", "chosen": "same", "rejected": "same"}])
    with pytest.raises(IdenticalResponsesError, match="dataset row 1"):
        load_text_preferences(broken)
    with pytest.raises(TextPreferenceFileError, match=r"DatasetDict.*dataset\['train'\]"):
        load_text_preferences(datasets.DatasetDict({"train": broken}))
    # the existing internal type and (prompt, chosen, rejected) triples go through unchanged
    assert load_text_preferences(from_list) is from_list
    assert load_text_preferences([("q", "a", "b")]).labels.tolist() == [1.0]


@pytest.mark.parametrize(
    ("record", "error", "message"),
    [
        ({"prompt": "q", "chosen": "a"}, TextPreferenceFileError, r"bad.jsonl:2: field 'rejected' is missing"),
        ({"prompt": "q", "text": "a"}, TextPreferenceFileError,
         r"bad.jsonl:2: expected keys .*got \['prompt', 'text'\]"),
        ({"prompt": "q", "completion": "a", "label": True}, TextPreferenceFileError, r"bad.jsonl:2: .*unpaired"),
        ({"prompt": "q", "chosen": _assistant("a"), "rejected": "b"}, TextPreferenceFileError,
         r"bad.jsonl:2: fields must all be strings .*chosen: list, rejected: str"),
        ({"prompt": _user("q"), "chosen": [{"role": "assistant"}], "rejected": _assistant("b")},
         TextPreferenceFileError, r"bad.jsonl:2: field 'chosen': message #0 must be a dict with string 'role' and"),
        ({"prompt": _user("q"), "chosen": _user("a"), "rejected": _assistant("b")}, TextPreferenceFileError,
         r"bad.jsonl:2: field 'chosen': the response must be the assistant's turn"),
        ({"prompt": "q", "chosen": "  ", "rejected": "b"}, EmptyResponseError, r"bad.jsonl:2: response_a is empty"),
        ({"prompt": "q", "response_a": "a", "response_b": "b", "label": 0.3}, TextPreferenceError, r"bad.jsonl:2:"),
    ],
)
def test_bad_records_name_the_file_line_and_field(tmp_path, record, error, message):
    path = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "q", "chosen": "good", "rejected": "bad"}, record])
    with pytest.raises(error, match=message):
        load_text_preferences(path, make_chat_tokenizer())


def test_prompt_longer_than_the_context_fails_at_load(tmp_path):
    tok = make_tiny_tokenizer()
    path = _jsonl(tmp_path / "long.jsonl", [{"prompt": "the movie", "chosen": "good", "rejected": "bad"},
                                            {"prompt": "the movie was really very good", "chosen": "a",
                                             "rejected": "b"}])
    assert len(load_text_preferences(path, tok, max_length=7)) == 2
    with pytest.raises(PreferencePromptTooLongError, match=r"long.jsonl:2: the prompt has 6 tokens .* at most 6"):
        load_text_preferences(path, tok, max_length=6)  # no room left for a response
    with pytest.raises(PreferencePromptTooLongError, match=r"pair #1"):
        load_text_preferences(load_text_preferences(path), tok, max_length=6)


def test_unsupported_sources_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_text_preferences(tmp_path / "missing.jsonl")
    with pytest.raises(TextPreferenceFileError, match="load_dataset"):
        load_text_preferences(tmp_path / "prefs.parquet")
    with pytest.raises(TextPreferenceFileError, match="list of records"):
        load_text_preferences({"prompt": "q", "chosen": "a", "rejected": "b"})
    with pytest.raises(TextPreferenceFileError, match="got int"):
        load_text_preferences(3)
    as_json = tmp_path / "prefs.json"  # a .json file holding one list
    as_json.write_text(json.dumps([{"prompt": "q", "chosen": "a", "rejected": "b"},
                                   {"chosen": "x y", "rejected": "z"}]))
    with pytest.raises(TextPreferenceFileError, match=r"prefs.json item #1: .*no 'prompt'"):
        load_text_preferences(as_json)


def test_a_teacher_relabels_any_source(tmp_path):
    from rewardmodels.text.teachers import KeywordTeacher

    path = _jsonl(tmp_path / "prefs.jsonl", [{"prompt": "q", "chosen": "bad movie", "rejected": "good movie"},
                                             {"chosen": HH_CHOSEN, "rejected": HH_REJECTED}])
    labelled = KeywordTeacher(["good", "great"]).label_text_pairs(path)
    assert labelled.labels.tolist() == [0.0, 1.0]  # the teacher disagrees with the file's first label
    assert labelled.prompts[1].endswith("Assistant:")
