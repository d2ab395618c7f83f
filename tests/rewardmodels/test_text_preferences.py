"""rewardmodels.text_preferences: pairs, validation, rankings -> pairs, JSONL files, Elo."""

import json
import math

import numpy as np
import pytest

from rewardmodels.text_preferences import (
    EmptyResponseError,
    IdenticalResponsesError,
    TextPair,
    TextPreferenceError,
    TextPreferenceFileError,
    TextPreferencePairs,
    elo_ratings,
)

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
