"""rewardmodels.text.lm_reward: the LM reward model, its training (from any preference source), portable persistence
and the tokenizer-mismatch check."""

import copy
import json
import math

import numpy as np
import pytest
import torch

from rewardmodels.text.lm_reward import (
    HEAD_FILE,
    LMRewardModel,
    NonFiniteLossError,
    RewardCheckpointError,
    TokenizerMismatchError,
    pairwise_accuracy,
    pairwise_bt_loss,
    tokenizers_match,
    train_reward_model,
)
from rewardmodels.text.preferences import PreferencePromptTooLongError, TextPreferencePairs
from tests.chat_fixtures import make_chat_lm, make_decoder
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
    env = TextGenEnv(model=model, tokenizer=tok, prompts=["the movie was", "i loved it"], reward_fn=rm, info_text=True,
                     max_new_tokens=4)
    _assert_episode_scored_by(env, rm)


def _assert_episode_scored_by(env, rm: LMRewardModel) -> None:
    """Run one random episode of ``env`` and check that its final score is ``rm``'s score of the text."""
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


# ---------------------------------------------------------------------- portable checkpoints

PROMPTS, RESPONSES = ["the movie", "it", "a"], ["was good", "was awful very bad", "fun <eos>"]


def _family_rm(family: str) -> LMRewardModel:
    tok = make_tiny_tokenizer()
    lm = make_tiny_lm()[0] if family == "gpt2" else make_decoder(family, tok)
    torch.manual_seed(0)
    return LMRewardModel(lm, tok)


def _hf_scores(seq_model, tok, prompts, responses) -> torch.Tensor:
    """Scores as a transformers user computes them: prompt + response, padded on the right."""
    batch = tok([p + " " + r for p, r in zip(prompts, responses, strict=True)], padding=True, padding_side="right",
                return_tensors="pt")
    with torch.no_grad():
        return seq_model(**batch).logits.squeeze(-1)


@pytest.mark.parametrize(("family", "arch"), [("gpt2", "GPT2ForSequenceClassification"),
                                              ("qwen2", "Qwen2ForSequenceClassification"),
                                              ("llama", "LlamaForSequenceClassification")])
def test_checkpoint_loads_in_transformers_with_identical_scores(tmp_path, family, arch):
    from transformers import AutoModelForSequenceClassification

    rm = _family_rm(family)
    train_reward_model(rm, _good_rule_pairs(16, seed=3), lr=3e-3, batch_size=8)  # a trained model, not the init
    assert rm.head.bias.item() == 0.0  # frozen: a HF score layer has no bias
    rm.save_pretrained(tmp_path / "rm")
    config = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert config["architectures"] == [arch] and config["pad_token_id"] == rm.tokenizer.pad_token_id
    assert not (tmp_path / "rm" / HEAD_FILE).exists()
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    assert hf.config.num_labels == 1 and hf.score.bias is None
    torch.testing.assert_close(hf.score.weight, rm.head.weight)
    expected = rm(PROMPTS, RESPONSES)
    assert expected.std() > 0
    torch.testing.assert_close(_hf_scores(hf, rm.tokenizer, PROMPTS, RESPONSES), expected, atol=1e-5, rtol=0)
    back = LMRewardModel.from_pretrained(tmp_path / "rm")
    torch.testing.assert_close(back(PROMPTS, RESPONSES), expected, atol=1e-5, rtol=0)


