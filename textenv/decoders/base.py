"""The decoder interface and registry: hand-written forward passes for the engine's hot loop.

A decoding step of a small model is dominated by the Python of the Hugging Face module stack (hooks, output
dataclasses, mask construction, cache bookkeeping), not by its tensor kernels (measurements: ``benchmarks/RESULTS.md``).
A decoder computes the same function with the model's own parameters (read live, so optimizer updates are seen at
once; nothing is copied) and the same ``DynamicCache`` the engine's prefill produced, so ``textenv.kvcache``'s
trimming and splicing work unchanged. Each decoder class says which models it reproduces exactly
(``supports(model)``); anything else (another architecture, adapters replacing projections, hooks, cross-attention)
gets ``None`` from :func:`textenv.decoders.fast_decoder`, and the caller runs the model as usual.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as torch_module
from transformers.cache_utils import DynamicCache


class Decoder(Protocol):
    """What the engine and the training forward call. Shapes: ``N`` rows, ``S`` columns, ``C`` cached columns."""

    @staticmethod
    def supports(model: Any) -> bool: ...  # True if this class reproduces ``model``'s forward (to float rounding)

    def step(self, input_ids: torch.Tensor, mask4d: torch.Tensor, position_ids: torch.Tensor,
             cache: Any) -> torch.Tensor: ...  # (N, 1) ids, (N, 1, 1, C + 1) mask -> (N, V) logits; K/V appended

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor) -> tuple[torch.Tensor, Any]: ...  # (N, S) -> last logits (N, V), cache

    def step_hidden(self, input_ids: torch.Tensor, mask4d: torch.Tensor, position_ids: torch.Tensor,
                    cache: Any) -> torch.Tensor: ...  # as step, but the last hidden state (N, E) (logits(...) of it)

    def prefill_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       position_ids: torch.Tensor) -> tuple[torch.Tensor, Any]: ...  # as prefill: (N, E), cache

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      position_ids: torch.Tensor) -> torch.Tensor: ...  # (N, S) -> (N, S, E), differentiable

    def logits(self, hidden: torch.Tensor) -> torch.Tensor: ...  # (..., E) -> (..., V)


#: Decoder classes, asked in order; the first whose ``supports(model)`` is True serves the model.
DECODERS: list[type] = []


def register_decoder(cls: type) -> type:
    """Class decorator: add a decoder class to the registry (see :class:`Decoder` for what it must provide)."""
    if cls not in DECODERS:
        DECODERS.append(cls)
    return cls


def _observes_only(hook: Any) -> bool:
    """True for transformers' output-capturing hooks: a model called with ``output_hidden_states=True`` (or
    attentions) gets them on its layers for good; they record outputs while a capture is active and never change
    them (``transformers.utils.output_capturing``), so they need not turn the fast decoder off."""
    return getattr(hook, "__name__", "") == "output_capturing_hook" and getattr(hook, "__module__", "").startswith(
        "transformers.")


def fingerprint(model: nn.Module) -> tuple | None:
    """Identity of ``model``'s modules and parameters (and their dtypes), in order; None if any forward hook is
    registered (globally or on a module), since hooks may change what a module computes (transformers' output
    capturing hooks excepted: ``_observes_only``)."""
    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return None
    ids: list = []
    for m in model.modules():
        if m._forward_pre_hooks or not all(map(_observes_only, m._forward_hooks.values())):
            return None
        ids.append(id(m))
        ids.extend((id(p), p.dtype) for p in m._parameters.values() if p is not None)
    return tuple(ids)


def prefill_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``(N, 1, S, S)`` boolean mask for a full left-padded sequence (``attention_mask`` ``(N, S)``, 1 = token):
    query ``i`` attends to the valid keys ``j <= i``. Padding queries attend to themselves only, which keeps their
    (never attended) outputs and K/V finite."""
    s = attention_mask.shape[1]
    device = attention_mask.device
    causal = torch.ones(s, s, dtype=torch.bool, device=device).tril_()
    eye = torch.eye(s, dtype=torch.bool, device=device)
    return ((causal & attention_mask.bool()[:, None, :]) | eye)[:, None]


class BlockStackDecoder:
    """The :class:`Decoder` calls for a stack of pre-norm blocks with a final norm and a bias-free LM head, from
    what each architecture writes: ``_blocks(input_ids, position_ids, mask4d, cache)`` (the residual stream
    ``(N * S, E)`` before the final norm; with a ``cache``, K/V appended through ``cache.update``), ``_final_norm``
    and ``head`` (the ``(V, E)`` weight)."""

    head: torch.Tensor

    def _blocks(self, input_ids, position_ids, mask4d, cache) -> torch.Tensor:
        raise NotImplementedError

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def step(
        self, input_ids: torch.Tensor, mask4d: torch.Tensor, position_ids: torch.Tensor, cache: Any
    ) -> torch.Tensor:
        """Logits ``(N, V)`` of one new token per row (``input_ids`` / ``position_ids`` ``(N, 1)``), attending to the
        cached columns and itself through ``mask4d`` ``(N, 1, 1, C + 1)``; its K/V are appended to ``cache``."""
        return F.linear(self.step_hidden(input_ids, mask4d, position_ids, cache), self.head)

    @torch.no_grad()
    def step_hidden(
        self, input_ids: torch.Tensor, mask4d: torch.Tensor, position_ids: torch.Tensor, cache: Any
    ) -> torch.Tensor:
        """:meth:`step`'s last hidden state ``(N, E)`` (after the final norm), before the LM head."""
        return self._final_norm(self._blocks(input_ids, position_ids, mask4d, cache))

    @torch.no_grad()
    def prefill(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> tuple[torch.Tensor, Any]:
        """Logits ``(N, V)`` at the last column of left-padded ``input_ids`` ``(N, S)`` and a new ``DynamicCache``
        holding their K/V (what ``model(..., use_cache=True)`` returns)."""
        hidden, cache = self.prefill_hidden(input_ids, attention_mask, position_ids)
        return F.linear(hidden, self.head), cache

    @torch.no_grad()
    def prefill_hidden(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> tuple[torch.Tensor, Any]:
        """:meth:`prefill`'s last hidden state ``(N, E)`` (after the final norm) and its new ``DynamicCache``."""
        cache = DynamicCache()
        x = self._blocks(input_ids, position_ids, prefill_mask(attention_mask), cache)
        x = x.view(input_ids.shape[0], input_ids.shape[1], -1)[:, -1]
        return self._final_norm(x), cache

    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """Last hidden states ``(N, S, E)`` (after the final norm: ``model(...).hidden_states[-1]``) of the whole
        left-padded sequence, without a cache; :meth:`logits` maps them to the vocabulary. Differentiable
        (gradients reach the model's parameters) unless the caller disables gradients."""
        n, s = input_ids.shape
        x = self._blocks(input_ids, position_ids, prefill_mask(attention_mask), None)
        return self._final_norm(x).view(n, s, -1)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head: ``(..., E)`` hidden states -> ``(..., V)`` logits."""
        return F.linear(hidden, self.head)

    prefill_mask = staticmethod(prefill_mask)
