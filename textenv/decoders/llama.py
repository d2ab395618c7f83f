"""The Llama family as plain tensor operations on the model's own parameters: the ``llama`` entry of the decoder
registry (``textenv.decoders``), serving ``LlamaForCausalLM`` (Touvron et al. 2023), ``Qwen2ForCausalLM`` (Yang et al.
2024), ``Qwen3ForCausalLM`` (Yang et al. 2025) and ``MistralForCausalLM`` (Jiang et al. 2023).

They share one block: pre-norm RMSNorm (Zhang & Sennrich 2019), rotary position embeddings (RoPE, Su et al. 2021)
on queries and keys, grouped-query attention (Ainslie et al. 2023; fewer K/V heads than query heads, which is also
what the KV cache holds), and a SwiGLU MLP (Shazeer 2020), ``down(act(gate(x)) * up(x))``. The differences are
parameters or optional modules, read from the model: biases on any projection (Qwen2's q/k/v biases, Llama's
``attention_bias`` / ``mlp_bias``), Qwen3's RMSNorm on each query and key head before RoPE, a tied or untied head.

RoPE scaling: the static variants (``default``; ``linear``, position interpolation, Chen et al. 2023; ``llama3``,
Grattafiori et al. 2024; ``yarn``, Peng et al. 2023) fix the inverse frequencies at load time, so the rotation is
computed here from the model's own ``inv_freq`` and ``attention_scaling``; the variants that change them with the
sequence length (``dynamic`` NTK scaling, ``longrope``, Ding et al. 2024) call the model's rotary module, which does
that update exactly as in the model's forward. Any other type falls back to the model.

Falls back to the model (``supports`` is False; :meth:`LlamaDecoder.unsupported` says why): a subclass or a module
replaced by another type (adapters such as peft's LoRA layers), any forward hook, a sliding window that can cut
(Mistral's ``sliding_window`` / Qwen's sliding layers shorter than ``max_position_embeddings``), attention dropout, an
unknown RoPE type, an embedding with ``max_norm`` or sparse gradients, a head with a bias.

Tests (``tests/textenv/test_decoders_llama.py``) check logits, the KV cache and gradients against the model's own
forward on a tiny config of each family and scaling variant, and each fallback.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.activations import SiLUActivation

from textenv.decoders.base import BlockStackDecoder, fingerprint, register_decoder

#: Model class -> transformers' model package: the families whose forward this decoder reproduces.
FAMILIES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3",
            "MistralForCausalLM": "mistral"}  # fmt: skip
STATIC_ROPE = frozenset({"default", "linear", "llama3", "yarn"})  # inv_freq fixed at load time
DYNAMIC_ROPE = frozenset({"dynamic", "longrope"})  # inv_freq updated by the rotary module on each forward
_PARTS = ("Model", "DecoderLayer", "Attention", "MLP", "RMSNorm", "RotaryEmbedding")


def _family_classes(model: Any) -> dict[str, type] | None:
    """The family's module classes (``Model``, ``DecoderLayer``, ...) if ``model`` is exactly one of ``FAMILIES``,
    found in the model's own transformers module (imports nothing new)."""
    name = type(model).__name__
    package = FAMILIES.get(name)
    if package is None or type(model).__module__ != f"transformers.models.{package}.modeling_{package}":
        return None
    module = sys.modules[type(model).__module__]
    prefix = name.removesuffix("ForCausalLM")
    return {part: getattr(module, prefix + part, None) for part in _PARTS}


def _plain_linear(m: Any) -> bool:
    return type(m) is nn.Linear


def _sliding_window_cuts(cfg: Any) -> bool:
    """True if some layer's sliding window is shorter than the longest sequence the model accepts (then attention
    differs from full causal attention). Mistral slides on every layer when ``sliding_window`` is set; Qwen2/3 only
    on the layers marked ``sliding_attention`` (``sliding_window`` is None unless ``use_sliding_window``)."""
    window = getattr(cfg, "sliding_window", None)
    if window is None:
        return False
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        return False
    max_positions = getattr(cfg, "max_position_embeddings", None)
    return max_positions is None or int(window) < int(max_positions)


