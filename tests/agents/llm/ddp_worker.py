"""The training run of ``test_distributed.py``: launched with ``accelerate launch --num_processes 2 --cpu`` (each
process trains on its share) or called in one process (the whole batch); writes the parameters it ends with.

``python -m tests.agents.llm.ddp_worker OUT`` (or through accelerate) reads ``OUT/batch.pt`` (a GRPO rollout of
``GROUPS`` groups) and writes ``OUT/<run>_rank<r>.pt`` for the runs ``dpo``, ``grpo``, ``grpo_learn`` and ``rm`` (the
LM reward model; ``OUT/rm_log_rank<r>.pt``: its logged metrics).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from agents.llm import DPOConfig, DPOTrainer, GRPOAgent, GRPOConfig, RolloutBatch
from agents.llm.distributed import data_parallel
from rewardmodels.text.lm_reward import train_reward_model
from tests.agents.llm.test_dpo import pairs
from tests.agents.lm_fixtures import make_env
from tests.rewardmodels.text.test_lm_reward import _good_rule_pairs, _rm
from textenv.testing import make_tiny_lm

GROUPS, GROUP_SIZE = 4, 4


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def run(out: Path) -> None:
    dp = data_parallel()
    rank, world = dp.rank, dp.world_size
    # Accumulation in the multi-process run only: it must give the same update too.
    steps = 2 if dp.active else 1
    model, tokenizer = make_tiny_lm()
    # adam_eps well above the rounding noise of near-zero gradients, which Adam's g / sqrt(v) would blow up to
    # full-size steps in opposite directions between the split and the whole batch.
    config = DPOConfig(learning_rate=1e-2, adam_eps=1e-4, batch_size=8, gradient_accumulation_steps=steps)
    DPOTrainer(model, tokenizer, pairs(24), config).learn()  # 3 steps of 8 pairs, each split over the processes
    torch.save(params(model), out / f"dpo_rank{rank}.pt")

    full = RolloutBatch(*torch.load(out / "batch.pt", weights_only=False))
    local_groups = GROUPS // world
    rows = torch.arange(rank * local_groups * GROUP_SIZE, (rank + 1) * local_groups * GROUP_SIZE)
    env = make_env(num_envs=len(rows), kl_coef=0.0)
    grpo = GRPOConfig(group_size=GROUP_SIZE, prompts_per_step=local_groups, num_updates=2, learning_rate=1e-2,
                      beta=0.1, gradient_accumulation_steps=steps)
    agent = GRPOAgent(env, grpo)
    for _ in range(2):  # 2 rollouts' worth of updates (old log-probs stale on the second: the ratio clips)
        agent.train_on(full.select(rows))
    torch.save(params(agent.policy), out / f"grpo_rank{rank}.pt")

    agent.learn(2)  # each process rolls out its own groups; DDP keeps the replicas equal
    torch.save(params(agent.policy), out / f"grpo_learn_rank{rank}.pt")

    rm = _rm()
    for module in rm.modules():  # train() turns dropout on, and each process draws its own masks
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    prefs = _good_rule_pairs(17, seed=0)  # minibatches of 8, 8 and 1: the last leaves one process without a pair
    prefs.labels[3] = 0.5  # a tie
    logged: list[dict[str, float]] = []
    train_reward_model(rm, prefs, epochs=2, lr=3e-3, batch_size=8, margin=0.2, center_coef=0.01,
                       log_fn=lambda step, m: logged.append(m))
    torch.save(params(rm), out / f"rm_rank{rank}.pt")
    torch.save(logged, out / f"rm_log_rank{rank}.pt")


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(Path(sys.argv[1]))
