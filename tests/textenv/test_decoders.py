"""The hand-written GPT-2 forward (textenv.decoders) against the model's own forward: prefill, cached decoding, the
full-sequence hidden states and their gradients; the engine and the agents' training forward with and without it;
and the models it must refuse."""

from __future__ import annotations

import copy
import inspect

import numpy as np
import pytest
import torch

from agents.llm.rollout import collect_rollout, sequence_forward
from textenv import KeywordReward, TextGenVectorEnv
from textenv.decoders import GPT2Decoder, fast_decoder
from textenv.testing import make_tiny_lm

ATOL = 2e-5  # float32 rounding: the tanh-GELU kernel and the attention kernel differ from the model's in the last bits


def tiny_gpt2(**overrides):
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tokenizer = make_tiny_lm()
    settings = {"n_positions": 64, "n_layer": 2, "n_head": 2, "n_embd": 32, **overrides}
    config = GPT2Config(
        vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **settings
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # a trained-looking model: larger weights than the init, so differences would show
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model, tokenizer


def left_padded(tokenizer, texts):
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


CONFIGS = [
    {},
    {"n_head": 4},
    {"activation_function": "relu"},
    {"scale_attn_by_inverse_layer_idx": True},
    {"scale_attn_weights": False},
]


@pytest.mark.parametrize("overrides", CONFIGS, ids=lambda o: ",".join(o) or "default")
def test_prefill_then_cached_steps_match_the_models_cached_forward(overrides):
    torch.manual_seed(1)
    model, tok = tiny_gpt2(**overrides)
    decoder = fast_decoder(model)
    assert isinstance(decoder, GPT2Decoder)
    ids, mask, pos = left_padded(tok, ["the movie was", "i", "we hated this film so"])
    logits, cache = decoder.prefill(ids, mask, pos)
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    ref_cache = ref[cache_arg]
    torch.testing.assert_close(logits, ref.logits[:, -1], atol=ATOL, rtol=0)
    for t in range(5):
        nxt = torch.randint(3, len(tok), (ids.shape[0], 1))
        mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
        pos = pos[:, -1:] + 1
        logits = decoder.step(nxt, mask.bool()[:, None, None, :], pos, cache)
        with torch.no_grad():
            ref = model(input_ids=nxt, attention_mask=mask, position_ids=pos, use_cache=True, **{cache_arg: ref_cache})
        torch.testing.assert_close(logits, ref.logits[:, -1], atol=ATOL, rtol=0, msg=f"decoding step {t}")
        for mine, theirs in zip(cache.layers, ref_cache.layers, strict=True):
            valid = mask.bool()[:, None, :, None]
            torch.testing.assert_close(mine.keys * valid, theirs.keys * valid, atol=ATOL, rtol=0)
            torch.testing.assert_close(mine.values * valid, theirs.values * valid, atol=ATOL, rtol=0)


def test_hidden_states_logits_and_gradients_match_the_model():
    check_hidden_states_logits_and_gradients(*tiny_gpt2())


def check_hidden_states_logits_and_gradients(model, tok) -> dict[str, torch.Tensor]:
    """The decoder's full-sequence forward against the model's: hidden states, logits and every parameter's gradient
    of a weighted log-likelihood (valid positions of a left-padded batch). Returns the decoder's gradients."""
    decoder = fast_decoder(model)
    assert decoder is not None
    ids, mask, pos = left_padded(tok, ["the movie was good", "i", "this book is not so bad"])
    valid = mask.bool()
    weights = torch.randn(*ids.shape, len(tok))

    def objective(logits):
        return (logits.log_softmax(-1) * weights)[valid].sum()

    hidden = decoder.hidden_states(ids, mask, pos)
    logits = decoder.logits(hidden)
    objective(logits).backward()
    mine = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True)
    objective(out.logits).backward()
    torch.testing.assert_close(hidden[valid], out.hidden_states[-1][valid], atol=ATOL, rtol=0)
    torch.testing.assert_close(logits[valid], out.logits[valid], atol=ATOL, rtol=0)
    assert torch.isfinite(hidden).all()  # padding positions too (they attend to themselves)
    for name, p in model.named_parameters():
        assert mine[name].abs().sum() > 0 or p.grad.abs().sum() == 0, name
        torch.testing.assert_close(mine[name], p.grad, atol=1e-4, rtol=1e-4, msg=name)
    return mine


