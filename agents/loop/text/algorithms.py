"""The algorithms of the text run (``rlhf-gym text --algo NAME``): one registry line each.

An entry names the agent class (imported when a run starts, so this module, and ``rlhf-gym --help``, import no
torch), what kind of learner it is, where the run's KL coefficient goes, and its defaults on the default LM. The
improvement step that drives each kind is written once, in ``agents.loop.text.improve``:

* ``rl``: an ``agents.llm.base.LMAgent`` subclass on the KV-cached ``TextGen-v0`` vector env, rewarded by the learned
  reward model (config fields ``learning_rate``, ``iterations``, ``seed``; ``group_size`` and ``prompts_per_step``
  when its config has them; ``reward_model=`` when its constructor takes one);
* ``pairs``: an ``agents.llm.offline.OfflineTrainer`` subclass on the labelled pairs (DPO, KTO), no reward model;
* ``sb3``: an SB3 algorithm (``agents.sb3.text_policy.make_sb3_text_model``: ``ppo`` or ``a2c``) on ``TextGenEnv``;
* ``bon``: best-of-n sampling against the learned reward, no training (iteration k: n = 2^k).

``kl``: the agent-config field that takes ``TextRLHFConfig.kl_coef`` (GRPO's k3 ``beta``, DPO's and KTO's ``beta``);
None puts it where the MDP defines it, in the env's reward (``textenv.kl.KLPenalty``; PPO, RLOO, SB3), which the
agent reads from its rollouts.

A new algorithm is one module (its agent and config) plus one line here, or at run time::

    register_text_algorithm("my-algo", TextAlgorithm("my_package.my_algo:MyAgent", "rl", defaults={...}))
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any

__all__ = ["KINDS", "TEXT_ALGORITHMS", "TextAlgorithm", "register_text_algorithm"]

KINDS = ("rl", "pairs", "sb3", "bon")


@dataclasses.dataclass(frozen=True)
class TextAlgorithm:
    """One registry entry (module docstring)."""

    agent: str | type
    """The agent / trainer class, or ``"module:Class"`` (imported on first use); for ``sb3``, the SB3 algorithm's
    name (``ppo``, ``a2c``)."""
    kind: str
    """``rl``, ``pairs`` or ``sb3`` (module docstring)."""
    kl: str | None = None
    """The agent-config field that takes the run's ``kl_coef``; None = the env's KL penalty."""
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """``TextRLHFConfig`` fields of this algorithm's runs unless given (the demo on the default LM)."""
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Agent-config fields (``sb3``: SB3 keyword arguments and ``n_envs``) unless ``TextRLHFConfig.extra`` sets them."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")

    @property
    def offline(self) -> bool:
        """Learns from the labelled pairs directly, with no reward model (Rafailov et al. 2023)."""
        return self.kind == "pairs"

    def agent_class(self) -> type:
        """The agent class (``rl``, ``pairs``), importing its module the first time."""
        if not isinstance(self.agent, str):
            return self.agent
        module, _, name = self.agent.partition(":")
        return getattr(importlib.import_module(module), name)


# The defaults are the demo's on the default LM (each run finishes in a few minutes on 2 CPU cores); SB3 runs get the
# native PPO budget in tokens (iterations * num_envs * max_new_tokens, agents.loop.text.improve).
TEXT_ALGORITHMS: dict[str, TextAlgorithm] = {
    "ppo": TextAlgorithm("agents.llm.ppo:PPOAgent", "rl", defaults=dict(
        iterations=30, learning_rate=1e-4, kl_coef=0.05, num_envs=32)),
    "grpo": TextAlgorithm("agents.llm.grpo:GRPOAgent", "rl", kl="beta", defaults=dict(
        iterations=40, learning_rate=2e-4, kl_coef=0.04, num_envs=32, group_size=8)),
    "rloo": TextAlgorithm("agents.llm.rloo:RLOOAgent", "rl", defaults=dict(
        iterations=40, learning_rate=2e-4, kl_coef=0.05, num_envs=32, group_size=4)),
    "dpo": TextAlgorithm("agents.llm.dpo:DPOTrainer", "pairs", kl="beta", defaults=dict(
        iterations=2, learning_rate=1e-4, kl_coef=0.1, num_pairs=512, eval_every=10)),
    "kto": TextAlgorithm("agents.llm.kto:KTOTrainer", "pairs", kl="beta", defaults=dict(
        iterations=2, learning_rate=1e-4, kl_coef=0.1, num_pairs=512, eval_every=10)),
    "bon": TextAlgorithm("best-of-n", "bon", defaults=dict(iterations=6, eval_every=1)),
    "sb3-ppo": TextAlgorithm("ppo", "sb3", defaults=dict(
        iterations=40, learning_rate=1e-4, kl_coef=0.05, num_envs=32),
        settings=dict(n_envs=8, n_steps=64, batch_size=128, n_epochs=4, ent_coef=0.0)),
    "sb3-a2c": TextAlgorithm("a2c", "sb3", defaults=dict(
        iterations=40, learning_rate=1e-4, kl_coef=0.05, num_envs=32),
        settings=dict(n_envs=8, n_steps=16, ent_coef=0.0)),
}


def register_text_algorithm(name: str, algorithm: TextAlgorithm) -> None:
    """Make ``algorithm`` available as ``TextRLHFConfig(algo=name)`` and ``rlhf-gym text --algo name`` (in this
    process)."""
    if not isinstance(algorithm, TextAlgorithm):
        raise TypeError(f"register a TextAlgorithm, got {type(algorithm).__name__}")
    TEXT_ALGORITHMS[name] = algorithm
