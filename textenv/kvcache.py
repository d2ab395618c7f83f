"""KV-cache surgery for the batched engine: trim a cache to its live columns, splice a new prompt into some rows.

The engine keeps each model's cache aligned with the right end of its left-padded token buffer (see engine.py).
This module holds the only code that touches transformers' cache internals, checked against transformers 5.x
``cache_utils``: a ``DynamicCache`` has ``cache.layers[i].keys/.values`` of shape ``(B, H, S, D)``, and
``DynamicLayer.update`` appends with ``torch.cat`` and reports ``get_seq_length() == keys.shape[-2]``, so replacing
those two tensors (a narrower view, or a copy with rows rewritten) is all it takes.

Appending stays transformers' own ``torch.cat`` (what ``generate`` does): a preallocated buffer with a sliding view
was tried and was slower on CPU, where the SDPA kernel loses more time on a strided K/V window than the cat's copy
costs.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicLayer


def supports_splicing(cache: Any) -> bool:
    """True if ``cache`` is a transformers cache whose layers this module can manipulate (plain full-attention
    ``DynamicLayer``s). Sliding-window, quantized, linear-attention and pre-4.56 caches are not: the engine then
    falls back to recomputing the full forward each step."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(x) is DynamicLayer and x.keys is not None for x in layers)


def cache_width(cache: Any) -> int:
    return int(cache.layers[0].keys.shape[-2])


def trim_cache(cache: Any, width: int) -> None:
    """Keep only the last ``width`` columns of every layer (no copy)."""
    for layer in cache.layers:
        start = layer.keys.shape[-2] - width
        if start > 0:
            layer.keys, layer.values = layer.keys[..., start:, :], layer.values[..., start:, :]


def splice_rows(cache: Any, rows: torch.Tensor, new: Any) -> None:
    """Write ``new``'s K/V (``k`` rows, ``p`` columns) into the last ``p`` columns of ``rows`` of ``cache``.

    ``cache`` is first widened on the left if it has fewer than ``p`` columns. The row's columns left of the splice
    keep stale (finite) values; the caller's attention mask (left padding) hides them.
    """
    for layer, src in zip(cache.layers, new.layers, strict=True):
        p = src.keys.shape[-2]
        for name in ("keys", "values"):
            dst, val = getattr(layer, name), getattr(src, name)
            if dst.shape[-2] < p:
                dst = torch.cat([dst.new_zeros(*dst.shape[:2], p - dst.shape[-2], dst.shape[-1]), dst], dim=-2)
            elif dst._base is not None:
                dst = dst.clone()  # a trimmed view: give it its own storage before writing into it
            dst[rows, :, dst.shape[-2] - p :, :] = val.to(dst.dtype)
            setattr(layer, name, dst)
