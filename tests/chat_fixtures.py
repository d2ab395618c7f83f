"""Tiny models with a chat template, and tiny Qwen2/Llama models, for the data-format and portability tests."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from textenv.testing import DEFAULT_WORDS, make_tiny_lm, make_tiny_tokenizer

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} <eos> {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)
"""A small Jinja chat template, ``user : hi <eos> assistant : hello <eos>``: every piece is a vocabulary word."""


CHAT_WORDS = [*DEFAULT_WORDS, "user", "assistant", "system", ":"]


def make_chat_tokenizer():
    """The word-level tiny tokenizer with the roles and ':' in its vocabulary and :data:`CHAT_TEMPLATE` set."""
    tok = make_tiny_tokenizer(CHAT_WORDS)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_chat_lm(seed: int = 0):
    """A tiny GPT-2 and :func:`make_chat_tokenizer`'s tokenizer."""
    model, _ = make_tiny_lm(words=CHAT_WORDS, seed=seed)
    return model, make_chat_tokenizer()


def make_decoder(family: str, tokenizer, seed: int = 0, **overrides):
    """A randomly initialised tiny ``Qwen2ForCausalLM`` or ``LlamaForCausalLM`` on ``tokenizer``'s vocabulary."""
    config_class, model_class = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}[
        family
    ]
    settings = dict(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    settings.update(overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_class(config_class(**settings)).eval()
