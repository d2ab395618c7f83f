"""textenv.lora: adapters on a real tiny GPT-2 through peft; the reference view; save/load; the env and the fast
decoders never run stale base weights for a LoRA model."""

import copy

import pytest
import torch

from textenv import TextGenVectorEnv
from textenv.decoders import fast_decoder
from textenv.lora import (
    AdapterDisabledView,
    LoraSettings,
    apply_lora,
    is_peft_model,
    load_adapter_weights,
    load_lora,
    merged_copy,
    reference_view,
)
from textenv.testing import make_tiny_lm

pytest.importorskip("peft")

IDS = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]])


def lora_model(targets=None, seed=0):
    model, tok = make_tiny_lm(seed=seed)
    base = copy.deepcopy(model)
    peft_model = apply_lora(model, LoraSettings(r=4, alpha=8, targets=targets))
    with torch.no_grad():  # peft starts B at 0 (adapters are a no-op): give them a value that changes the function
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    return peft_model, base, tok


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_settings_validate_and_parse_cli_targets():
    assert LoraSettings(targets="c_attn, c_proj").targets == ("c_attn", "c_proj")
    for bad in ({"r": 0}, {"alpha": 0}, {"dropout": 1.0}, {"targets": ()}):
        with pytest.raises(ValueError):
            LoraSettings(**bad)


def test_unknown_target_names_the_layers_to_choose_from():
    model, _ = make_tiny_lm()
    with pytest.raises(ValueError, match="do not fit GPT2LMHeadModel"):
        apply_lora(model, LoraSettings(targets=("no_such_proj",)))


def test_only_adapters_train_and_the_model_computes_with_them_in_place():
    peft_model, base, _ = lora_model()
    assert is_peft_model(peft_model)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    inner = peft_model.get_base_model()  # the model passed in, adapters injected
    assert not torch.allclose(logits(inner), logits(base))
    torch.testing.assert_close(logits(inner), logits(peft_model))
    assert apply_lora(peft_model, LoraSettings()) is peft_model  # already a peft model: kept as is
    # The wrapper takes the model's eval mode: restoring "its" mode recursively (as the env's forward does) must not
    # switch dropout on in the model.
    assert not peft_model.training and not any(m.training for m in peft_model.modules())


def test_reference_view_is_the_base_without_a_copy():
    peft_model, base, _ = lora_model()
    ref = reference_view(peft_model)
    torch.testing.assert_close(logits(ref), logits(base))
    assert list(ref.parameters()) == []  # nothing duplicated, nothing for an optimizer to pick up
    ref.eval().requires_grad_(False)  # what a frozen reference gets: the adapters must still train
    assert any(p.requires_grad for p in peft_model.parameters())
    assert not torch.allclose(logits(peft_model), logits(base))  # adapters enabled again after the call
    with pytest.raises(TypeError, match="peft.PeftModel"):
        AdapterDisabledView(base)


def test_adapters_save_alone_and_load_back(tmp_path):
    peft_model, _, _ = lora_model()
    peft_model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_config.json").exists()
    assert not (tmp_path / "model.safetensors").exists()  # the adapters only, not the base weights
    fresh, _ = make_tiny_lm(seed=0)
    loaded = load_lora(fresh, tmp_path)
    torch.testing.assert_close(logits(loaded), logits(peft_model))
    assert any(p.requires_grad for p in loaded.parameters())
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_lora(make_tiny_lm()[0], tmp_path / "missing")


def test_adapter_weights_load_into_a_built_lora_model_in_place(tmp_path):
    peft_model, _, _ = lora_model()
    peft_model.save_pretrained(tmp_path)
    fresh = apply_lora(make_tiny_lm(seed=0)[0], LoraSettings(r=4, alpha=8))  # B = 0: the base function
    assert not torch.allclose(logits(fresh), logits(peft_model))
    load_adapter_weights(fresh, tmp_path)  # resuming a LoRA run: the same object, the saved adapters
    torch.testing.assert_close(logits(fresh), logits(peft_model))
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        load_adapter_weights(fresh, tmp_path / "missing")


def test_fast_decoder_falls_back_for_lora_and_serves_the_merged_model():
    model, _ = make_tiny_lm()
    assert fast_decoder(model) is not None  # plain GPT-2: the fast path
    peft_model, _, _ = lora_model()
    assert fast_decoder(peft_model) is None
    assert fast_decoder(peft_model.get_base_model()) is None  # projections replaced by LoRA layers
    merged = merged_copy(peft_model)
    assert fast_decoder(merged) is not None
    torch.testing.assert_close(logits(merged), logits(peft_model), atol=1e-5, rtol=1e-5)


