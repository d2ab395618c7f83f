"""KV-cache surgery for the batched engine: trim to the live columns, splice a new prompt into one row, append fast.

The engine keeps each model's cache aligned with the right end of its left-padded token buffer (see engine.py).
This module holds the only code that touches transformers' cache internals (checked against transformers 5.x
``cache_utils.DynamicCache``: ``cache.layers[i].keys/.values`` of shape ``(B, H, S, D)``; ``DynamicLayer.update``
appends with ``torch.cat``, so its ``get_seq_length`` is ``keys.shape[-2]``).

``BufferedLayer`` replaces ``DynamicLayer`` after the first prefill: K/V live in a zero-initialised buffer with spare
columns, and a step writes one column in place instead of re-concatenating the whole cache (``torch.cat`` is an
O(S) copy per layer per token). The live window is a view ``buffer[:, :, start:end]``; trimming moves ``start``,
and the window is compacted to the front of a fresh buffer when ``end`` reaches the capacity (amortised O(1)).
Buffers are zero-initialised so masked columns always hold finite values (NaN garbage would leak through SDPA).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicLayer


class BufferedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose K/V are views of a preallocated buffer (see the module docstring)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int):
        super().__init__()
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self.capacity = max(int(capacity), keys.shape[-2])
        self._kbuf = keys.new_zeros(*keys.shape[:2], self.capacity, keys.shape[-1])
        self._vbuf = values.new_zeros(*values.shape[:2], self.capacity, values.shape[-1])
        s = keys.shape[-2]
        self._kbuf[:, :, :s], self._vbuf[:, :, :s] = keys, values
        self._start, self._end = 0, s
        self._views()

    def _views(self) -> None:
        self.keys = self._kbuf[:, :, self._start : self._end]
        self.values = self._vbuf[:, :, self._start : self._end]

    def _move(self, offset: int, capacity: int) -> None:
        """Copy the live window to ``[offset, offset + width)`` of fresh zeroed buffers of ``capacity`` columns."""
        w = self._end - self._start
        kbuf = self._kbuf.new_zeros(*self._kbuf.shape[:2], capacity, self._kbuf.shape[-1])
        vbuf = self._vbuf.new_zeros(*self._vbuf.shape[:2], capacity, self._vbuf.shape[-1])
        kbuf[:, :, offset : offset + w], vbuf[:, :, offset : offset + w] = self.keys, self.values
        self._kbuf, self._vbuf, self.capacity = kbuf, vbuf, capacity
        self._start, self._end = offset, offset + w

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        s = key_states.shape[-2]
        if self._end + s > self.capacity:
            w = self._end - self._start  # grow only if compaction would leave less than half the buffer free
            self._move(0, self.capacity if 2 * (w + s) <= self.capacity else 2 * (w + s))
        self._kbuf[:, :, self._end : self._end + s] = key_states
        self._vbuf[:, :, self._end : self._end + s] = value_states
        self._end += s
        self._views()
        return self.keys, self.values

    def trim(self, width: int) -> None:
        """Keep only the last ``width`` columns live."""
        self._start = max(self._start, self._end - width)
        self._views()

    def splice(self, rows: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Write ``keys``/``values`` (``k`` rows, ``p`` columns) into the last ``p`` live columns of ``rows``,
        first widening the live window to ``p`` columns if it is narrower."""
        p = keys.shape[-2]
        grow = p - (self._end - self._start)
        if grow > 0:
            if self._start < grow:
                self._move(grow, max(self.capacity, 2 * p))
            self._start -= grow
        self._kbuf[rows, :, self._end - p : self._end] = keys.to(self.dtype)
        self._vbuf[rows, :, self._end - p : self._end] = values.to(self.dtype)
        self._views()


def supports_splicing(cache: Any) -> bool:
    """True if ``cache`` is a transformers cache whose layers this module can manipulate (plain full-attention
    ``DynamicLayer``s). Sliding-window, quantized, linear-attention and pre-4.56 caches are not: the engine then
    falls back to recomputing the full forward each step."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(x) in (DynamicLayer, BufferedLayer) and x.keys is not None for x in layers)


def to_buffered(cache: Any, capacity: int) -> Any:
    """Replace ``cache``'s ``DynamicLayer``s by ``BufferedLayer``s of ``capacity`` columns (in place; returned)."""
    cache.layers = [
        x if isinstance(x, BufferedLayer) else BufferedLayer(x.keys, x.values, capacity) for x in cache.layers
    ]
    return cache


def cache_width(cache: Any) -> int:
    return int(cache.layers[0].keys.shape[-2])


def trim_cache(cache: Any, width: int) -> None:
    """Keep only the last ``width`` columns of every layer (no copy)."""
    for layer in cache.layers:
        if isinstance(layer, BufferedLayer):
            layer.trim(width)
        else:
            start = layer.keys.shape[-2] - width
            if start > 0:
                layer.keys, layer.values = layer.keys[..., start:, :], layer.values[..., start:, :]


def splice_rows(cache: Any, rows: torch.Tensor, new: Any) -> None:
    """Write ``new``'s K/V (``k`` rows, ``p`` columns) into the last ``p`` columns of ``rows`` of ``cache``.

    ``cache`` is first widened on the left if it has fewer than ``p`` columns. The row's columns left of the splice
    keep stale (finite) values; the caller's attention mask (left padding) hides them.
    """
    for layer, src in zip(cache.layers, new.layers, strict=True):
        if isinstance(layer, BufferedLayer):
            layer.splice(rows, src.keys, src.values)
            continue
        p = src.keys.shape[-2]
        for name in ("keys", "values"):
            dst, val = getattr(layer, name), getattr(src, name)
            if dst.shape[-2] < p:
                dst = torch.cat([dst.new_zeros(*dst.shape[:2], p - dst.shape[-2], dst.shape[-1]), dst], dim=-2)
            else:
                dst = dst.clone()  # may be a trimmed view: give it its own storage before writing
            dst[rows, :, dst.shape[-2] - p :, :] = val.to(dst.dtype)
            setattr(layer, name, dst)
