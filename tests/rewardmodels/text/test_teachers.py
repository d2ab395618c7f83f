"""rewardmodels.text.teachers: text oracles with the B-Pref noise models of the control teachers."""

import math

import numpy as np
import pytest

from rewardmodels.teachers import make_teacher
from rewardmodels.text.preferences import TextPreferencePairs
from rewardmodels.text.teachers import KeywordTeacher, LengthTeacher, SentimentTeacher, TextTeacher
from textenv.rewards import RewardFunctionError

POS = "i love this wonderful movie, it was great"
NEG = "this is a terrible and awful film"
NEUTRAL_1, NEUTRAL_2 = "the table", "a chair"


def test_sentiment_oracle_labels_and_scores():
    t = SentimentTeacher()
    s = t.score(["p", "p"], [POS, NEG])
    assert s.shape == (2,) and s[0] > 0.5 and s[1] < -0.5 and np.all(np.abs(s) <= 1)
    labels = t.label(["p"] * 3, [POS, NEG, NEUTRAL_1], [NEG, POS, NEUTRAL_2])
    assert labels.dtype == np.float32
    assert labels.tolist() == [1.0, 0.0, 0.5]  # equal (zero) compound scores tie
    np.testing.assert_array_equal(t(["p"], [POS]), s[:1])  # a teacher is also a reward_fn


def test_noise_models_are_those_of_teacher():
    prompts, a, b = ["p"] * 6, [POS, NEG] * 3, [NEG, POS] * 3
    flipped = SentimentTeacher(eps=1.0).label(prompts, a, b)  # every decided label is a mistake
    assert flipped.tolist() == [0.0, 1.0] * 3
    ties = SentimentTeacher(equal_threshold=5.0).label(prompts, a, b)  # |diff| < 5 always on a [-1, 1] scale
    assert np.all(ties == 0.5)
    skips = SentimentTeacher(skip_threshold=0.99).label(prompts, a, b)  # neither response scores above 0.99
    assert np.all(np.isnan(skips))
    # a Boltzmann teacher with beta = 0 flips coins; seeded, so reproducible
    coin1 = SentimentTeacher(beta=0.0, seed=3).label(["p"] * 200, [POS] * 200, [NEG] * 200)
    coin2 = SentimentTeacher(beta=0.0, seed=3).label(["p"] * 200, [POS] * 200, [NEG] * 200)
    np.testing.assert_array_equal(coin1, coin2)
    assert 0.3 < coin1.mean() < 0.7
    # a ready-made preset teacher can be passed instead of the fields, not both
    preset = SentimentTeacher(teacher=make_teacher("mistake", seed=0))
    assert preset.teacher.eps == pytest.approx(0.1)
    with pytest.raises(ValueError, match="not both"):
        SentimentTeacher(teacher=make_teacher("oracle"), eps=0.2)


def test_length_teacher():
    longer = LengthTeacher()
    assert longer.label(["p", "p"], ["one two three", "one"], ["one", "one two"]).tolist() == [1.0, 0.0]
    target = LengthTeacher(target=3)
    # 2 words is closer to 3 than 6 words
    assert target.label(["p", "p"], ["a b", "a b c d e f"], ["a b c d e f", "a b"]).tolist() == [1.0, 0.0]
    assert target.score(["p"], ["a b c"]).tolist() == [0.0]
    chars = LengthTeacher(unit="chars")
    assert chars.score(["p"], ["abcd"]).tolist() == [4.0]
    with pytest.raises(ValueError, match="unit"):
        LengthTeacher(unit="tokens")


def test_keyword_teacher():
    t = KeywordTeacher(["good"])
    labels = t.label(["p"] * 3, ["it was good", "bad", "Good good"], ["it was bad", "goods", "good"])
    assert labels.tolist() == [1.0, 0.5, 1.0]  # whole words, case-insensitive, counts occurrences


def test_generic_text_teacher_and_pairs():
    t = TextTeacher(lambda prompts, responses: [len(p) + len(r) for p, r in zip(prompts, responses, strict=True)])
    pairs = TextPreferencePairs(["ab", "c"], ["x", "yyy"], ["yy", "z"], [math.nan, math.nan])
    labelled = t.label_text_pairs(pairs)
    assert isinstance(labelled, TextPreferencePairs) and labelled.labels.tolist() == [0.0, 1.0]
    bad = TextTeacher(lambda prompts, responses: [[1.0]] * len(responses))
    with pytest.raises(RewardFunctionError, match="shape"):
        bad.label(["p"], ["a"], ["b"])
    with pytest.raises(ValueError, match="same length"):
        t.label(["p"], ["a", "b"], ["c"])
    with pytest.raises(TypeError):
        TextTeacher("not callable")
