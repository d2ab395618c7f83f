"""RLHF for a language model through the one preference loop (``rounds=1``: the offline pipeline).

- ``config``: ``TextRLHFConfig``, every setting of a text run (its loop budgets built as a ``LoopConfig``).
- ``algorithms``: the registry of improvement steps (``TEXT_ALGORITHMS``: PPO / GRPO / RLOO / DPO / KTO / SB3), one
  line per algorithm, and where each takes the run's KL coefficient (the env's reward, or the algorithm's loss).
- ``context``: what an improvement step is handed (policy, reference, pairs, the learned reward, the env factory).
- ``pairs``: completion and dataset pair sources, the LM reward ensemble, DPO's pairs-as-reward.
- ``loop``: ``TextPolicyAgent`` (the loop's ``Agent``) and ``build_text_loop``.
- ``run``: ``run_text_rlhf`` / ``run_text_loop``: the run to its summary, curves, ``policy/`` and ``reward_model/``.
"""

from textenv.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "agents.loop.text.config": ("TextRLHFConfig",),
    "agents.loop.text.loop": ("build_text_loop",),
    "agents.loop.text.run": ("run_text_loop", "run_text_rlhf"),
})
