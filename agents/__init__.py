"""agents: policies that improve on a learned reward, and the loop that joins them with reward learning.

- ``agents.llm``: LLM agents on ``TextGen-v0`` (PPO with a value head, GRPO, RLOO, DPO family, KTO).
- ``agents.sb3``: any Stable-Baselines3 algorithm, on control envs and on text.
- ``agents.loop``: the one preference loop and its run config; ``loop.control`` (segments of Gymnasium envs, SB3
  agents, the paper's presets) and ``loop.text`` (completions of an LM, LLM agents) plug into it.
- ``agents.cli``: the ``rlhf-gym`` command.
- ``agents.rundir``: the run directory every training command writes.

The names below are importable from ``agents`` directly; each subpackage loads on first use (``rlhf-gym --help``
stays fast).
"""

from textenv.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "agents.llm": ("DPOConfig", "DPOTrainer", "GRPOAgent", "GRPOConfig", "LMAgent", "LMAgentConfig", "PPOAgent",
                   "PPOConfig", "RLOOAgent", "RLOOConfig", "RolloutBatch", "collect_rollout", "KTOConfig",
                   "KTOTrainer"),
    "agents.sb3": ("CausalLMPolicy", "LMHandle", "SB3Agent", "SyncTextEnvCallback", "make_sb3_text_model"),
    "agents.loop": ("LoopCallback", "LoopConfig", "PreferenceLoop", "PrefsConfig", "TextRLHFConfig", "build_loop",
                    "run_prefs", "run_text_rlhf"),
    "agents.rundir": ("RunDir",),
})