def test_sequence_forward_is_the_same_with_the_fast_path_and_the_model(monkeypatch):
    check_sequence_forward(*tiny_gpt2(), monkeypatch)


def check_sequence_forward(model, tok, monkeypatch) -> None:
    """The agents' training forward gives the same log-probs, entropies and hidden states with and without the
    fast path."""
    q, qm, _ = left_padded(tok, ["the movie was", "it is"])
    r = torch.tensor([[5, 6, 1, 0], [7, 8, 9, 10]])
    rm = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    fast = sequence_forward(model, q, qm.bool(), r, rm, temperature=0.7, output_hidden=True)
    monkeypatch.setattr("agents.llm.rollout.fast_decoder", lambda m: None)
    slow = sequence_forward(model, q, qm.bool(), r, rm, temperature=0.7, output_hidden=True)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a[rm], b[rm], atol=ATOL, rtol=0)


def test_dropout_in_train_mode_uses_the_model():
    model, tok = tiny_gpt2(resid_pdrop=0.5)
    q, qm, _ = left_padded(tok, ["the movie was"])
    r, rm = torch.tensor([[5, 6]]), torch.ones(1, 2, dtype=torch.bool)
    model.train()
    torch.manual_seed(0)
    a = sequence_forward(model, q, qm.bool(), r, rm)[0]
    torch.manual_seed(1)
    b = sequence_forward(model, q, qm.bool(), r, rm)[0]
    assert not torch.allclose(a, b)  # dropout applied: the model's own forward ran


def env_logits(model, tok, fast: bool, steps: int = 40, update_at: int | None = None):
    env = TextGenVectorEnv(
        8,
        model=model,
        tokenizer=tok,
        prompts=["the movie was", "this book is a", "i", "we hated this film so"],
        reward_fn=KeywordReward(["good"]),
        kl_coef=0.1,
        max_new_tokens=6,
        max_prompt_tokens=8,
        array_backend="torch",
    )
    env.engine.fast_decode = fast
    env.reset(seed=0)
    g = torch.Generator().manual_seed(0)
    out, rewards = [], []
    for t in range(steps):
        if t == update_at:  # an optimizer step between rollouts: the fast path must read the live weights
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1.01)
            env.engine.refresh()
        logits = env.next_token_logits().clone()
        out.append(logits)
        actions = torch.multinomial(torch.softmax(logits, -1), 1, generator=g).squeeze(1)
        rewards.append(torch.as_tensor(env.step(actions)[1]))
    return torch.stack(out), torch.stack(rewards), env


def test_engine_gives_the_same_logits_and_rewards_with_the_fast_path():
    """40 steps of 8 rows with episodes of <= 6 tokens: prefill, decoding, autoreset splices and the reference
    model's KL reward, with one weight update in the middle."""
    model, tok = tiny_gpt2()
    fast, fast_r, env = env_logits(model, tok, fast=True, update_at=20)
    assert all(isinstance(d, GPT2Decoder) for d in env.engine.decoders.values()) and len(env.engine.decoders) == 2
    model, tok = tiny_gpt2()
    slow, slow_r, env = env_logits(model, tok, fast=False, update_at=20)
    assert all(d is None for d in env.engine.decoders.values())
    torch.testing.assert_close(fast, slow, atol=ATOL, rtol=0)
    torch.testing.assert_close(fast_r, slow_r, atol=1e-4, rtol=0)