def test_env_sees_adapters_injected_after_it_cached_a_fast_decoder():
    """The env decodes a plain GPT-2 with its fast decoder; LoRA injected afterwards (in place) must be used from
    the next episode on, never the stale base weights; the reference view must give the base's numbers."""
    from agents.llm.rollout import collect_rollout, sequence_forward

    model, tok = make_tiny_lm()
    base = copy.deepcopy(model)
    env = TextGenVectorEnv(4, model=model, tokenizer=tok, prompts=["the movie was", "this book is"], kl_coef=0,
                           max_new_tokens=5, max_prompt_tokens=4, array_backend="torch")
    collect_rollout(env, seed=0, generator=torch.Generator().manual_seed(0))
    assert env.engine.decoders[id(model)] is not None  # the fast path was in use
    peft_model = apply_lora(model, LoraSettings(r=4, alpha=8))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    gen = torch.Generator().manual_seed(1)
    batch = collect_rollout(env, seed=1, generator=gen, ref_model=reference_view(peft_model))
    assert env.engine.decoders[id(model)] is None  # re-checked at the new episodes: LoRA layers, no fast decoder
    args = (batch.query_ids, batch.query_mask, batch.response_ids, batch.response_mask)
    with torch.no_grad():
        want = sequence_forward(peft_model, *args)[0]
        stale = sequence_forward(base, *args)[0]
    torch.testing.assert_close(batch.old_logprobs, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batch.old_logprobs, stale, atol=1e-3)
    torch.testing.assert_close(batch.ref_logprobs, stale, atol=1e-5, rtol=1e-5)  # view = base weights


def test_env_reference_view_per_token_equals_a_base_copy():
    """An env given the view as its reference (per-token KL, separate KV cache) scores the base model."""
    from agents.llm.rollout import collect_rollout

    peft_model, base, tok = lora_model()
    kwargs = dict(tokenizer=tok, prompts=["the movie was", "this book is"], kl_coef=0.1, max_new_tokens=5,
                  max_prompt_tokens=4, array_backend="torch")
    env = TextGenVectorEnv(4, model=peft_model, ref_model=reference_view(peft_model), **kwargs)
    batch = collect_rollout(env, seed=0, generator=torch.Generator().manual_seed(0))
    twin = TextGenVectorEnv(4, model=peft_model, ref_model=base, **kwargs)
    expected = collect_rollout(twin, seed=0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(batch.response_ids, expected.response_ids)
    torch.testing.assert_close(batch.ref_logprobs, expected.ref_logprobs, atol=1e-5, rtol=1e-5)
    assert float(batch.kl_sum.abs().sum()) > 0  # adapters make the policy differ from its reference


def test_llama_family_lora_falls_back_and_the_merged_model_gets_the_plain_answer():
    """Whatever fast decoder the Llama family has, a LoRA-adapted Llama runs the model's own forward (the adapters
    are in it), and merging gives back what a plain Llama gets."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    plain_has_decoder = fast_decoder(model) is not None
    peft_model = apply_lora(model, LoraSettings(r=2, alpha=4))
    assert peft_model.peft_config["default"].target_modules == {"q_proj", "v_proj"}
    assert fast_decoder(peft_model) is None and fast_decoder(peft_model.get_base_model()) is None
    merged = merged_copy(peft_model)
    assert (fast_decoder(merged) is not None) == plain_has_decoder
    torch.testing.assert_close(logits(merged, IDS % 48), logits(peft_model, IDS % 48), atol=1e-5, rtol=1e-5)


def test_a_reward_model_backbone_takes_adapters_too():
    """What rewardmodels.text.lm_reward calls: LoRA on a bare transformer (no LM head); its view is the frozen
    backbone."""
    model, _ = make_tiny_lm()
    backbone = model.transformer
    before = copy.deepcopy(backbone)
    adapted = apply_lora(backbone, LoraSettings(r=2, alpha=4), task_type="FEATURE_EXTRACTION")
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.fill_(0.3)
        hidden = adapted(input_ids=IDS).last_hidden_state
        base = reference_view(adapted)(input_ids=IDS).last_hidden_state
    torch.testing.assert_close(base, before(input_ids=IDS).last_hidden_state)
    assert not torch.allclose(hidden, base)
