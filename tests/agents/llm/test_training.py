"""agents.llm.training: LoRA in every LLM trainer, gradient checkpointing that recomputes, gradient accumulation that
gives the whole minibatch's gradient, and bf16 refused where it cannot run. Real tiny GPT-2s, real peft."""

import pytest
import torch

from agents.llm import (
    DPOConfig,
    DPOTrainer,
    GRPOAgent,
    GRPOConfig,
    KTOConfig,
    KTOTrainer,
    PPOAgent,
    PPOConfig,
    RLOOAgent,
    RLOOConfig,
)
from agents.llm.training import TrainingSettings, chunk_weights, split_rows
from tests.agents.llm.test_dpo import pairs
from tests.agents.lm_fixtures import make_env, snapshot
from textenv.lora import AdapterDisabledView, LoraSettings, is_peft_model, load_lora
from textenv.testing import make_tiny_lm

pytest.importorskip("peft")
LORA = LoraSettings(r=4, alpha=8)


def split(model):
    """(base weights, adapter weights) of a peft model, as snapshots."""
    base = {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" not in k}
    lora = {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}
    return base, lora


def same(before, model, names_with):
    now = dict(model.named_parameters())
    return all(torch.equal(v, now[k]) for k, v in before.items() if names_with in k or names_with == "")


def test_settings_errors_say_what_to_fix():
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        GRPOConfig(group_size=2, gradient_accumulation_steps=0)
    with pytest.raises(TypeError, match="LoraSettings"):
        DPOConfig(lora=8)
    assert DPOConfig(lora={"r": 2, "alpha": 4.0}).lora == LoraSettings(r=2, alpha=4.0)  # read back from config.json


def test_grpo_with_lora_trains_adapters_against_the_base_and_saves_them(tmp_path):
    env = make_env(num_envs=8, kl_coef=0.0)
    config = GRPOConfig(group_size=4, prompts_per_step=2, learning_rate=3e-2, beta=0.1, lora=LORA)
    agent = GRPOAgent(env, config, run_dir=tmp_path)
    assert is_peft_model(agent.policy) and isinstance(agent.ref_model, AdapterDisabledView)
    assert sum(p.numel() for p in agent.parameters()) < 0.2 * sum(p.numel() for p in agent.policy.parameters())
    base, lora = split(agent.policy)
    agent.learn(3)
    now = dict(agent.policy.named_parameters())
    assert all(torch.equal(v, now[k]) for k, v in base.items())  # the base is frozen
    assert any(not torch.equal(v, now[k]) for k, v in lora.items())  # the adapters moved
    batch = agent.collect()
    assert float(batch.kl_sum.abs().mean()) > 0  # the reference (adapters off) is not the policy any more
    ckpt = tmp_path / "checkpoints" / "last"
    assert (ckpt / "adapter_config.json").exists() and not (ckpt / "model.safetensors").exists()
    loaded = load_lora(make_tiny_lm()[0], ckpt)
    ids = batch.query_ids[:2]
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, agent.policy(input_ids=ids).logits)


@pytest.mark.parametrize("trainer", ["dpo", "kto"])
def test_offline_trainers_with_lora_train_adapters_only(trainer):
    model, tokenizer = make_tiny_lm()
    if trainer == "dpo":
        t = DPOTrainer(model, tokenizer, pairs(16), DPOConfig(learning_rate=3e-2, batch_size=8, lora=LORA))
    else:
        t = KTOTrainer(model, tokenizer, pairs(16), KTOConfig(learning_rate=3e-2, batch_size=8, lora=LORA))
    assert isinstance(t.ref_model, AdapterDisabledView)
    base, lora = split(t.model)
    t.learn()
    assert same(base, t.model, "")
    assert not same(lora, t.model, "lora_")
    assert t.evaluate()["eval/reward_margin"] > 0


def _hooked_calls(module):
    """Count calls of ``module`` with a pre-hook (a recompute stops early once the saved tensors are back, so the
    last module's post-hook may not run again). Any hook also keeps the fast decoder off: the model's own forward."""
    calls = []
    module.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("checkpointing", [False, True])
def test_gradient_checkpointing_recomputes_the_layers_with_dropout_off(checkpointing):
    """Transformers checkpoints a layer only in training mode; the agents train in eval mode (dropout off). With the
    option on, a layer's inner module runs twice per training step (forward + recompute), and the update is the
    same as without it (so dropout stayed off)."""
    results = {}
    for ckpt in (False, checkpointing):
        env = make_env(num_envs=8, kl_coef=0.0)
        agent = GRPOAgent(env, GRPOConfig(group_size=4, prompts_per_step=2, learning_rate=1e-2,
                                          gradient_checkpointing=ckpt))
        batch = agent.collect()
        calls = _hooked_calls(agent.policy.transformer.h[0].mlp)
        agent.train_on(batch)
        assert not agent.policy.training and not agent.policy.transformer.h[0].training
        results[ckpt] = (len(calls), snapshot(agent.policy))
    assert results[False][0] == 1
    if checkpointing:
        assert results[True][0] == 2  # the backward pass recomputed the layer
        for k, v in results[False][1].items():
            torch.testing.assert_close(results[True][1][k], v, atol=1e-6, rtol=1e-5)


