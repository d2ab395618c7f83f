"""rewardmodels.lm_reward: the LM reward model, its training, persistence and the tokenizer-mismatch check."""

import copy
import math

import numpy as np
import pytest
import torch

from rewardmodels.lm_reward import (
    LMRewardModel,
    NonFiniteLossError,
    TokenizerMismatchError,
    pairwise_accuracy,
    pairwise_bt_loss,
    tokenizers_match,
    train_reward_model,
)
from rewardmodels.text_preferences import TextPreferencePairs
from textenv.rewards import validate_scores
from textenv.testing import DEFAULT_WORDS, make_tiny_lm, make_tiny_tokenizer

WORDS = [w for w in DEFAULT_WORDS if w != "good"]


def _rm(seed: int = 0, **kwargs) -> LMRewardModel:
    model, tok = make_tiny_lm(seed=seed)
    torch.manual_seed(seed)  # the head's init
    return LMRewardModel(model, tok, **kwargs)


def _good_rule_pairs(n: int, seed: int) -> TextPreferencePairs:
    """Pairs where the response containing 'good' is preferred; sides are random."""
    rng = np.random.default_rng(seed)
    prompts, resp_a, resp_b, labels = [], [], [], []
    for _ in range(n):
        good = list(rng.choice(WORDS, rng.integers(3, 7)))
        good.insert(int(rng.integers(0, len(good) + 1)), "good")
        other = " ".join(rng.choice(WORDS, rng.integers(3, 7)))
        swap = bool(rng.random() < 0.5)
        prompts.append(" ".join(rng.choice(WORDS, 2)))
        resp_a.append(other if swap else " ".join(good))
        resp_b.append(" ".join(good) if swap else other)
        labels.append(0.0 if swap else 1.0)
    return TextPreferencePairs(prompts, resp_a, resp_b, labels)


def test_reward_fn_protocol_and_backbone_reduction():
    rm = _rm()
    assert type(rm.backbone).__name__ == "GPT2Model"  # the LM head is dropped
    rm.train()
    scores = rm(["the movie", "it", "a"], ["was good", "was bad very bad", "fun"])
    assert scores.shape == (3,) and scores.dtype == torch.float32 and not scores.requires_grad
    assert rm.training  # __call__ scores in eval mode but restores the mode
    assert validate_scores(scores, 3, rm).shape == (3,)  # what TextGen-v0 does with a reward_fn's output
    assert rm([], []).shape == (0,)


def test_plugs_into_textgen_as_reward_fn():
    from textenv import TextGenEnv

    model, tok = make_tiny_lm()
    rm = LMRewardModel(copy.deepcopy(model), tok, policy_tokenizer=tok)
    env = TextGenEnv(model=model, tokenizer=tok, prompts=["the movie was", "i loved it"], reward_fn=rm,
                     max_new_tokens=4)
    env.reset(seed=0)
    env.action_space.seed(0)
    done = False
    while not done:
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        done = terminated or truncated
    assert info["score"] == pytest.approx(rm([info["prompt"]], [info["response"]]).item(), rel=1e-5)


def test_left_and_right_padding_give_the_same_score():
    rm = _rm().eval()
    rows = rm.encode(["the movie", "a"], ["was good", "fun and great story"])
    ids, mask = rm.collate(rows)  # right-padded
    left_ids, left_mask = torch.zeros_like(ids), torch.zeros_like(mask)
    width = ids.shape[1]
    for b, r in enumerate(rows):
        left_ids[b, width - len(r) :] = torch.tensor(r)
        left_mask[b, width - len(r) :] = 1
    with torch.no_grad():
        right, left = rm.score_ids(ids, mask), rm.score_ids(left_ids, left_mask)
        alone = rm.score_ids(*rm.collate(rows[:1]))  # no padding at all
    torch.testing.assert_close(right, left)
    torch.testing.assert_close(right[:1], alone)
    # the score is read at the last real token: changing a padded position changes nothing
    ids2 = ids.clone()
    ids2[0, -1] = 5
    with torch.no_grad():
        torch.testing.assert_close(rm.score_ids(ids2, mask), right)


def test_encoder_backbone():
    from transformers import BertConfig, BertModel

    tok = make_tiny_tokenizer()
    config = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, pad_token_id=0)
    rm = LMRewardModel(BertModel(config), tok)
    assert rm(["a"], ["good movie"]).shape == (1,)


def test_pairwise_bt_loss_hand_values():
    r_a = torch.tensor([1.0, 1.0, 1.0, 1.0])
    r_b = torch.zeros(4)
    labels = torch.tensor([1.0, 0.0, 0.5, math.nan])
    margin = torch.full((4,), 0.5)
    # a preferred: -log sigmoid(1 - 0 - 0.5) = softplus(-0.5)
    # b preferred: -log sigmoid(0 - 1 - 0.5) = softplus(1.5)
    # tie (no margin): 0.5 softplus(-1) + 0.5 softplus(1); NaN label ignored
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    expected = (sp(-0.5) + sp(1.5) + 0.5 * sp(-1) + 0.5 * sp(1)) / 3
    loss, metrics = pairwise_bt_loss(r_a, r_b, labels, margin)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["accuracy"].item() == pytest.approx(0.5)  # 1 of the 2 strict pairs, judged without the margin
    no_margin, _ = pairwise_bt_loss(r_a, r_b, labels)
    assert no_margin.item() == pytest.approx((sp(-1) + sp(1) + 0.5 * sp(-1) + 0.5 * sp(1)) / 3, rel=1e-6)


