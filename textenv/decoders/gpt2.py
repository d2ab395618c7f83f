"""GPT-2 (Radford et al. 2019) as plain tensor operations on the model's own parameters: the ``gpt2`` entry of
the decoder registry (``textenv.decoders``).

The same code gives the engine's prefill and KV-cached decoding steps and the full-sequence forward that training
needs (:meth:`GPT2Decoder.hidden_states`, differentiable), used by ``agents.llm.rollout.sequence_forward``. Tests check
logits, hidden states and gradients against the model's own forward, and decoding step by step with left padding and
row resets against the model's cached forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import NewGELUActivation
from transformers.models.gpt2.modeling_gpt2 import GPT2MLP, GPT2Attention, GPT2Block, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from textenv.decoders.base import BlockStackDecoder, fingerprint, register_decoder


def _attention_scaling(cfg: Any, head_dim: int, layer: int) -> float:
    """GPT-2's factor on ``q @ k^T`` (``GPT2Attention.scaling`` in transformers 5.x, computed here from the config so
    that older releases, which lack the attribute, work too)."""
    scaling = head_dim**-0.5 if getattr(cfg, "scale_attn_weights", True) else 1.0
    if getattr(cfg, "scale_attn_by_inverse_layer_idx", False):
        scaling /= float(layer + 1)
    return scaling


def _fused_activation(act: nn.Module):
    """The activation as one kernel where transformers spells it as several (its tanh-approximated GELU is
    ``F.gelu(approximate="tanh")`` up to float rounding, ~1e-7); any other activation module is called as is."""
    if type(act) is NewGELUActivation:
        return lambda x: F.gelu(x, approximate="tanh")
    return act


@register_decoder
class GPT2Decoder(BlockStackDecoder):
    """One KV-cached decoding step of a ``GPT2LMHeadModel`` (Radford et al. 2019), as plain tensor operations.

    ``step(input_ids, mask4d, position_ids, cache)`` is ``model(input_ids, attention_mask, position_ids, cache,
    use_cache=True).logits[:, -1]`` for one new token per row: ``input_ids`` and ``position_ids`` are ``(N, 1)``,
    ``mask4d`` is the boolean ``(N, 1, 1, C + 1)`` key mask (True = attend) over the ``C`` cached columns and the new
    one, and the new K/V are appended to ``cache`` (a transformers ``DynamicCache``, through its ``update``).
    """

    def __init__(self, model: nn.Module):
        cfg = model.config
        self.n_head = int(cfg.n_head)
        self.head_dim = int(cfg.n_embd) // self.n_head
        t = model.transformer
        # The parameters themselves (not copies): in-place optimizer updates are seen by the next call.
        self.wte, self.wpe, self.head = t.wte.weight, t.wpe.weight, model.lm_head.weight
        self.ln_f = (t.ln_f.normalized_shape, t.ln_f.weight, t.ln_f.bias, t.ln_f.eps)
        self.layers = [
            (
                (b.ln_1.normalized_shape, b.ln_1.weight, b.ln_1.bias, b.ln_1.eps),
                (b.attn.c_attn.bias, b.attn.c_attn.weight),
                (b.attn.c_proj.bias, b.attn.c_proj.weight),
                _attention_scaling(cfg, self.head_dim, i),
                (b.ln_2.normalized_shape, b.ln_2.weight, b.ln_2.bias, b.ln_2.eps),
                (b.mlp.c_fc.bias, b.mlp.c_fc.weight),
                _fused_activation(b.mlp.act),
                (b.mlp.c_proj.bias, b.mlp.c_proj.weight),
            )
            for i, b in enumerate(t.h)
        ]

    @staticmethod
    def supports(model: Any) -> bool:
        """True if ``model`` is a plain GPT-2 LM whose forward this class reproduces (to float rounding)."""
        if type(model) is not GPT2LMHeadModel:
            return False
        cfg = model.config
        t = model.transformer
        if getattr(cfg, "add_cross_attention", False) or fingerprint(model) is None:
            return False
        if getattr(cfg, "reorder_and_upcast_attn", False) and t.wte.weight.dtype != torch.float32:
            return False  # upcast attention differs from plain attention in half precision only
        if type(t.wte) is not nn.Embedding or type(t.wpe) is not nn.Embedding or type(t.ln_f) is not nn.LayerNorm:
            return False
        if type(model.lm_head) is not nn.Linear or model.lm_head.bias is not None:
            return False
        for b in t.h:
            if type(b) is not GPT2Block or type(b.attn) is not GPT2Attention or type(b.mlp) is not GPT2MLP:
                return False
            if any(type(m) is not Conv1D for m in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj)):
                return False
            if type(b.ln_1) is not nn.LayerNorm or type(b.ln_2) is not nn.LayerNorm:
                return False
        return True

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, *self.ln_f)

    def _blocks(self, input_ids, position_ids, mask4d, cache) -> torch.Tensor:
        """The transformer blocks over ``(N, S)`` tokens; returns the residual stream ``(N * S, E)`` before ``ln_f``.
        With a ``cache`` (a transformers ``DynamicCache``) each layer's K/V go through ``cache.update``, which appends
        them to the cached ones, and attention covers both."""
        n, s = input_ids.shape
        h, d = self.n_head, self.head_dim
        x = (F.embedding(input_ids, self.wte) + F.embedding(position_ids, self.wpe)).view(n * s, -1)
        addmm = torch.addmm  # Conv1D(x) = x @ W + b with W of shape (in, out)
        for i, (ln1, (qkv_b, qkv_w), (pb, pw), scaling, ln2, (fb, fw), act, (ob, ow)) in enumerate(self.layers):
            qkv = addmm(qkv_b, F.layer_norm(x, *ln1), qkv_w).view(n, s, 3, h, d).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)  # (N, H, S, D) each
            if cache is not None:
                k, v = cache.update(k, v, i)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask4d, scale=scaling)
            x = x + addmm(pb, a.transpose(1, 2).reshape(n * s, h * d), pw)
            x = x + addmm(ob, act(addmm(fb, F.layer_norm(x, *ln2), fw)), ow)
        return x
