"""The offline default LM: loadable by the Auto classes, small, English, mixed sentiment; corpus and build script."""

from __future__ import annotations

import json
import re

import pytest
import torch
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from textenv.default_lm import DEFAULT_LM_PATH, default_prompts, load_default_lm
from textenv.default_lm.build import sample_completions
from textenv.default_lm.corpus import SENTIMENTS, generate_corpus, generate_review
from textenv.default_lm.settings import BuildConfig

WORD = re.compile(r"[A-Za-z]+|[.,!?]")


@pytest.fixture(scope="module")
def lm():
    return load_default_lm()


@pytest.fixture(scope="module")
def vader():
    return SentimentIntensityAnalyzer()


def test_auto_classes_load_the_assets_offline():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(DEFAULT_LM_PATH, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_LM_PATH, local_files_only=True)
    assert model.config.vocab_size == len(tokenizer) == model.get_input_embeddings().num_embeddings
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token_id is not None and tokenizer.eos_token_id is not None
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id


def test_load_default_lm_returns_eval_model_on_device_and_dtype(lm):
    model, tokenizer = lm
    assert not model.training
    assert next(model.parameters()).device.type == "cpu"
    assert 0.3e6 < sum(p.numel() for p in model.parameters()) < 2.5e6
    half, _ = load_default_lm(device="cpu", dtype=torch.bfloat16)
    assert next(half.parameters()).dtype == torch.bfloat16


def test_assets_are_small_and_complete():
    names = {p.name for p in DEFAULT_LM_PATH.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= names
    assert {"tokenizer_config.json", "special_tokens_map.json", "build_info.json"} <= names
    assert sum(p.stat().st_size for p in DEFAULT_LM_PATH.iterdir()) <= 8 * 1024 * 1024
    card = json.loads((DEFAULT_LM_PATH / "build_info.json").read_text())
    assert {"corpus_seed", "train_loss", "held_out_loss", "build_seconds", "config"} <= card.keys()


def test_tokenizer_round_trips_corpus_text(lm):
    _, tokenizer = lm
    for text in generate_corpus(200, seed=123):
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text
    assert tokenizer.convert_ids_to_tokens(tokenizer("The movie was great.")["input_ids"])[-2:] == ["\u2581great", "."]


def test_seeded_sample_is_english_words_from_the_vocabulary(lm):
    model, tokenizer = lm
    prompts = ["The movie was", "I bought this phone and", "We went to this restaurant last night and"]
    first = sample_completions(model, tokenizer, prompts, max_new_tokens=30, seed=7)
    assert first == sample_completions(model, tokenizer, prompts, max_new_tokens=30, seed=7)
    known = {w.lower() for text in generate_corpus(2000, seed=0) for w in WORD.findall(text)}
    for text in first:
        words = WORD.findall(text)
        assert len(words) >= 3, text
        assert all(w.lower() in known for w in words), text
        assert re.fullmatch(r"[A-Za-z ,.!?']+", text), text  # readable: no special tokens or stray markers
        assert " ." not in text and " ," not in text, text  # punctuation attaches to the word before it


def test_default_prompts_are_neutral_in_vocabulary_and_split(lm, vader):
    _, tokenizer = lm
    train, test = default_prompts("train"), default_prompts()
    assert train == test and len(train) >= 100
    held_out = default_prompts("test")
    assert len(held_out) >= 20 and not set(train) & set(held_out)
    assert default_prompts("all") == train + held_out
    assert "The movie was" in train and "I bought this phone and" in train
    for prompt in train + held_out:
        assert tokenizer.unk_token_id not in tokenizer(prompt)["input_ids"], prompt
        assert vader.polarity_scores(prompt)["compound"] == 0.0, prompt
    with pytest.raises(ValueError, match="split"):
        default_prompts("validation")


def test_corpus_is_deterministic_per_seed():
    assert generate_corpus(50, seed=3) == generate_corpus(50, seed=3)
    assert generate_corpus(50, seed=3) != generate_corpus(50, seed=4)
    assert all(text.endswith((".", "!")) and "  " not in text for text in generate_corpus(200, seed=5))


def test_corpus_mixes_sentiments(vader):
    scores = torch.tensor([vader.polarity_scores(t)["compound"] for t in generate_corpus(200, seed=0)])
    assert (scores > 0.05).float().mean() >= 0.25
    assert (scores < -0.05).float().mean() >= 0.25
    import random

    rng = random.Random(0)
    for sentiment in SENTIMENTS:
        assert generate_review(rng, domain="movie", sentiment=sentiment).sentiment == sentiment
    with pytest.raises(ValueError, match="sentiment"):
        generate_review(rng, sentiment="angry")


def test_build_config_rejects_bad_values():
    with pytest.raises(ValueError, match="divisible"):
        BuildConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="steps"):
        BuildConfig(steps=0)


def test_build_end_to_end_through_the_cli(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agents.cli import main

    out = tmp_path / "lm"
    args = ["--out", str(out), "--steps", "3", "--num-reviews", "300", "--n-layer", "1", "--n-embd", "16"]
    assert main(["build-default-lm", *args, "--n-head", "2", "--eval-samples", "8", "--threads", "1"]) == 0
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert model.config.n_layer == 1 and model.config.vocab_size == len(tokenizer)
    card = json.loads((out / "build_info.json").read_text())
    assert card["config"]["steps"] == 3 and card["samples"]["n"] == 8
    assert not list(tmp_path.glob(".lm*"))  # the temporary build folder (and any old one) is gone
