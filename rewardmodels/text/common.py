"""What the LM reward model (``rewardmodels.text.lm_reward``), its trainer (``rewardmodels.text.training``) and the
LLM agents share: the tokenizer check and its error, and the error every trainer raises on a non-finite loss. Import
them from ``rewardmodels.text.lm_reward`` as before."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["NonFiniteLossError", "TokenizerMismatchError", "tokenizers_match"]


class TokenizerMismatchError(ValueError):
    """The reward model's tokenizer differs from the policy's and no explicit mapping was requested."""


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss; the step was not applied."""


def tokenizers_match(a: Any, b: Any) -> bool:
    """True if two tokenizers map text to the same ids: same vocabulary, same special-token ids and, for fast
    tokenizers, the same model (BPE merges, ...), normaliser and pre-tokeniser. Padding settings are ignored."""
    if a is b:
        return True
    if a.get_vocab() != b.get_vocab():
        return False
    for name in ("eos_token_id", "bos_token_id", "unk_token_id"):
        if getattr(a, name, None) != getattr(b, name, None):
            return False
    backend_a, backend_b = getattr(a, "backend_tokenizer", None), getattr(b, "backend_tokenizer", None)
    if backend_a is not None and backend_b is not None:
        ja, jb = json.loads(backend_a.to_str()), json.loads(backend_b.to_str())
        return all(ja.get(k) == jb.get(k) for k in ("model", "normalizer", "pre_tokenizer"))
    return True
