import pytest
import torch

from agents.llm.offline import OfflineConfig, encode_pairs, minibatches
from textenv.testing import make_tiny_lm


def test_minibatches_cut_in_order_and_fold_a_small_remainder_into_the_previous_one():
    order = torch.tensor([4, 2, 0, 1, 3])
    assert [b.tolist() for b in minibatches(order, 2)] == [[4, 2], [0, 1], [3]]
    assert [b.tolist() for b in minibatches(order, 2, min_size=2)] == [[4, 2], [0, 1, 3]]
    assert [b.tolist() for b in minibatches(order, 8, min_size=2)] == [[4, 2, 0, 1, 3]]  # nothing to join
    assert [b.tolist() for b in minibatches(order[:4], 2, min_size=2)] == [[4, 2], [0, 1]]


def test_encode_pairs_pads_prompts_left_and_responses_right_and_ends_with_eos():
    _, tokenizer = make_tiny_lm()
    q_ids, q_mask, r_ids, r_mask = encode_pairs(tokenizer, ["the movie was", "it"], ["good", "very bad"], True, "cpu")
    eos = tokenizer.eos_token_id
    assert q_mask.tolist() == [[True, True, True], [False, False, True]]
    assert r_mask.tolist() == [[True, True, False], [True, True, True]]
    assert r_ids[0, 1] == eos and r_ids[1, 2] == eos
    assert q_ids[1, 2] == tokenizer("it", add_special_tokens=False)["input_ids"][0]


def test_offline_settings_are_keyword_only():
    with pytest.raises(TypeError):
        OfflineConfig(1e-3)  # type: ignore[misc]
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        OfflineConfig(batch_size=0)
