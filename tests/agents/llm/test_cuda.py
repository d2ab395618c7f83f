"""GPU readiness (``pytest -m cuda``; skipped without a CUDA device, see tests/conftest.py): the env, the fast
decoders, every LLM trainer's step (with bf16 autocast and gradient checkpointing), and LoRA, on a real GPU."""

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
    collect_rollout,
    sequence_forward,
)
from tests.agents.llm.test_dpo import pairs
from tests.agents.lm_fixtures import PROMPTS, changed, keyword_reward, snapshot
from textenv import TextGenVectorEnv
from textenv.decoders import fast_decoder
from textenv.lora import LoraSettings, reference_view
from textenv.testing import make_tiny_lm

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")


def cuda_env(num_envs=8, kl_coef=0.0, model=None, tokenizer=None, ref_model="copy"):
    if model is None:
        model, tokenizer = make_tiny_lm(device=CUDA)
    return TextGenVectorEnv(num_envs, model=model, tokenizer=tokenizer, prompts=PROMPTS, reward_fn=keyword_reward(),
                            kl_coef=kl_coef, max_new_tokens=6, max_prompt_tokens=4, array_backend="torch",
                            device=CUDA, ref_model=ref_model)


def test_env_rollout_stays_on_the_gpu_and_matches_the_training_forward():
    env = cuda_env(kl_coef=0.05)
    batch = collect_rollout(env, seed=0, generator=torch.Generator(device=CUDA).manual_seed(0))
    assert batch.response_ids.device.type == "cuda" and batch.old_logprobs.device.type == "cuda"
    with torch.no_grad():
        again = sequence_forward(env.policy, *batch[:4])[0]
    torch.testing.assert_close(batch.old_logprobs, again, atol=1e-4, rtol=1e-4)


def test_fast_decoder_matches_the_model_on_the_gpu():
    model, _ = make_tiny_lm(device=CUDA)
    decoder = fast_decoder(model)
    assert decoder is not None
    ids = torch.randint(3, 40, (4, 9), device=CUDA)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        got = decoder.logits(decoder.hidden_states(ids, mask, pos))
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("algo", ["ppo", "grpo", "rloo"])
def test_each_rl_agent_steps_on_the_gpu(algo, bf16):
    env = cuda_env(kl_coef=0.05)
    before = snapshot(env.policy)
    common = dict(learning_rate=1e-3, bf16=bf16, gradient_checkpointing=bf16, gradient_accumulation_steps=2)
    if algo == "ppo":
        agent = PPOAgent(env, PPOConfig(ppo_epochs=1, **common))
    elif algo == "grpo":
        agent = GRPOAgent(env, GRPOConfig(group_size=4, prompts_per_step=2, **common))
    else:
        agent = RLOOAgent(env, RLOOConfig(group_size=4, prompts_per_step=2, **common))
    agent.learn(2)
    assert changed(before, env.policy)
    assert all(torch.isfinite(p).all() for p in env.policy.parameters())
    assert torch.isfinite(torch.tensor(agent.last_metrics["losses/loss"]))


@pytest.mark.parametrize("trainer", ["dpo", "kto"])
def test_each_offline_trainer_steps_on_the_gpu_in_bf16(trainer):
    model, tokenizer = make_tiny_lm(device=CUDA)
    before = snapshot(model)
    cls, cfg = (DPOTrainer, DPOConfig) if trainer == "dpo" else (KTOTrainer, KTOConfig)
    t = cls(model, tokenizer, pairs(16), cfg(learning_rate=1e-3, batch_size=8, bf16=True))
    t.learn()
    assert changed(before, model)
    assert t.evaluate()["eval/reward_margin"] == t.evaluate()["eval/reward_margin"]  # finite, not NaN


def test_lora_grpo_on_the_gpu_trains_adapters_against_the_base():
    model, tokenizer = make_tiny_lm(device=CUDA)
    env = cuda_env(model=model, tokenizer=tokenizer)
    agent = GRPOAgent(env, GRPOConfig(group_size=4, prompts_per_step=2, learning_rate=3e-2,
                                      lora=LoraSettings(r=4, alpha=8), bf16=True))
    base = {k: v.clone() for k, v in agent.policy.named_parameters() if "lora_" not in k}
    agent.learn(2)
    now = dict(agent.policy.named_parameters())
    assert all(torch.equal(v, now[k]) for k, v in base.items())
    ids = torch.randint(3, 40, (2, 6), device=CUDA)
    with torch.no_grad():
        ref = reference_view(agent.policy)(input_ids=ids).logits
        pol = agent.policy(input_ids=ids).logits
    assert not torch.allclose(ref, pol)  # adapters moved; the view is the base


def test_env_with_a_lora_policy_and_its_view_as_reference_on_the_gpu():
    from textenv.lora import apply_lora

    model, tokenizer = make_tiny_lm(device=CUDA)
    policy = apply_lora(model, LoraSettings(r=4, alpha=8))
    env = cuda_env(kl_coef=0.05, model=policy, tokenizer=tokenizer, ref_model=reference_view(policy))
    batch = collect_rollout(env, seed=0, generator=torch.Generator(device=CUDA).manual_seed(0))
    torch.testing.assert_close(batch.ref_logprobs, batch.old_logprobs, atol=1e-4, rtol=1e-4)  # B = 0 at the start