def tiny_neox():
    """An architecture no decoder serves (GPT-NeoX: parallel attention and MLP, partial rotary)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    _, tok = make_tiny_lm()
    config = GPTNeoXConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    return GPTNeoXForCausalLM(config).eval(), tok


def test_models_without_a_fast_path_are_called_as_usual():
    other, tok = tiny_neox()
    assert fast_decoder(other) is None
    hooked, _ = tiny_gpt2()
    hooked.transformer.h[0].mlp.register_forward_hook(lambda m, i, o: o * 0.5)
    assert fast_decoder(hooked) is None
    assert fast_decoder(tiny_gpt2(add_cross_attention=True)[0]) is None
    assert fast_decoder(torch.nn.Linear(2, 2)) is None
    # another architecture still runs through the engine (the model's own cached forward) and equals the uncached one
    check_engine_runs_the_model(other, tok)


def check_engine_runs_the_model(model, tok) -> None:
    """A model without a fast path runs through the engine on its own forward, and its cached decoding equals the
    uncached one."""
    rows = []
    for use_cache in (True, False):
        env = TextGenVectorEnv(
            4, model=model, tokenizer=tok, prompts=["the movie was", "i"], reward_fn=KeywordReward(["good"]),
            kl_coef=0.0, max_new_tokens=5, max_prompt_tokens=8, array_backend="torch", use_cache=use_cache,
        )  # fmt: skip
        batch = collect_rollout(env, seed=0, generator=torch.Generator().manual_seed(0))
        rows.append(batch.old_logprobs)
        assert all(d is None for d in env.engine.decoders.values())
    torch.testing.assert_close(rows[0], rows[1], atol=1e-5, rtol=0)


def test_a_hook_added_between_rollouts_switches_the_engine_to_the_model():
    model, tok = tiny_gpt2()
    env = TextGenVectorEnv(
        4, model=model, tokenizer=tok, prompts=["the movie was"], kl_coef=0.0, max_new_tokens=3, array_backend="torch"
    )
    env.reset(seed=0)
    env.next_token_logits()
    assert isinstance(next(iter(env.engine.decoders.values())), GPT2Decoder)
    calls = []
    model.transformer.h[1].register_forward_hook(lambda m, i, o: calls.append(1))
    env.reset(seed=1)
    env.next_token_logits()
    env.step(np.full(4, 5))
    env.next_token_logits()
    assert next(iter(env.engine.decoders.values())) is None and len(calls) == 2  # prefill and one decoding step


def test_a_model_once_asked_for_its_hidden_states_keeps_its_fast_path():
    """transformers hangs output-capturing hooks on a model's layers the first time it is called with
    ``output_hidden_states=True``, for good; they only record, so the decoder stays (issue 25: an SB3 policy asking
    for hidden states sent every later env step of the same LM through the slow module stack)."""
    model, tok = tiny_gpt2()
    ids, mask, pos = left_padded(tok, ["the movie was", "i"])
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True)
    assert any(m._forward_hooks for m in model.modules())  # transformers' hooks are in place
    decoder = fast_decoder(model)
    assert isinstance(decoder, GPT2Decoder)
    hidden, cache = decoder.prefill_hidden(ids, mask, pos)
    torch.testing.assert_close(hidden, out.hidden_states[-1][:, -1], atol=ATOL, rtol=0)
    torch.testing.assert_close(decoder.logits(hidden), out.logits[:, -1], atol=ATOL, rtol=0)
    step_mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1).bool()[:, None, None, :]
    nxt, nxt_pos = torch.tensor([[5], [6]]), pos[:, -1:] + 1
    again = copy.deepcopy(cache)  # a second decoding step from the same state
    torch.testing.assert_close(decoder.logits(decoder.step_hidden(nxt, step_mask, nxt_pos, cache)),
                               decoder.step(nxt, step_mask, nxt_pos, again), atol=0, rtol=0)


def test_peft_lora_gpt2_falls_back_to_the_model():
    peft = pytest.importorskip("peft")
    model, _ = tiny_gpt2()
    assert isinstance(fast_decoder(model), GPT2Decoder)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"]))
    assert fast_decoder(lora) is None  # the PeftModel wrapper
    assert fast_decoder(lora.base_model.model) is None  # the wrapped GPT-2: c_attn is a LoRA layer now
