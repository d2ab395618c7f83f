"""KV-cache surgery: trimming, splicing a row, and the buffered layer against transformers' DynamicLayer."""

import pytest
import torch
from transformers import DynamicCache

from textenv.kvcache import BufferedLayer, splice_rows, supports_splicing, to_buffered, trim_cache


def layer_cache(tensors):
    cache = DynamicCache()
    for i, (k, v) in enumerate(tensors):
        cache.update(k, v, i)
    return cache


@pytest.mark.parametrize("buffered", [False, True])
def test_trim_cache_keeps_the_last_columns(buffered):
    k = torch.arange(2 * 1 * 5 * 2, dtype=torch.float32).reshape(2, 1, 5, 2)
    cache = layer_cache([(k, -k)])
    if buffered:
        to_buffered(cache, 8)
    trim_cache(cache, 3)
    assert torch.equal(cache.layers[0].keys, k[:, :, 2:])
    assert torch.equal(cache.layers[0].values, -k[:, :, 2:])
    assert cache.get_seq_length() == 3
    trim_cache(cache, 10)  # wider than the cache: unchanged
    assert cache.get_seq_length() == 3


@pytest.mark.parametrize("buffered", [False, True])
def test_splice_rows_writes_the_right_end_and_widens_when_needed(buffered):
    k = torch.ones(3, 2, 4, 2)
    cache = layer_cache([(k.clone(), k.clone())])
    if buffered:
        to_buffered(cache, 4)  # no spare room: widening must reallocate
    new = layer_cache([(torch.full((1, 2, 2, 2), 7.0), torch.full((1, 2, 2, 2), 8.0))])
    splice_rows(cache, torch.tensor([1]), new)
    keys = cache.layers[0].keys
    assert keys.shape == (3, 2, 4, 2)
    assert torch.all(keys[1, :, 2:] == 7) and torch.all(keys[1, :, :2] == 1)
    assert torch.all(keys[[0, 2]] == 1) and torch.all(cache.layers[0].values[1, :, 2:] == 8)
    wide = layer_cache([(torch.full((1, 2, 6, 2), 5.0), torch.full((1, 2, 6, 2), 5.0))])
    splice_rows(cache, torch.tensor([2]), wide)
    keys = cache.layers[0].keys
    assert keys.shape == (3, 2, 6, 2)  # two zero columns added on the left of every row
    assert torch.all(keys[2] == 5) and torch.all(keys[0, :, :2] == 0) and torch.all(keys[0, :, 2:] == 1)
    assert cache.get_seq_length() == 6


def test_buffered_layer_appends_like_dynamic_layer_across_compactions():
    torch.manual_seed(0)
    k0, v0 = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 6)  # K and V head sizes may differ
    ref = layer_cache([(k0, v0)])
    buf = to_buffered(layer_cache([(k0, v0)]), capacity=6)
    assert isinstance(buf.layers[0], BufferedLayer) and supports_splicing(buf)
    for step in range(20):
        k, v = torch.randn(2, 3, 1, 5), torch.randn(2, 3, 1, 6)
        out_ref = ref.update(k, v, 0)
        out_buf = buf.update(k, v, 0)
        assert all(torch.equal(a, b) for a, b in zip(out_ref, out_buf, strict=True))
        if step % 3 == 2:  # trimming keeps both in step and forces compactions of the buffer
            trim_cache(ref, 5)
            trim_cache(buf, 5)
    assert buf.get_seq_length() == ref.get_seq_length()
    assert buf.layers[0].capacity <= 2 * (6 + 1)  # bounded by twice the live width, however long it runs


def test_unsupported_layouts_are_detected():
    from transformers.cache_utils import DynamicSlidingWindowLayer

    cache = DynamicCache()
    assert not supports_splicing(cache)  # empty
    cache.layers = [DynamicSlidingWindowLayer(sliding_window=4)]
    cache.update(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), 0)
    assert not supports_splicing(cache)
    assert not supports_splicing(object())
