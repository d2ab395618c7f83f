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
from torch import nn
from torch.nn.modules import module as torch_module


class Decoder(Protocol):
    """What the engine and the training forward call. Shapes: ``N`` rows, ``S`` columns, ``C`` cached columns."""

    @staticmethod
    def supports(model: Any) -> bool: ...  # True if this class reproduces ``model``'s forward (to float rounding)

    def step(self, input_ids: torch.Tensor, mask4d: torch.Tensor, position_ids: torch.Tensor,
             cache: Any) -> torch.Tensor: ...  # (N, 1) ids, (N, 1, 1, C + 1) mask -> (N, V) logits; K/V appended

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor) -> tuple[torch.Tensor, Any]: ...  # (N, S) -> last logits (N, V), cache

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


def fingerprint(model: nn.Module) -> tuple | None:
    """Identity of ``model``'s modules and parameters (and their dtypes), in order; None if any forward hook is
    registered (globally or on a module), since hooks may change what a module computes."""
    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return None
    ids: list = []
    for m in model.modules():
        if m._forward_hooks or m._forward_pre_hooks:
            return None
        ids.append(id(m))
        ids.extend((id(p), p.dtype) for p in m._parameters.values() if p is not None)
    return tuple(ids)
