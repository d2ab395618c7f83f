"""The causal LM's forward for ``CausalLMPolicy``: next-token logits ``(B, V)`` and the last hidden state ``(B, E)``
at the last position of each left-padded token observation ``(B, L)``, three ways that agree to float rounding
(``tests/agents/sb3/test_lm_forward.py``):

- :func:`full_forward`: the whole observation through the LM, one row per observation (the reference).
- :func:`shared_prefix_forward`, for SB3's training minibatches (``evaluate_actions``, with gradients): the states
  of one episode are prefixes of each other, and a causal LM's outputs at a position depend on the tokens up to it
  only, so one forward of an episode's longest state in the minibatch gives every shorter one's outputs at its last
  token. A minibatch of 128 states from ~25 episodes costs ~25 rows of forward and backward instead of 128; the
  gradient is the same (a state drawn twice is gathered twice).
- :class:`RolloutCache`, for SB3's rollout (``collect_rollouts`` calls ``policy.forward`` under ``no_grad`` on
  observations that each extend the previous one by one token per env): a KV cache keyed by the observation's token
  prefix. A row whose observation is the previous one plus one token decodes that token against the cache; any
  other row (a new episode, another batch) is recomputed and spliced in (``textenv.kvcache``, as the env's engine
  does); a change of the weights (an optimizer step, ``load_state_dict``: the parameters' version counters) or of
  the batch size starts afresh, so the cache never serves stale weights.

Where ``textenv.decoders`` has a hand-written forward for the LM (GPT-2, the Llama family) it is used, as the native
agents use it; with dropout active (a model in training mode with dropout > 0) every path is the plain forward, so
each state keeps its own dropout mask as before.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from textenv.decoders import fast_decoder
from textenv.kvcache import cache_width, splice_rows, supports_splicing, trim_cache

__all__ = ["RolloutCache", "full_forward", "shared_prefix_forward"]

Outputs = tuple[torch.Tensor, torch.Tensor]  # logits (B, V) float32, hidden (B, E) float32


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids from a left-padded mask (B, S): padding never shifts the positions the LM sees."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def dropout_active(lm: nn.Module) -> bool:
    return lm.training and any(isinstance(m, nn.Dropout) and m.p > 0 for m in lm.modules())


def trimmed(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The columns that hold a real token in some row (left padding that every row has changes nothing)."""
    w = int(mask.sum(1).max())
    return (ids[:, -w:], mask[:, -w:]) if 0 < w < ids.shape[1] else (ids, mask)