def test_training_ranks_held_out_preferred_responses_above_rejected():
    rm = _rm()
    train, held_out = _good_rule_pairs(256, seed=0), _good_rule_pairs(200, seed=1)
    before = pairwise_accuracy(rm, held_out)
    weights_before = copy.deepcopy(rm.state_dict())
    logged = []
    result = train_reward_model(rm, train, epochs=1, lr=3e-3, batch_size=32, eval_pairs=held_out,
                                log_fn=lambda step, m: logged.append((step, m)))
    after = pairwise_accuracy(rm, held_out)
    assert after == result["eval_accuracy"]
    assert after >= 0.85 and after > before + 0.1, (before, after)
    assert result["steps"] == 8 and len(logged) == 8 and "rm/loss" in logged[-1][1]
    assert any(not torch.equal(v, rm.state_dict()[k]) for k, v in weights_before.items())


def test_ties_skips_margin_and_centering():
    rm = _rm()
    with torch.no_grad():
        rm.head.bias.fill_(3.0)  # rewards start far from 0
    pairs = TextPreferencePairs(["a", "b", "c", "d"], ["good movie", "bad", "fine", "boring"],
                                ["bad movie", "great", "the fine", "fun"], [1.0, 0.0, 0.5, math.nan])
    result = train_reward_model(rm, pairs, epochs=30, lr=3e-3, batch_size=4, margin=0.5, center_coef=1.0)
    assert result["pairs_used"] == 3  # the skipped pair is dropped
    mean_reward = rm(pairs.prompts, pairs.responses_a).mean().item()
    assert abs(mean_reward) < 1.0  # centering pulled the rewards towards 0
    with pytest.raises(ValueError, match="one value per pair"):
        train_reward_model(rm, pairs, margin=[0.1, 0.2])
    with pytest.raises(ValueError, match="no labelled pair"):
        train_reward_model(rm, pairs[3:])
    with pytest.raises(ValueError, match="lr"):
        train_reward_model(rm, pairs, lr=0.0)


def test_nan_loss_stops_without_applying_the_step():
    rm = _rm()
    with torch.no_grad():
        rm.head.bias.fill_(math.inf)  # inf - inf = NaN rewards gap
    state = copy.deepcopy(rm.state_dict())
    pairs = _good_rule_pairs(8, seed=2)
    with pytest.raises(NonFiniteLossError, match="not applied"):
        train_reward_model(rm, pairs, lr=1e-2)
    for k, v in state.items():
        assert torch.equal(v, rm.state_dict()[k]), k


def test_save_and_load_roundtrip(tmp_path):
    rm = _rm()
    train_reward_model(rm, _good_rule_pairs(32, seed=3), lr=3e-3, batch_size=16)
    prompts, responses = ["the movie", "it"], ["was good", "was awful"]
    expected = rm(prompts, responses)
    path = tmp_path / "rm"
    rm.save_pretrained(path)
    rm.save_pretrained(path)  # overwriting an existing checkpoint works
    loaded = LMRewardModel.from_pretrained(path)
    torch.testing.assert_close(loaded(prompts, responses), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rm"]  # no temporary directories left
    # any plain LM checkpoint starts a reward model with a fresh head
    lm, tok = make_tiny_lm()
    lm.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    fresh = LMRewardModel.from_pretrained(tmp_path / "lm")
    assert fresh(prompts, responses).shape == (2,)


def test_tokenizer_mismatch_needs_explicit_retokenize():
    model, tok = make_tiny_lm()
    assert tokenizers_match(tok, make_tiny_tokenizer())  # equal, not identical objects
    LMRewardModel(copy.deepcopy(model), tok, policy_tokenizer=make_tiny_tokenizer())
    other = make_tiny_tokenizer(["good", "bad", "the", "movie", "was"])
    assert not tokenizers_match(tok, other)
    with pytest.raises(TokenizerMismatchError, match="retokenize=True"):
        LMRewardModel(copy.deepcopy(model), tok, policy_tokenizer=other)
    rm = LMRewardModel(copy.deepcopy(model), tok, policy_tokenizer=other, retokenize=True).eval()
    # policy ids (in the policy's vocabulary, left-padded) are decoded and re-encoded with the reward model's tokenizer
    enc = other(["the movie was good"], add_special_tokens=False)["input_ids"][0]
    ids = torch.tensor([[other.pad_token_id] + enc])
    mask = torch.tensor([[0] + [1] * len(enc)])
    with torch.no_grad():
        via_policy = rm.score_policy_ids(ids, mask)
        direct = rm.score_ids(*rm.collate(tok(["the movie was good"])["input_ids"]))
    torch.testing.assert_close(via_policy, direct)
    with pytest.raises(TokenizerMismatchError, match="own"):
        train_reward_model(rm, _good_rule_pairs(4, seed=0), tokenizer=other)
