"""LLM agents on ``TextGen-v0``: one trainer base, one rollout, and an algorithm per module.

- ``base``: ``LMAgent`` / ``LMAgentConfig`` (the learn loop, checkpoints, minibatch updates) for the RL agents.
- ``rollout``: ``collect_rollout`` (whole episodes from the vector env, no second forward for the KL term) and
  ``sequence_forward`` (the training forward).
- ``math`` / ``losses``: pure functions with shapes and paper references (GAE, whitening, KL estimators; PPO, GRPO,
  RLOO, DPO family and KTO losses).
- ``group``: the group baseline shared by GRPO and RLOO (several completions per prompt).
- ``training``: the memory settings every trainer's config has (``lora=`` through ``textenv.lora``, gradient
  checkpointing, bf16 autocast, gradient accumulation) and what makes each take effect.
- ``distributed``: data-parallel training under ``accelerate launch`` (DDP), with no change to a training script.
- ``offline``: what the offline trainers (DPO, KTO) share: pair parsing, encoding, sequence log-probs, the learn loop.
- ``ppo`` (value head, Ouyang et al. 2022), ``grpo`` (Shao et al. 2024), ``rloo`` (Ahmadian et al. 2024),
  ``dpo`` (Rafailov et al. 2023, with IPO and hinge losses), ``kto`` (Ethayarajh et al. 2024).
"""

from agents.llm.base import LMAgent, LMAgentConfig
from agents.llm.dpo import DPOConfig, DPOTrainer
from agents.llm.grpo import GRPOAgent, GRPOConfig
from agents.llm.kto import KTOConfig, KTOTrainer
from agents.llm.ppo import PPOAgent, PPOConfig
from agents.llm.rloo import RLOOAgent, RLOOConfig
from agents.llm.rollout import EnvCapabilityError, RolloutBatch, collect_rollout, sequence_forward
from agents.llm.training import TrainingSettings

__all__ = [
    "DPOConfig", "DPOTrainer", "EnvCapabilityError", "GRPOAgent", "GRPOConfig", "KTOConfig", "KTOTrainer", "LMAgent",
    "LMAgentConfig", "PPOAgent", "PPOConfig", "RLOOAgent", "RLOOConfig", "RolloutBatch", "TrainingSettings",
    "collect_rollout", "sequence_forward",
]
