"""The hand-written Llama-family forward (textenv/decoders/llama.py) against each model's own forward: prefill and
cached decoding (logits and the KV cache), the full-sequence hidden states and their gradients, on a tiny config of
Llama, Qwen2, Qwen3 and Mistral and of each RoPE variant; the engine and the training forward with and without it;
gradient checkpointing; and the models it must hand back to the model (sliding window, attention dropout, unknown
RoPE types, hooks, subclasses, peft's LoRA)."""

from __future__ import annotations

import inspect

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from textenv.decoders import LlamaDecoder, fast_decoder
from textenv.testing import make_tiny_tokenizer

from .test_decoders import (
    check_engine_runs_the_model,
    check_hidden_states_logits_and_gradients,
    check_sequence_forward,
    env_logits,
    left_padded,
)

ATOL = 2e-5  # float32 rounding: fused RMSNorm / SDPA kernels differ from the model's in the last bits

FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
}
THETA = {"rope_theta": 10000.0}


def tiny(family: str = "llama", seed: int = 0, **overrides):
    """A tiny random model of ``family`` (2 layers, hidden 32, 4 query heads over 2 K/V heads) with weights larger
    than the init's (so differences would show), and the word-level test tokenizer."""
    config_cls, model_cls = FAMILIES[family]
    tok = make_tiny_tokenizer()
    settings = dict(
        vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
    )  # fmt: skip
    if family == "mistral":
        settings["sliding_window"] = None
    settings.update(overrides)
    torch.manual_seed(seed)
    model = model_cls(config_cls(**settings)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model, tok


CASES = {
    "llama": ("llama", {}),
    "llama-mha": ("llama", {"num_key_value_heads": 4}),
    "llama-mqa-headdim": ("llama", {"num_key_value_heads": 1, "head_dim": 12}),
    "llama-biases": ("llama", {"attention_bias": True, "mlp_bias": True}),
    "llama-tied": ("llama", {"tie_word_embeddings": True}),
    "llama-gelu": ("llama", {"hidden_act": "gelu"}),
    "rope-linear": ("llama", {"rope_parameters": {"rope_type": "linear", "factor": 2.0, **THETA}}),
    "rope-llama3": ("llama", {"rope_parameters": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8, **THETA}}),
    "rope-yarn": ("llama", {"rope_parameters": {
        "rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32, **THETA}}),
    # max_position_embeddings below the sequence length: dynamic NTK and longrope change inv_freq mid-sequence
    "rope-dynamic": ("llama", {"max_position_embeddings": 6, "rope_parameters": {
        "rope_type": "dynamic", "factor": 2.0, **THETA}}),
    "rope-longrope": ("llama", {"max_position_embeddings": 16, "rope_parameters": {
        "rope_type": "longrope", "short_factor": [1.0, 1.1, 1.2, 1.3], "long_factor": [2.0, 3.0, 4.0, 5.0],
        "original_max_position_embeddings": 6, **THETA}}),
    "qwen2": ("qwen2", {}),
    "qwen2-tied": ("qwen2", {"tie_word_embeddings": True}),
    "qwen3": ("qwen3", {}),
    "qwen3-head-dim": ("qwen3", {"head_dim": 16}),
    "mistral": ("mistral", {}),
    "mistral-window-never-cuts": ("mistral", {"sliding_window": 64}),
}  # fmt: skip


def cache_arg(model) -> str:
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@pytest.mark.parametrize("case", list(CASES))
def test_prefill_then_cached_steps_match_the_models_cached_forward(case):
    family, overrides = CASES[case]
    model, tok = tiny(family, **overrides)
    decoder = fast_decoder(model)
    assert isinstance(decoder, LlamaDecoder), LlamaDecoder.unsupported(model)
    ids, mask, pos = left_padded(tok, ["the movie was", "i", "we hated this film so"])
    logits, cache = decoder.prefill(ids, mask, pos)
    arg = cache_arg(model)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    ref_cache = ref[arg]
    torch.testing.assert_close(logits, ref.logits[:, -1], atol=ATOL, rtol=0)
    g = torch.Generator().manual_seed(1)
    for t in range(5):
        nxt = torch.randint(3, len(tok), (ids.shape[0], 1), generator=g)
        mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
        pos = pos[:, -1:] + 1
        logits = decoder.step(nxt, mask.bool()[:, None, None, :], pos, cache)
        with torch.no_grad():
            ref = model(input_ids=nxt, attention_mask=mask, position_ids=pos, use_cache=True, **{arg: ref_cache})
        torch.testing.assert_close(logits, ref.logits[:, -1], atol=ATOL, rtol=0, msg=f"decoding step {t}")
        for mine, theirs in zip(cache.layers, ref_cache.layers, strict=True):
            assert mine.keys.shape == theirs.keys.shape  # (N, G, C, D): K/V heads, not repeated
            valid = mask.bool()[:, None, :, None]
            torch.testing.assert_close(mine.keys * valid, theirs.keys * valid, atol=ATOL, rtol=0)
            torch.testing.assert_close(mine.values * valid, theirs.values * valid, atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", ["llama", "llama-biases", "qwen2-tied", "qwen3", "mistral", "rope-yarn"])
def test_hidden_states_logits_and_gradients_match_the_model(case):
    family, overrides = CASES[case]
    model, tok = tiny(family, **overrides)
    grads = check_hidden_states_logits_and_gradients(model, tok)
    if not model.config.tie_word_embeddings:  # nn.Embedding(padding_idx=pad): no gradient on that row, here too
        assert grads["model.embed_tokens.weight"][tok.pad_token_id].abs().sum() == 0


def test_bfloat16_follows_the_models_rounding():
    model, tok = tiny("qwen3")
    model = model.to(torch.bfloat16)
    decoder = fast_decoder(model)
    assert isinstance(decoder, LlamaDecoder)
    ids, mask, pos = left_padded(tok, ["the movie was good", "i"])
    with torch.no_grad():
        mine = decoder.logits(decoder.hidden_states(ids, mask, pos))
        theirs = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    assert mine.dtype == torch.bfloat16
    valid = mask.bool()
    # bf16 has 8 bits of mantissa: equal up to a few of its ulps (logits here are O(1))
    torch.testing.assert_close(mine[valid].float(), theirs[valid].float(), atol=5e-2, rtol=2e-2)


def test_gradient_checkpointing_recomputes_each_layer_and_keeps_the_gradients(monkeypatch):
    import textenv.decoders.llama as llama

    model, tok = tiny("llama")
    ids, mask, pos = left_padded(tok, ["the movie was good", "i"])
    calls = []
    real = llama._layer
    monkeypatch.setattr(llama, "_layer", lambda *a: calls.append(a[6]) or real(*a))

    def grads():
        model.zero_grad()
        calls.clear()
        decoder = fast_decoder(model)
        decoder.logits(decoder.hidden_states(ids, mask, pos)).logsumexp(-1)[mask.bool()].sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}, list(calls)

    plain, plain_calls = grads()
    model.train()  # no dropout anywhere in this family's config: training mode computes the same function
    model.gradient_checkpointing_enable()
    # transformers also hooks the input embedding (so that frozen embeddings pass gradients to checkpointed layers):
    # a hook sends everything to the model, which checkpoints by itself
    assert fast_decoder(model) is None
    model.disable_input_require_grads()  # without the hook, the fast path must checkpoint as the model would
    ckpt, ckpt_calls = grads()
    assert plain_calls == [0, 1] and ckpt_calls == [0, 1, 1, 0]  # each layer ran again in backward, last first
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], atol=1e-6, rtol=1e-6, msg=name)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_engine_gives_the_same_logits_and_rewards_with_the_fast_path(family):
    """40 steps of 8 rows with episodes of <= 6 tokens: prefill, decoding, autoreset splices and the reference
    model's KL reward, with one weight update in the middle."""
    fast, fast_r, env = env_logits(*tiny(family), fast=True, update_at=20)
    assert len(env.engine.decoders) == 2
    assert all(isinstance(d, LlamaDecoder) for d in env.engine.decoders.values())
    slow, slow_r, env = env_logits(*tiny(family), fast=False, update_at=20)
    assert all(d is None for d in env.engine.decoders.values())
    torch.testing.assert_close(fast, slow, atol=ATOL, rtol=0)
    torch.testing.assert_close(fast_r, slow_r, atol=1e-4, rtol=0)


def test_sequence_forward_is_the_same_with_the_fast_path_and_the_model(monkeypatch):
    check_sequence_forward(*tiny("qwen3"), monkeypatch)


FALLBACKS = {
    "mistral-sliding-window": (("mistral",), {"sliding_window": 4}, "sliding window"),
    "qwen2-sliding-layers": (("qwen2",), {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1},
                             "sliding window"),
    "attention-dropout": (("llama",), {"attention_dropout": 0.1}, "attention dropout"),
    "unknown-rope": (("llama",), {"rope_parameters": {"rope_type": "proportional", **THETA}}, "RoPE type"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(FALLBACKS))
def test_unsupported_configs_fall_back_and_still_run_in_the_engine(case):
    args, overrides, reason = FALLBACKS[case]
    model, tok = tiny(*args, **overrides)
    assert fast_decoder(model) is None
    assert reason in LlamaDecoder.unsupported(model)
    # the engine runs the model's own forward instead, cached or not, with the same result
    check_engine_runs_the_model(model, tok)


def test_subclasses_hooks_and_replaced_modules_fall_back():
    class Custom(LlamaForCausalLM):
        pass

    model, _ = tiny("llama")
    assert "not one of" in LlamaDecoder.unsupported(Custom(model.config))
    handle = model.model.layers[1].mlp.register_forward_hook(lambda m, i, o: o * 0.5)
    assert fast_decoder(model) is None
    handle.remove()
    assert isinstance(fast_decoder(model), LlamaDecoder)  # re-checked on every call
    model.model.layers[0].self_attn.o_proj = torch.nn.Sequential(model.model.layers[0].self_attn.o_proj)
    assert fast_decoder(model) is None and "layer 0" in LlamaDecoder.unsupported(model)


def test_peft_lora_models_fall_back_and_merged_ones_do_not():
    peft = pytest.importorskip("peft")
    model, tok = tiny("qwen2")
    lora = peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    assert fast_decoder(lora) is None  # the PeftModel wrapper
    assert fast_decoder(lora.base_model.model) is None  # the wrapped model, its projections now LoRA layers
    assert "LoRA" in LlamaDecoder.unsupported(lora.base_model.model)
    ids, mask, pos = left_padded(tok, ["the movie was", "i"])
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_()  # adapters that change the output (lora_B starts at zero)
        expected = lora(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
    merged = lora.merge_and_unload()
    decoder = fast_decoder(merged)
    assert isinstance(decoder, LlamaDecoder)
    torch.testing.assert_close(decoder.prefill(ids, mask, pos)[0], expected, atol=1e-4, rtol=0)
