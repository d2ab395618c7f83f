"""Fast forwards behind one interface (:class:`Decoder`) and a registry (``DECODERS``): ``gpt2``, and the Llama
family (``llama``: Llama, Qwen2, Qwen3, Mistral); anything else runs through the model. See
``textenv/decoders/base.py`` for why they exist."""

from __future__ import annotations

import weakref
from typing import Any

from torch import nn

from textenv.decoders.base import DECODERS, Decoder, fingerprint, register_decoder
from textenv.decoders.gpt2 import GPT2Decoder
from textenv.decoders.llama import LlamaDecoder

__all__ = ["DECODERS", "Decoder", "GPT2Decoder", "LlamaDecoder", "fast_decoder", "fingerprint", "register_decoder"]


_DECODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (fingerprint, decoder or None)


def fast_decoder(model: Any) -> Decoder | None:
    """The hand-written forward for ``model``, or None when its architecture has none (then call the model).

    Checked on every call (one pass over the modules): a hook registered since, an adapter that replaced a module or
    a parameter swapped for another object gives a fresh answer; otherwise the decoder built last time is reused."""
    if not isinstance(model, nn.Module):
        return None
    key = fingerprint(model)
    if key is None:
        return None
    cached = _DECODERS.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    decoder = next((cls(model) for cls in DECODERS if cls.supports(model)), None)
    _DECODERS[model] = (key, decoder)  # the decoder holds parameters, not the model: the entry can go
    return decoder
