import json

import pytest
import torch
from torch import nn

from agents.llm.base import (
    EnvCapabilityError,
    LMAgent,
    LMAgentConfig,
    NonFiniteLossError,
    collect_rollout,
    save_checkpoint,
)
from tests.agents.lm_fixtures import changed, make_env, snapshot


def test_agent_rejects_a_non_textgen_env():
    with pytest.raises(EnvCapabilityError, match="TextGenVectorEnv"):
        LMAgent(object(), LMAgentConfig())


def test_config_validation_says_how_to_fix():
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        LMAgentConfig(learning_rate=0)
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        LMAgentConfig(iterations=0)


def test_save_checkpoint_replaces_atomically(tmp_path):
    env = make_env(num_envs=1)
    target = tmp_path / "last"
    save_checkpoint(target, env.policy, env.tokenizer, {}, {"iteration": 1})
    save_checkpoint(target, env.policy, env.tokenizer, {}, {"iteration": 2})
    assert json.loads((target / "trainer_state.json").read_text())["iteration"] == 2
    assert (target / "model.safetensors").exists() and (target / "config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]  # no temporary leftovers


class Unsaveable(nn.Module):
    def state_dict(self, *args, **kwargs):
        raise RuntimeError("disk full")


def test_a_failed_checkpoint_leaves_the_previous_one_whole(tmp_path):
    env = make_env(num_envs=1)
    target = tmp_path / "last"
    save_checkpoint(target, env.policy, env.tokenizer, {}, {"iteration": 1})
    saved = (target / "model.safetensors").read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(target, env.policy, env.tokenizer, {"head": Unsaveable()}, {"iteration": 2})
    assert json.loads((target / "trainer_state.json").read_text())["iteration"] == 1
    assert (target / "model.safetensors").read_bytes() == saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_minibatch_updates_visit_every_row_once_per_epoch_and_average_the_metrics():
    env = make_env(num_envs=4)
    agent = LMAgent(env, LMAgentConfig(learning_rate=1e-2))
    batch = collect_rollout(env, seed=0)
    before = snapshot(env.policy)
    seen = []

    def minibatch_loss(mb, rows):
        assert mb.prompts == [batch.prompts[i] for i in rows.tolist()]  # the minibatch is those rows of the batch
        seen.append(sorted(rows.tolist()))
        logprobs, _, _ = agent.policy_forward(mb)
        return -(logprobs * mb.response_mask).sum() / mb.response_mask.sum(), {"step": float(len(seen))}

    metrics = agent.minibatch_updates(batch, epochs=3, num_minibatches=2, minibatch_loss=minibatch_loss)
    assert len(seen) == 6 and all(len(rows) == 2 for rows in seen)
    assert all(sorted(seen[2 * e] + seen[2 * e + 1]) == [0, 1, 2, 3] for e in range(3))
    assert metrics["losses/step"] == pytest.approx(3.5)  # mean of 1..6
    assert metrics["losses/loss"] > 0 and metrics["losses/grad_norm"] > 0
    assert changed(before, env.policy)


def test_minibatch_updates_refuse_a_nan_loss_before_the_step():
    env = make_env(num_envs=2)
    agent = LMAgent(env, LMAgentConfig())
    batch = collect_rollout(env, seed=0)
    before = snapshot(env.policy)

    def nan_loss(mb, rows):
        logprobs, _, _ = agent.policy_forward(mb)
        return logprobs.sum() * torch.tensor(float("nan")), {}

    with pytest.raises(NonFiniteLossError, match="the LM loss is nan"):
        agent.minibatch_updates(batch, epochs=1, num_minibatches=1, minibatch_loss=nan_loss)
    assert not changed(before, env.policy)
