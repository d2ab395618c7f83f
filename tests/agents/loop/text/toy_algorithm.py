"""A toy LLM algorithm as a user would add one: its agent and config in one module, nothing else of the toolkit
touched (``test_run.test_a_new_algorithm_is_one_module_and_one_registry_line`` registers it)."""

from __future__ import annotations

import dataclasses

import torch

from agents.llm.base import LMAgent, LMAgentConfig
from agents.llm.rollout import RolloutBatch


@dataclasses.dataclass
class ToyConfig(LMAgentConfig):
    """REINFORCE settings: nothing beyond the shared ones."""


class ToyAgent(LMAgent):
    """REINFORCE on the env's return (the sum of its per-token rewards), baseline = the batch mean."""

    algo = "toy"
    config_class = ToyConfig
    updates = 0

    def train_on(self, batch: RolloutBatch) -> dict[str, float]:
        returns = batch.env_rewards.sum(-1)
        advantages = returns - returns.mean()

        def loss(mb: RolloutBatch, rows: torch.Tensor):
            logprobs, _, _ = self.policy_forward(mb)
            value = -(advantages[rows] * (logprobs * mb.response_mask).sum(-1)).mean()
            return value, {"toy_loss": value.detach()}

        type(self).updates += 1
        return self.minibatch_updates(batch, 1, 1, loss)
