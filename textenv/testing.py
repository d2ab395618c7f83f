"""Tiny, randomly initialised language models for tests and quick experiments (no files, no network).

``make_tiny_lm()`` returns a real Hugging Face ``GPT2LMHeadModel`` and a real ``PreTrainedTokenizerFast`` with a
word-level vocabulary, so everything that works on them works on any causal LM from the hub.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

DEFAULT_WORDS = (
    "the a movie film book phone was is it and but very really quite good great bad awful fine "
    "boring fun loved hated story plot acting music price battery screen i we this that not so"
).split()


def make_tiny_tokenizer(words: list[str] | tuple[str, ...] = DEFAULT_WORDS):
    """A word-level fast tokenizer: ids 0..2 are <pad>, <eos>, <unk>; then ``words`` in order."""
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>", padding_side="left"
    )


def make_tiny_lm(
    words: list[str] | tuple[str, ...] = DEFAULT_WORDS,
    n_layer: int = 2,
    n_head: int = 2,
    n_embd: int = 32,
    n_positions: int = 128,
    seed: int = 0,
    device: str | torch.device = "cpu",
):
    """A randomly initialised GPT-2 of a few thousand parameters and its word-level tokenizer."""
    tokenizer = make_tiny_tokenizer(words)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(device).eval(), tokenizer
