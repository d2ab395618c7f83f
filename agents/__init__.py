"""agents: policies that improve on a learned reward, and the loop that joins them with reward learning.

- ``agents.llm``: LLM agents on ``TextGen-v0`` (PPO with a value head, GRPO, RLOO, DPO family, KTO).
- ``agents.sb3``: any Stable-Baselines3 algorithm, on control envs and on text.
- ``agents.loop``: the one preference loop, its pair sources, presets and run config, and the text RLHF run.
- ``agents.cli``: the ``rlhf-gym`` command.
- ``agents.rundir``: the run directory every training command writes.

The names below are importable from ``agents`` directly; each subpackage loads on first use (``rlhf-gym --help``
stays fast).
"""

from __future__ import annotations

import importlib
from typing import Any

from rewardmodels.moved import install_moved_modules

_EXPORTS = {
    "agents.llm": ("DPOConfig", "DPOTrainer", "GRPOAgent", "GRPOConfig", "LMAgent", "LMAgentConfig", "PPOAgent",
                   "PPOConfig", "RLOOAgent", "RLOOConfig", "RolloutBatch", "collect_rollout",
                   "KTOConfig", "KTOTrainer"),
    "agents.sb3": ("CausalLMPolicy", "LMHandle", "SB3Agent", "SyncTextEnvCallback", "make_sb3_text_model"),
    "agents.loop": ("LoopCallback", "LoopConfig", "PreferenceLoop", "PrefsConfig", "build_loop", "run_prefs"),
    "agents.rundir": ("RunDir",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)

#: Modules of the 0.1 layout and where they live now (importing an old name raises an error naming the new one).
MOVED_MODULES = {
    "agents.base": "agents.llm.base", "agents.rollout": "agents.llm.rollout", "agents.math": "agents.llm.math",
    "agents.losses": "agents.llm.losses", "agents.ppo": "agents.llm.ppo", "agents.grpo": "agents.llm.grpo",
    "agents.rloo": "agents.llm.rloo", "agents.dpo": "agents.llm.dpo",
    "agents.sb3_agents": "agents.sb3.control", "agents.sb3_policy": "agents.sb3.text_policy",
    "agents.sb3_text": "agents.loop.text_improvers",
    "agents.preference_loop": "agents.loop.preference_loop", "agents.control_prefs": "agents.loop.segment_pairs",
    "agents.image_prefs": "agents.loop.frame_pairs", "agents.atari_env": "agents.loop.atari",
    "agents.presets": "agents.loop.presets", "agents.prefs_run": "agents.loop.prefs",
    "agents.text_rlhf": "agents.loop.text_rlhf",
    "agents.commands": "agents.cli", "agents.commands.prefs": "agents.cli.prefs",
    "agents.commands.text": "agents.cli.text", "agents.commands.label": "agents.cli.label",
    "agents.webapp": "rewardmodels.feedback.webapp",
}
install_moved_modules(MOVED_MODULES)


def __getattr__(name: str) -> Any:  # PEP 562: load the subpackage that defines ``name`` on first use
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'agents' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
