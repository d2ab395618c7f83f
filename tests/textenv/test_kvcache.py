"""KV-cache surgery: trimming, splicing rows, detecting layouts it cannot handle."""

import torch
from transformers import DynamicCache

from textenv.kvcache import splice_rows, supports_splicing, trim_cache


def layer_cache(tensors):
    cache = DynamicCache()
    for i, (k, v) in enumerate(tensors):
        cache.update(k, v, i)
    return cache


def test_trim_cache_keeps_the_last_columns():
    k = torch.arange(2 * 1 * 5 * 2, dtype=torch.float32).reshape(2, 1, 5, 2)
    cache = layer_cache([(k, -k)])
    trim_cache(cache, 3)
    assert torch.equal(cache.layers[0].keys, k[:, :, 2:])
    assert torch.equal(cache.layers[0].values, -k[:, :, 2:])
    assert cache.get_seq_length() == 3
    trim_cache(cache, 10)  # wider than the cache: unchanged
    assert cache.get_seq_length() == 3


def test_splice_rows_writes_the_right_end_and_widens_when_needed():
    k = torch.ones(3, 2, 4, 2)
    cache = layer_cache([(k.clone(), k.clone())])
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


def test_unsupported_layouts_are_detected():
    from transformers.cache_utils import DynamicSlidingWindowLayer

    cache = DynamicCache()
    assert not supports_splicing(cache)  # empty
    cache.layers = [DynamicSlidingWindowLayer(sliding_window=4)]
    cache.update(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), 0)
    assert not supports_splicing(cache)
    assert not supports_splicing(object())
