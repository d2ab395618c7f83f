"""LLM agents on ``TextGen-v0``: one trainer base, one rollout, and an algorithm per module.

- ``base``: ``LMAgent`` / ``LMAgentConfig`` (the learn loop, checkpoints, minibatch updates) for the RL agents.
- ``rollout``: ``collect_rollout`` (whole episodes from the vector env, with the env's per-token rewards: the KL
  penalty is the env's, never recomputed) and ``sequence_forward`` (the training forward).
- ``math`` / ``losses``: pure functions with shapes and paper references (GAE, whitening, KL estimators; PPO, GRPO,
  RLOO, DPO family and KTO losses).
- ``group``: the group baseline shared by GRPO and RLOO (several completions per prompt).
- ``training``: the memory settings every trainer's config has (``lora=`` through ``textenv.lora``, gradient
  checkpointing, bf16 autocast, gradient accumulation) and what makes each take effect.
- ``distributed``: data-parallel training under ``accelerate launch`` (DDP), with no change to a training script.
- ``offline``: what the offline trainers (DPO, KTO) share: pair parsing, encoding, sequence log-probs, the learn loop.
- ``ppo`` (value head, Ouyang et al. 2022), ``grpo`` (Shao et al. 2024), ``rloo`` (Ahmadian et al. 2024),
  ``dpo`` (Rafailov et al. 2023, with IPO and hinge losses), ``kto`` (Ethayarajh et al. 2024).

A new algorithm is one module here and one line in the text run's registry (``agents.loop.text.algorithms``).
"""

from textenv.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "agents.llm.base": ("LMAgent", "LMAgentConfig"),
    "agents.llm.dpo": ("DPOConfig", "DPOTrainer"),
    "agents.llm.grpo": ("GRPOAgent", "GRPOConfig"),
    "agents.llm.kto": ("KTOConfig", "KTOTrainer"),
    "agents.llm.ppo": ("PPOAgent", "PPOConfig"),
    "agents.llm.rloo": ("RLOOAgent", "RLOOConfig"),
    "agents.llm.rollout": ("EnvCapabilityError", "RolloutBatch", "collect_rollout", "sequence_forward"),
    "agents.llm.training": ("TrainingSettings",),
})