def test_lora_reward_model_trains_adapters_and_saves_a_merged_portable_checkpoint(tmp_path):
    pytest.importorskip("peft")
    from transformers import AutoModelForSequenceClassification

    from textenv.lora import LoraSettings, is_peft_model

    model, tok = make_tiny_lm()
    rm = LMRewardModel(model, tok, lora=LoraSettings(r=4, alpha=8))
    assert is_peft_model(rm.backbone)
    trainable = {n for n, p in rm.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n == "head.weight" for n in trainable)
    frozen = {n: p.detach().clone() for n, p in rm.named_parameters() if not p.requires_grad}
    adapters = {n: p.detach().clone() for n, p in rm.named_parameters() if "lora_B" in n}
    held_out = _good_rule_pairs(100, seed=1)
    before = pairwise_accuracy(rm, held_out)
    train_reward_model(rm, _good_rule_pairs(128, seed=0), epochs=2, lr=1e-2, batch_size=32)
    assert pairwise_accuracy(rm, held_out) > before + 0.1
    assert all(torch.equal(p, rm.state_dict()[n]) for n, p in frozen.items() if n in rm.state_dict())
    assert any(not torch.equal(p, dict(rm.named_parameters())[n]) for n, p in adapters.items())
    rm.save_pretrained(tmp_path / "rm")
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    expected = rm(PROMPTS, RESPONSES)
    torch.testing.assert_close(_hf_scores(hf, rm.tokenizer, PROMPTS, RESPONSES), expected, atol=1e-5, rtol=0)
    assert is_peft_model(rm.backbone)  # saving merged a copy; the model keeps its adapters


def test_score_position_matches_transformers_on_a_pad_valued_last_token(tmp_path):
    from transformers import AutoModelForSequenceClassification

    rm = _family_rm("gpt2").eval()
    rm.save_pretrained(tmp_path / "rm")
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    pad = rm.tokenizer.pad_token_id
    ids = torch.tensor([[5, 6, 7, pad], [5, 6, 7, 8]])  # row 0 ends in a real (unmasked) token whose id is the pad id
    with torch.no_grad():
        ours = rm.score_ids(ids, torch.ones_like(ids))
        torch.testing.assert_close(ours, hf(input_ids=ids).logits.squeeze(-1), atol=1e-5, rtol=0)
        torch.testing.assert_close(ours[:1], rm.score_ids(ids[:1, :3]))  # both read the token before it


def test_saving_draws_no_random_numbers_and_warns_about_a_changed_bias(tmp_path, caplog):
    rm = _family_rm("gpt2")
    state = torch.random.get_rng_state()
    rm.save_pretrained(tmp_path / "rm")
    assert torch.equal(state, torch.random.get_rng_state())  # a mid-run checkpoint does not change the run
    with torch.no_grad():
        rm.head.bias.fill_(0.5)
    rm.save_pretrained(tmp_path / "rm")
    assert "shifted by -bias" in caplog.text
    torch.testing.assert_close(LMRewardModel.from_pretrained(tmp_path / "rm")(PROMPTS, RESPONSES),
                               rm(PROMPTS, RESPONSES) - 0.5)


def test_loads_a_trl_reward_trainer_checkpoint_as_a_textgen_reward_fn(tmp_path):
    from transformers import Qwen2ForSequenceClassification

    from textenv import TextGenEnv

    policy, tok = make_tiny_lm(seed=1)
    config = make_decoder("qwen2", tok).config
    config.num_labels = 1
    torch.manual_seed(3)
    trained = Qwen2ForSequenceClassification(config).eval()  # what TRL's RewardTrainer saves: model + tokenizer
    trained.save_pretrained(tmp_path / "trl")
    tok.save_pretrained(tmp_path / "trl")
    rm = LMRewardModel.from_pretrained(tmp_path / "trl", policy_tokenizer=tok)
    torch.testing.assert_close(rm(PROMPTS, RESPONSES), _hf_scores(trained, tok, PROMPTS, RESPONSES), atol=1e-5, rtol=0)
    _assert_episode_scored_by(
        TextGenEnv(model=policy, tokenizer=tok, prompts=["the movie was"], reward_fn=rm, max_new_tokens=4,
                   info_text=True), rm
    )


def test_checkpoints_that_are_not_reward_models_are_refused(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification, GPT2ForSequenceClassification

    lm, tok = make_tiny_lm()
    two = GPT2ForSequenceClassification(lm.config.__class__(**{**lm.config.to_dict(), "num_labels": 2}))
    two.save_pretrained(tmp_path / "two")
    tok.save_pretrained(tmp_path / "two")
    with pytest.raises(RewardCheckpointError, match="num_labels=2"):
        LMRewardModel.from_pretrained(tmp_path / "two")
    bert = BertForSequenceClassification(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=32, num_labels=1))
    bert.save_pretrained(tmp_path / "bert")
    tok.save_pretrained(tmp_path / "bert")
    with pytest.raises(RewardCheckpointError, match="no last-token 'score' head"):
        LMRewardModel.from_pretrained(tmp_path / "bert")


