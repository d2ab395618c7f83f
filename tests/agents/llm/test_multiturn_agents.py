"""Agents on multi-turn TextGen-v0: the environment's tokens are read but never trained on, and GRPO, PPO and SB3 PPO
learn a two-turn task whose second reward depends on the environment's reply (textenv.environments.reviews)."""

import numpy as np
import pytest
import torch

from agents.llm.grpo import GRPOAgent, GRPOConfig
from agents.llm.ppo import PPOAgent, PPOConfig
from agents.llm.rloo import RLOOAgent, RLOOConfig
from textenv import TextGenVectorEnv
from textenv.environments import SecondOpinion, TurnEnvironment
from textenv.sampling import sample_tokens
from textenv.testing import make_tiny_lm

torch.set_num_threads(1)


class Echo(TurnEnvironment):
    """Three turns; replies "it was"; reward 1 for a turn that says "good"."""

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.k = 0
        return "the movie was", {}

    def step(self, action):
        self.k += 1
        return "it was", float("good" in action.split()), self.k >= 3, False, {}


def tiny_env(n=8, **extra):
    lm, tok = make_tiny_lm()
    return TextGenVectorEnv(n, model=lm, tokenizer=tok, environment=Echo, kl_coef=0.05, max_new_tokens=24,
                            max_prompt_tokens=6, max_turn_tokens=4, array_backend="torch", **extra)


AGENTS = [
    (PPOAgent, lambda: PPOConfig(num_minibatches=2)),
    (GRPOAgent, lambda: GRPOConfig(group_size=4, prompts_per_step=2)),
    (RLOOAgent, lambda: RLOOConfig(group_size=4, prompts_per_step=2)),
]


@pytest.mark.parametrize("agent_class,config", AGENTS, ids=["ppo", "grpo", "rloo"])
def test_the_batch_holds_the_replies_and_training_reads_them_as_sampling_did(agent_class, config):
    agent = agent_class(tiny_env(), config())
    batch = agent.collect()
    ctx = batch.context_mask
    assert ctx is not None and ctx.any() and not (ctx & batch.response_mask).any()
    reply = agent.env.tokenizer("it was", add_special_tokens=False)["input_ids"]
    assert batch.response_ids[0][ctx[0]].tolist()[: len(reply)] == reply  # the environment's tokens, not padding
    with torch.no_grad():
        logprobs, _, _ = agent.policy_forward(batch)
    # The training forward reads the conversation the policy sampled from, replies included.
    torch.testing.assert_close(logprobs * batch.response_mask, batch.old_logprobs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("agent_class,config", AGENTS, ids=["ppo", "grpo", "rloo"])
def test_no_gradient_reaches_the_log_probs_of_the_environments_tokens(agent_class, config):
    agent = agent_class(tiny_env(), config())
    batch = agent.collect()
    seen: list[torch.Tensor] = []
    forward = agent.policy_forward

    def recording(b, *args, **kwargs):
        logprobs, entropy, hidden = forward(b, *args, **kwargs)
        if logprobs.requires_grad:
            logprobs.retain_grad()
            seen.append((logprobs, b.context_mask))
        return logprobs, entropy, hidden

    agent.policy_forward = recording
    before = [p.detach().clone() for p in agent.policy.parameters()]
    agent.train_on(batch)
    assert seen, "the loss never ran a forward with gradients"
    for logprobs, ctx in seen:
        assert logprobs.grad is not None
        assert (logprobs.grad[ctx] == 0).all()  # the environment's tokens: no loss, no KL
        assert logprobs.grad[~ctx].abs().sum() > 0  # the policy's tokens are trained on
    assert any(not torch.equal(a, p) for a, p in zip(before, agent.policy.parameters(), strict=True))


# ------------------------------------------------------------------ learning a task that needs the reply


KW = dict(environment=SecondOpinion, max_new_tokens=40, max_prompt_tokens=16, max_turn_tokens=16)
THRESHOLD = 0.3  # the untrained default LM scores about 0.05 (and any policy that ignores the reply 0 in expectation)


def evaluate(lm, tok, seed: int) -> tuple[float, float]:
    """Mean reward over 64 fresh episodes, when the sister loved it and when she hated it."""
    env = TextGenVectorEnv(64, model=lm, tokenizer=tok, kl_coef=0.0, ref_model=None, array_backend="torch", **KW)
    env.reset(seed=10_000 + seed)
    scores = env.play(torch.Generator().manual_seed(seed), sample_tokens).scores
    sides = np.array([e.env.side for e in env.engine.conv.envs])
    return float(scores[sides > 0].mean()), float(scores[sides < 0].mean())


def learned(train, seed: int = 0) -> tuple[tuple[float, float], tuple[float, float]]:
    from textenv.default_lm import load_default_lm

    lm, tok = load_default_lm()
    torch.manual_seed(seed)
    before = evaluate(lm, tok, seed)
    train(lm, tok, seed)
    return before, evaluate(lm, tok, seed)


def assert_reads_the_reply(before, after):
    assert np.mean(before) < THRESHOLD / 2
    # Both sides improve: the policy agrees with a sister who loved it AND with one who hated it, which a policy that
    # does not read her reply cannot do.
    assert min(after) > THRESHOLD, (before, after)


@pytest.mark.slow
def test_grpo_learns_to_side_with_the_second_opinion():
    def train(lm, tok, seed):
        env = TextGenVectorEnv(32, model=lm, tokenizer=tok, kl_coef=0.0, array_backend="torch", **KW)
        GRPOAgent(env, GRPOConfig(group_size=8, prompts_per_step=4, learning_rate=2e-4, seed=seed)).learn(30)

    assert_reads_the_reply(*learned(train))


@pytest.mark.slow
def test_ppo_learns_to_side_with_the_second_opinion():
    def train(lm, tok, seed):
        env = TextGenVectorEnv(32, model=lm, tokenizer=tok, kl_coef=0.05, array_backend="torch", **KW)
        PPOAgent(env, PPOConfig(learning_rate=3e-4, seed=seed)).learn(30)

    assert_reads_the_reply(*learned(train))


@pytest.mark.slow
def test_sb3_ppo_learns_to_side_with_the_second_opinion():
    from agents.sb3.text_policy import SyncTextEnvCallback, make_sb3_text_model
    from agents.sb3.text_vec_env import TextGenSB3VecEnv

    def train(lm, tok, seed):
        venv = TextGenSB3VecEnv(TextGenVectorEnv(8, model=lm, tokenizer=tok, kl_coef=0.05,
                                                 autoreset_mode="SameStep", **KW))
        venv.seed(seed)
        model = make_sb3_text_model("ppo", venv, n_steps=64, batch_size=128, n_epochs=4, ent_coef=0.0,
                                    learning_rate=3e-4, gamma=1.0, gae_lambda=0.95, seed=seed)
        model.learn(10 * 512, callback=SyncTextEnvCallback())

    assert_reads_the_reply(*learned(train))