def test_checkpointing_keeps_the_fast_decoder_for_rollouts():
    from textenv.decoders import fast_decoder

    env = make_env(num_envs=8, kl_coef=0.0)
    agent = GRPOAgent(env, GRPOConfig(group_size=4, prompts_per_step=2, gradient_checkpointing=True))
    assert fast_decoder(agent.policy) is not None  # no input-grad hook left behind: rollouts stay on the fast path


def _agent(kind, accumulation, aggregation="token-mean"):
    env = make_env(num_envs=8, kl_coef=0.05, max_new_tokens=6)
    common = dict(learning_rate=1e-2, seed=3, gradient_accumulation_steps=accumulation)
    if kind == "grpo":
        return GRPOAgent(env, GRPOConfig(group_size=4, prompts_per_step=2, loss_aggregation=aggregation, **common))
    if kind == "rloo":
        return RLOOAgent(env, RLOOConfig(group_size=4, prompts_per_step=2, **common))
    return PPOAgent(env, PPOConfig(ppo_epochs=1, **common))


def _ragged(batch):
    """``batch`` with responses cut to different lengths (a tiny random LM rarely samples EOS in 6 tokens)."""
    keep = torch.arange(batch.response_mask.shape[1])[None, :] < torch.tensor([6, 2, 5, 1, 3, 6, 4, 2])[:, None]
    mask = batch.response_mask & keep
    cut = batch._replace(response_mask=mask, old_logprobs=batch.old_logprobs * mask,
                         ref_logprobs=batch.ref_logprobs * mask)
    last = (cut.lengths - 1)[:, None]  # the env's rewards of the cut episodes: -beta KL, the score at the new end
    return cut._replace(rewards=(-0.05 * cut.kl).scatter_add(1, last, cut.scores[:, None]) * mask)


def _grads(model):
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    ("kind", "aggregation"), [("grpo", "token-mean"), ("grpo", "sequence-mean"), ("rloo", None), ("ppo", None)]
)
def test_accumulated_gradients_equal_the_whole_minibatch(kind, aggregation):
    """One update in 3 chunks (3, 3 and 2 rows) leaves the gradient of the whole minibatch (compared before Adam,
    whose normalisation would magnify rounding in near-zero gradients)."""
    whole = _agent(kind, 1, aggregation or "token-mean")
    batch = _ragged(whole.collect())
    whole.train_on(batch)
    accumulated = _agent(kind, 3, aggregation or "token-mean")
    accumulated.train_on(batch)
    g1, g3 = _grads(whole.policy), _grads(accumulated.policy)
    assert g1.keys() == g3.keys() and any(float(g.abs().max()) > 1e-4 for g in g1.values())
    for k, v in g1.items():
        torch.testing.assert_close(g3[k], v, atol=1e-6, rtol=1e-4, msg=k)


def test_offline_accumulation_equals_the_whole_minibatch():
    grads = []
    for steps in (1, 3):
        model, tokenizer = make_tiny_lm()
        trainer = DPOTrainer(model, tokenizer, pairs(16), DPOConfig(batch_size=8, gradient_accumulation_steps=steps))
        trainer.update(torch.arange(8))
        grads.append(_grads(model))
    for k, v in grads[0].items():
        torch.testing.assert_close(grads[1][k], v, atol=1e-6, rtol=1e-4, msg=k)


def test_chunk_weights_and_split():
    rows = torch.arange(8)
    assert [len(c) for c in split_rows(rows, 3)] == [3, 3, 2]
    assert [len(c) for c in split_rows(rows[:2], 4)] == [1, 1]
    w = chunk_weights([torch.tensor(6.0), torch.tensor(2.0)], torch.tensor(16.0), world_size=2)
    assert [float(x) for x in w] == [0.75, 0.25]  # the other process holds the other 8 units


def test_bf16_on_cpu_is_refused_at_construction():
    with pytest.raises(ValueError, match="bf16=True needs the model on a CUDA device"):
        GRPOAgent(make_env(num_envs=8), GRPOConfig(group_size=4, prompts_per_step=2, bf16=True))
    model, tokenizer = make_tiny_lm()
    with pytest.raises(ValueError, match="CUDA"):
        DPOTrainer(model, tokenizer, pairs(8), DPOConfig(bf16=True))
    assert TrainingSettings().gradient_accumulation_steps == 1