def test_encoder_and_format_1_checkpoints_load_back(tmp_path):
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel

    tok = make_tiny_tokenizer()
    config = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, pad_token_id=0)
    encoder = LMRewardModel(BertModel(config), tok).eval()
    encoder.save_pretrained(tmp_path / "bert")  # no last-token HF classifier for BERT: backbone + head file
    assert (tmp_path / "bert" / HEAD_FILE).exists()
    torch.testing.assert_close(LMRewardModel.from_pretrained(tmp_path / "bert")(PROMPTS, RESPONSES),
                               encoder(PROMPTS, RESPONSES))
    old = _family_rm("gpt2").eval()  # a checkpoint as rlhf-gym 0.1 wrote it
    with torch.no_grad():
        old.head.weight.normal_()
    old.backbone.save_pretrained(tmp_path / "old")
    tok.save_pretrained(tmp_path / "old")
    save_file({k: v.contiguous() for k, v in old.head.state_dict().items()}, str(tmp_path / "old" / HEAD_FILE))
    loaded = LMRewardModel.from_pretrained(tmp_path / "old")
    torch.testing.assert_close(loaded(PROMPTS, RESPONSES), old(PROMPTS, RESPONSES))
    assert not loaded.head.bias.requires_grad


# ---------------------------------------------------------------------- any preference source


def test_training_reads_datasets_and_files_like_pairs(tmp_path):
    datasets = pytest.importorskip("datasets")
    pairs = _good_rule_pairs(16, seed=4).strict()
    records = [{"prompt": p, "chosen": c, "rejected": r}
               for p, c, r in zip(pairs.prompts, pairs.chosen, pairs.rejected, strict=True)]
    trained = {}
    for name, source in [("pairs", TextPreferencePairs.from_chosen_rejected(pairs.prompts, pairs.chosen,
                                                                             pairs.rejected)),
                         ("dataset", datasets.Dataset.from_list(records)),
                         ("file", tmp_path / "prefs.jsonl")]:
        if name == "file":
            source.write_text("".join(json.dumps(r) + "\n" for r in records))
        rm = _rm()
        result = train_reward_model(rm, source, lr=3e-3, batch_size=8, eval_pairs=source)
        assert result["pairs_used"] == 16
        trained[name] = rm.state_dict()
    for name in ("dataset", "file"):  # the same data in another container trains the same weights
        for key, value in trained["pairs"].items():
            assert torch.equal(value, trained[name][key]), (name, key)


def test_training_reads_conversational_records_and_refuses_prompts_too_long(tmp_path):
    model, tok = make_chat_lm()
    torch.manual_seed(0)
    rm = LMRewardModel(model, tok, max_length=16)
    user = [{"role": "user", "content": "the movie was"}]
    path = tmp_path / "conv.jsonl"
    rows = [{"prompt": user, "chosen": [{"role": "assistant", "content": "good " + w}],
             "rejected": [{"role": "assistant", "content": "bad " + w}]} for w in ("fun", "music", "plot", "story")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = pairwise_accuracy(rm, path)
    result = train_reward_model(rm, path, epochs=20, lr=3e-3, batch_size=4)
    assert result["pairs_used"] == 4 and pairwise_accuracy(rm, path) == 1.0 > before
    long_user = [{"role": "user", "content": "the movie was really very good and the music was great"}]
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps({**rows[1], "prompt": long_user}) + "\n")
    weights = copy.deepcopy(rm.state_dict())
    with pytest.raises(PreferencePromptTooLongError, match=r"conv.jsonl:2: the prompt has 1[6-9] tokens .* at most 16"):
        train_reward_model(rm, path)
    assert all(torch.equal(v, rm.state_dict()[k]) for k, v in weights.items())  # refused before any step