def _layer_unsupported(layer: Any, classes: dict[str, type]) -> str | None:
    if type(layer) is not classes["DecoderLayer"]:
        return f"layer type {type(layer).__name__}"
    attn, mlp = layer.self_attn, layer.mlp
    if type(attn) is not classes["Attention"] or type(mlp) is not classes["MLP"]:
        return f"attention/MLP types {type(attn).__name__}/{type(mlp).__name__}"
    projections = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
    if not all(_plain_linear(p) for p in projections):
        return "a projection is not a plain nn.Linear (an adapter such as LoRA?)"
    norms = [layer.input_layernorm, layer.post_attention_layernorm]
    norms += [getattr(attn, n) for n in ("q_norm", "k_norm") if hasattr(attn, n)]
    if any(type(n) is not classes["RMSNorm"] for n in norms):
        return "a norm is not the family's RMSNorm"
    d = int(attn.head_dim)
    q, k, v = attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features
    if q % d or k % d or k != v or d % 2:
        return "projection sizes are not whole heads"
    if (q // d) % (k // d):
        return "query heads are not a multiple of K/V heads"
    return None


@register_decoder
class LlamaDecoder(BlockStackDecoder):
    """KV-cached decoding steps, prefill and the differentiable full-sequence forward of a Llama-family causal LM,
    as plain tensor operations on the model's parameters (read live: optimizer updates are seen at once).

    Same calls and shapes as :class:`textenv.decoders.GPT2Decoder` (the :class:`textenv.decoders.Decoder`
    protocol); the cache is a transformers ``DynamicCache`` holding the rotated keys and the values of the ``G`` K/V
    heads, ``(N, G, C, D)`` per layer, as the model's own forward would leave it. In :meth:`hidden_states`, layers
    whose module has gradient checkpointing on (and is in training mode) are recomputed in the backward pass, as in
    the model's own forward.
    """

    def __init__(self, model: nn.Module):
        inner = model.model
        self.embed = inner.embed_tokens
        self.norm = (inner.norm.weight, float(inner.norm.variance_epsilon))
        self.head = model.lm_head.weight
        self.rotary = inner.rotary_emb  # its inv_freq buffer is read per call: it follows model.to(device)
        self.dynamic_rope = self.rotary.rope_type in DYNAMIC_ROPE
        self.blocks = list(inner.layers[: model.config.num_hidden_layers])  # the modules: checkpointing flags
        self.layers = [self._layer_params(b) for b in self.blocks]

    @staticmethod
    def _layer_params(b: nn.Module) -> tuple:
        a, m = b.self_attn, b.mlp
        d = int(a.head_dim)

        def lin(p):
            return p.weight, p.bias

        def rms(n):
            return None if n is None else (n.weight, float(n.variance_epsilon))

        act = (lambda x: F.silu(x)) if type(m.act_fn) in (SiLUActivation, nn.SiLU) else m.act_fn
        return (
            rms(b.input_layernorm), lin(a.q_proj), lin(a.k_proj), lin(a.v_proj), lin(a.o_proj),
            rms(getattr(a, "q_norm", None)), rms(getattr(a, "k_norm", None)),
            a.q_proj.out_features // d, a.k_proj.out_features // d, d, float(a.scaling),
            rms(b.post_attention_layernorm), lin(m.gate_proj), lin(m.up_proj), act, lin(m.down_proj),
        )  # fmt: skip

    @staticmethod
    def unsupported(model: Any) -> str | None:
        """Why this class cannot reproduce ``model``'s forward (to float rounding), or None if it can."""
        classes = _family_classes(model)
        if classes is None:
            return f"{type(model).__name__} is not one of {sorted(FAMILIES)}"
        if fingerprint(model) is None:
            return "a forward hook is registered"
        cfg, inner = model.config, getattr(model, "model", None)
        if type(inner) is not classes["Model"]:
            return f"inner model type {type(inner).__name__}"
        if getattr(cfg, "attention_dropout", 0.0):
            return "attention dropout is set (the model applies it in training mode)"
        if _sliding_window_cuts(cfg):
            return f"sliding window {cfg.sliding_window} < max_position_embeddings {cfg.max_position_embeddings}"
        e = inner.embed_tokens
        if type(e) is not nn.Embedding or e.max_norm is not None or e.sparse or e.scale_grad_by_freq:
            return "the token embedding is not a plain nn.Embedding"
        if type(inner.norm) is not classes["RMSNorm"] or type(inner.rotary_emb) is not classes["RotaryEmbedding"]:
            return "final norm or rotary embedding of another type"
        rope = getattr(inner.rotary_emb, "rope_type", None)
        if not isinstance(rope, str) or rope not in STATIC_ROPE | DYNAMIC_ROPE:
            return f"RoPE type {rope!r} (known: {sorted(STATIC_ROPE | DYNAMIC_ROPE)})"
        if not _plain_linear(model.lm_head) or model.lm_head.bias is not None:
            return "the LM head is not a bias-free nn.Linear"
        for i, layer in enumerate(inner.layers[: cfg.num_hidden_layers]):
            why = _layer_unsupported(layer, classes)
            if why is not None:
                return f"layer {i}: {why}"
        return None

    @staticmethod
    def supports(model: Any) -> bool:
        """True if ``model`` is a plain Llama / Qwen2 / Qwen3 / Mistral causal LM this class reproduces."""
        return LlamaDecoder.unsupported(model) is None

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return _rms_norm(x, *self.norm)

    def _rope(self, x: torch.Tensor, position_ids: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos`` and signed ``sin``, ``(N, S, 1, D)`` each, such that ``_rotate`` equals transformers'
        ``q * cos + rotate_half(q) * sin`` (its second half of ``sin`` is the first's copy; the sign of
        ``rotate_half``'s ``-x2`` moves onto the first half here, an exact rewrite)."""
        half = d // 2
        if self.dynamic_rope:  # the module updates inv_freq from the positions, as in the model's forward
            cos, sin = self.rotary(x, position_ids)  # (N, S, D)
            sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
        else:
            freqs = position_ids[..., None].float() * self.rotary.inv_freq.float()  # (N, S, D/2)
            c, s = freqs.cos(), freqs.sin()
            scaling = float(self.rotary.attention_scaling)
            if scaling != 1.0:
                c, s = c * scaling, s * scaling
            cos, sin = torch.cat([c, c], dim=-1), torch.cat([-s, s], dim=-1)
            if cos.dtype != x.dtype:
                cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        return cos[:, :, None], sin[:, :, None]

    def _blocks(self, input_ids, position_ids, mask4d, cache) -> torch.Tensor:
        """The decoder layers over ``(N, S)`` tokens; returns the residual stream ``(N * S, E)`` before the final
        norm. With a ``cache`` each layer's K/V go through ``cache.update``, which appends them to the cached ones."""
        n, s = input_ids.shape
        x = F.embedding(input_ids, self.embed.weight, self.embed.padding_idx).view(n * s, -1)
        cos, sin = self._rope(x, position_ids, self.layers[0][9]) if self.layers else (None, None)
        recompute = cache is None and torch.is_grad_enabled()
        for i, params in enumerate(self.layers):
            block = self.blocks[i]
            if recompute and block.training and getattr(block, "gradient_checkpointing", False):
                x = checkpoint(_layer, params, x, cos, sin, mask4d, None, i, n, s, use_reentrant=False)
            else:
                x = _layer(params, x, cos, sin, mask4d, cache, i, n, s)
        return x


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' Llama RMSNorm: normalise in float32, cast back to the input dtype, then scale."""
    if x.dtype == torch.float32 and weight.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    return weight * F.rms_norm(x.float(), (x.shape[-1],), None, eps).to(x.dtype)


def _linear(x: torch.Tensor, wb: tuple) -> torch.Tensor:
    return F.linear(x, wb[0], wb[1])


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on ``x`` ``(N, S, H, D)``: swap the two halves of the last dimension (``rotate_half`` up to the sign,
    which ``sin`` carries) and combine."""
    n, s, h, d = x.shape
    return x * cos + x.view(n, s, h, 2, d // 2).flip(-2).view(n, s, h, d) * sin


def _layer(params: tuple, x, cos, sin, mask4d, cache, i: int, n: int, s: int) -> torch.Tensor:
    """One decoder layer on the residual stream ``x`` ``(N * S, E)``."""
    (ln1, q_p, k_p, v_p, o_p, q_norm, k_norm, h, g, d, scaling, ln2, gate, up, act, down) = params
    y = _rms_norm(x, *ln1)
    q = _linear(y, q_p).view(n, s, h, d)
    k = _linear(y, k_p).view(n, s, g, d)
    v = _linear(y, v_p).view(n, s, g, d).transpose(1, 2)  # (N, G, S, D)
    if q_norm is not None:  # Qwen3: RMSNorm over each head's D, before RoPE
        q, k = _rms_norm(q, *q_norm), _rms_norm(k, *k_norm)
    q, k = _rotate(q, cos, sin).transpose(1, 2), _rotate(k, cos, sin).transpose(1, 2)  # (N, H|G, S, D)
    if cache is not None:
        k, v = cache.update(k, v, i)
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask4d, scale=scaling, enable_gqa=h != g)
    x = x + _linear(a.transpose(1, 2).reshape(n * s, h * d), o_p)
    y = _rms_norm(x, *ln2)
    return x + _linear(act(_linear(y, gate)) * _linear(y, up), down)
