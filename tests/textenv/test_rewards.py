"""Text reward functions and the validation of any reward function's output."""

import numpy as np
import pytest
import torch

from textenv.rewards import (
    KeywordReward,
    LengthReward,
    RewardFunctionError,
    SentimentReward,
    TokenCountReward,
    validate_scores,
)
from textenv.testing import make_tiny_tokenizer


def test_sentiment_reward_orders_positive_above_negative():
    scores = SentimentReward()(["p"] * 3, ["i loved it, great fun", "the movie was", "awful and boring, i hated it"])
    assert scores.shape == (3,) and scores.dtype == np.float64
    assert scores[0] > 0.5 and scores[1] == 0.0 and scores[2] < -0.5
    assert np.all(np.abs(scores) <= 1)


def test_length_reward_is_zero_at_the_target():
    r = LengthReward(target=4)
    assert r(["p"] * 3, ["a b c d", "a b", "a b c d e f g h"]).tolist() == [0.0, -0.5, -1.0]
    assert LengthReward(3, unit="chars")(["p"], ["abcdef"]).tolist() == [-1.0]
    with pytest.raises(ValueError):
        LengthReward(0)
    with pytest.raises(ValueError):
        LengthReward(3, unit="tokens")


def test_keyword_reward_counts_whole_words():
    r = KeywordReward(["good", "Great"])
    assert r(["p"] * 3, ["Good, good and GREAT", "goodness", ""]).tolist() == [3.0, 0.0, 0.0]
    assert KeywordReward(["good"], normalize=True)(["p"], ["good bad"]).tolist() == [0.5]
    assert KeywordReward(["Good"], case_sensitive=True)(["p"], ["good Good"]).tolist() == [1.0]
    with pytest.raises(ValueError):
        KeywordReward([])


def test_token_count_reward():
    tok = make_tiny_tokenizer()
    r = TokenCountReward("good", tok)
    assert r(["p"] * 2, ["good good movie", "bad"]).tolist() == [2.0, 0.0]
    assert TokenCountReward(tok.convert_tokens_to_ids("bad"), tok)(["p"], ["bad bad bad"]).tolist() == [3.0]
    with pytest.raises(ValueError, match="vocabulary"):
        TokenCountReward("zebra", tok)


def test_validate_scores_accepts_lists_arrays_and_tensors():
    assert validate_scores([1, 2], 2).tolist() == [1.0, 2.0]
    assert validate_scores(torch.tensor([0.5, 1.5]), 2).dtype == np.float64
    assert validate_scores(np.float32([3.0]), 1).tolist() == [3.0]


@pytest.mark.parametrize(
    ("scores", "match"),
    [
        ([1.0, float("nan")], "non-finite"),
        ([1.0, float("inf")], "non-finite"),
        ([1.0], "shape"),
        ([[1.0], [2.0]], "shape"),
        (3.0, "shape"),
        (["a", "b"], "not numbers"),
        (None, "shape"),
    ],
)
def test_validate_scores_rejects_bad_output(scores, match):
    with pytest.raises(RewardFunctionError, match=match):
        validate_scores(scores, 2)