def full_forward(lm: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> Outputs:
    """Logits and last hidden state at the last column of every row of ``ids`` / ``mask`` (B, L)."""
    ids, mask = trimmed(ids, mask)
    decoder = None if dropout_active(lm) else fast_decoder(lm)
    if decoder is not None:
        hidden = decoder.hidden_states(ids, mask, positions(mask))[:, -1]  # (B, E)
        return decoder.logits(hidden).float(), hidden.float()
    out = lm(input_ids=ids, attention_mask=mask, position_ids=positions(mask), output_hidden_states=True,
             use_cache=False, logits_to_keep=1)
    return out.logits[:, -1].float(), out.hidden_states[-1][:, -1].float()


def shared_prefix_forward(lm: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> Outputs:
    """:func:`full_forward`'s outputs, computing each set of observations that are token prefixes of one another
    once (module docstring). Differentiable. Rows that are not left-padded (0s then 1s) or empty, or a model with
    dropout active, take :func:`full_forward`."""
    shared = None if dropout_active(lm) else _prefix_roots(ids, mask)
    if shared is None or len(shared[0]) == ids.shape[0]:
        return full_forward(lm, ids, mask)
    roots, root_of, column = (torch.as_tensor(x, device=ids.device) for x in shared)
    r_ids, r_mask = trimmed(ids[roots], mask[roots])  # (R, W): each prefix group's longest observation
    column = column - (ids.shape[1] - r_ids.shape[1])
    decoder = fast_decoder(lm)
    if decoder is not None:
        hidden = decoder.hidden_states(r_ids, r_mask, positions(r_mask))[root_of, column]  # (B, E)
        return decoder.logits(hidden).float(), hidden.float()
    out = lm(input_ids=r_ids, attention_mask=r_mask, position_ids=positions(r_mask), output_hidden_states=True,
             use_cache=False)
    return out.logits[root_of, column].float(), out.hidden_states[-1][root_of, column].float()


def _prefix_roots(ids: torch.Tensor, mask: torch.Tensor) -> tuple[list[int], list[int], list[int]] | None:
    """Group the rows whose real tokens are prefixes of another row's: ``(roots, root_of, column)``, the rows to
    run, and for each row the index into ``roots`` of the row holding it and the column of its last token there.
    None when a row is empty or not left-padded."""
    if not bool((mask[:, 1:] >= mask[:, :-1]).all()):
        return None
    width = ids.shape[1]
    lengths = mask.sum(1).tolist()
    if min(lengths) < 1:
        return None
    rows = ids.tolist()
    prefixes: dict[tuple[int, ...], tuple[int, int]] = {}
    roots: list[int] = []
    root_of, column = [0] * len(rows), [0] * len(rows)
    for i in sorted(range(len(rows)), key=lambda r: -lengths[r]):  # longest first: they are the roots
        n = lengths[i]
        tokens = tuple(rows[i][width - n:])
        if tokens not in prefixes:
            for k in range(1, n + 1):
                prefixes.setdefault(tokens[:k], (len(roots), width - n + k - 1))
            roots.append(i)
        root_of[i], column[i] = prefixes[tokens]
    return roots, root_of, column


@dataclass
class _Entry:
    """The cache of one batch size: the last observations, their K/V (aligned with the window's right end), and
    what they were computed with."""

    ids: torch.Tensor  # (B, L)
    mask: torch.Tensor  # (B, L)
    cache: Any
    weights: tuple
    decoder: Any


class RolloutCache:
    """KV caches for the rollout forward (module docstring), one per batch size (SB3 steps ``n_envs`` rows, and asks
    for one row's value at a truncated episode's end); ``forward`` computes what :func:`full_forward` does."""

    def __init__(self, max_entries: int = 2):
        self.max_entries = max_entries
        self._entries: dict[int, _Entry] = {}
        self.stats = {"decoded": 0, "prefilled": 0}  # rows served from the cache / recomputed (for tests, benchmarks)

    def clear(self) -> None:
        self._entries.clear()

    @torch.no_grad()
    def forward(self, lm: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> Outputs:
        if dropout_active(lm):
            return full_forward(lm, ids, mask)
        b, decoder, weights = ids.shape[0], fast_decoder(lm), _weights(lm)
        entry = self._entries.pop(b, None)
        usable = (entry is not None and entry.weights == weights and entry.decoder is decoder
                  and entry.ids.device == ids.device and entry.ids.shape == ids.shape)
        extends = _extends(entry, ids, mask) if usable else torch.zeros(b, dtype=torch.bool)
        if extends.any():
            logits, hidden = self._advance(lm, decoder, entry, ids, mask, extends)
        else:
            logits, hidden, cache = _prefill(lm, decoder, ids, mask)
            if not supports_splicing(cache):  # a cache layout textenv.kvcache cannot splice: no caching
                return logits, hidden
            entry = _Entry(ids, mask, cache, weights, decoder)
            self.stats["prefilled"] += b
        entry.ids, entry.mask = ids.clone(), mask.clone()  # the caller may reuse its buffers
        self._entries[b] = entry
        while len(self._entries) > self.max_entries:
            self._entries.pop(next(iter(self._entries)))
        return logits, hidden

    def _advance(self, lm, decoder, entry: _Entry, ids, mask, extends: torch.Tensor) -> Outputs:
        """Decode every row's last token against the cache; recompute the rows that do not extend theirs."""
        trim_cache(entry.cache, int(entry.mask.sum(1).max()))  # the previous observations' columns
        c = cache_width(entry.cache) + 1
        logits, hidden, entry.cache = _decode(lm, decoder, ids[:, -1:], mask[:, -c:], positions(mask)[:, -1:],
                                              entry.cache)
        fresh = (~extends).nonzero().flatten()
        self.stats["decoded"] += int(extends.sum())
        if len(fresh):  # new episodes: their prompt's K/V, written over the last columns of their rows
            w = int(mask[fresh].sum(1).max())
            f_logits, f_hidden, new = _prefill(lm, decoder, ids[fresh, -w:], mask[fresh, -w:])
            splice_rows(entry.cache, fresh, new)
            logits, hidden = logits.index_put((fresh,), f_logits), hidden.index_put((fresh,), f_hidden)
            self.stats["prefilled"] += len(fresh)
        return logits, hidden


def _weights(lm: nn.Module) -> tuple:
    """Which parameter tensors the LM has and how often each was changed in place (an optimizer step bumps it)."""
    return tuple((id(p), p._version) for p in lm.parameters())


def _extends(entry: _Entry, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) bool on the host: the row's observation is its previous one plus one token (the window shifted left by
    one column, a padding column dropped, a real token appended)."""
    same = (ids[:, :-1] == entry.ids[:, 1:]) | (mask[:, :-1] == 0)  # token ids under padding do not matter
    ok = same.all(1) & (mask[:, :-1] == entry.mask[:, 1:]).all(1) & (mask[:, -1] == 1) & (entry.mask[:, 0] == 0)
    return ok.cpu()


def _cache_arg(lm: nn.Module) -> str:
    """transformers 5.x renamed the KV-cache argument and output field ``past_key_values`` to ``cache``."""
    return "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"


def _prefill(lm: nn.Module, decoder: Any, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Logits, hidden state at the last column and a new KV cache of left-padded ``ids`` / ``mask``."""
    if decoder is not None:
        hidden, cache = decoder.prefill_hidden(ids, mask, positions(mask))
        return decoder.logits(hidden).float(), hidden.float(), cache
    arg = _cache_arg(lm)
    out = lm(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=True,
             output_hidden_states=True, logits_to_keep=1)
    return out.logits[:, -1].float(), out.hidden_states[-1][:, -1].float(), out[arg]


def _decode(lm: nn.Module, decoder: Any, token: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor,
            cache: Any) -> tuple[torch.Tensor, ...]:
    """One token per row (``token`` / ``pos`` (B, 1)) against ``cache`` (``mask``: its columns and the token's)."""
    if decoder is not None:
        hidden = decoder.step_hidden(token, mask.bool()[:, None, None, :], pos, cache)  # K/V appended in place
        return decoder.logits(hidden).float(), hidden.float(), cache
    arg = _cache_arg(lm)
    out = lm(input_ids=token, attention_mask=mask, position_ids=pos, use_cache=True, output_hidden_states=True,
             logits_to_keep=1, **{arg: cache})
    return out.logits[:, -1].float(), out.hidden_states[-1][:, -1].float(), out[arg]
