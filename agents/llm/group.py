"""The group baseline shared by GRPO and RLOO: several responses per prompt, each judged against its group.

Every iteration draws ``prompts_per_step`` prompts and samples ``group_size`` responses to each, in ONE batched
rollout of a vector env with ``num_envs = prompts_per_step * group_size`` rows: rows ``g*G .. g*G+G-1`` share prompt
``g``. The baseline of a response comes from the other responses of its group (GRPO: the group's mean and std, Shao
et al. 2024; RLOO: the mean of the other ``G - 1``, Ahmadian et al. 2024), so neither needs a critic.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence

import numpy as np
import torch

from agents.llm.base import LMAgent, LMAgentConfig
from agents.llm.distributed import data_parallel
from agents.llm.losses import GroupSizeError
from agents.llm.rollout import RolloutBatch, collect_rollout, env_prompts
from agents.rundir import RunDir
from textenv.checks import check

logger = logging.getLogger(__name__)


def check_group_size(group_size: int, algo: str) -> None:
    if group_size < 2:
        raise GroupSizeError(
            f"group_size={group_size}: {algo} compares each response with the others sampled for the same prompt, so "
            "a group of one has no baseline and zero advantage (nothing is learnt). Use group_size >= 2 "
            "(4 to 16 is typical)."
        )


@dataclasses.dataclass
class GroupConfig(LMAgentConfig):
    """Settings of agents that sample a group of responses per prompt (GRPO, RLOO)."""

    group_size: int = 8
    """G, responses sampled per prompt; >= 2 (each response is judged against its group)."""
    prompts_per_step: int = 4
    """Distinct prompts per iteration; the env must have ``prompts_per_step * group_size`` rows."""
    clip_range: float = 0.2
    """Clip epsilon of the policy ratio; it binds only when a rollout is reused for more than one update."""
    num_minibatches: int = 1
    """Minibatches per pass over a rollout; must divide ``batch_size``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_group_size(self.group_size, type(self).__name__.removesuffix("Config"))
        check(self.prompts_per_step >= 1, f"prompts_per_step must be >= 1, got {self.prompts_per_step}")
        check(self.clip_range > 0, f"clip_range must be > 0, got {self.clip_range}")
        check(
            self.num_minibatches >= 1 and self.batch_size % self.num_minibatches == 0,
            f"num_minibatches={self.num_minibatches} must divide prompts_per_step * group_size = {self.batch_size}",
        )

    @property
    def batch_size(self) -> int:
        """Rows per rollout: ``prompts_per_step * group_size`` (what ``num_envs`` must be)."""
        return self.prompts_per_step * self.group_size


class GroupAgent(LMAgent):
    """Collects ``prompts_per_step`` groups of ``group_size`` responses, every group on one prompt.

    ``env`` needs ``num_envs = prompts_per_step * group_size`` rows (``array_backend="torch"``); ``prompts`` (default:
    the env's prompt list) is what groups are drawn from; ``config`` defaults to ``config_class()``.
    """

    config: GroupConfig
    config_class: type[GroupConfig] = GroupConfig

    def __init__(
        self,
        env,
        config: GroupConfig | None = None,
        run_dir: RunDir | str | os.PathLike | None = None,
        prompts: Sequence[str] | None = None,
        ref_model: torch.nn.Module | None = None,
    ):
        config = config if config is not None else self.config_class()
        if env.num_envs != config.batch_size:
            raise ValueError(
                f"the env has num_envs={env.num_envs} rows but prompts_per_step * group_size = "
                f"{config.prompts_per_step} * {config.group_size} = {config.batch_size}; build the env with "
                f"num_envs={config.batch_size}"
            )
        self.multi_turn = bool(getattr(env, "multi_turn", False))  # groups share a task: an environment seed
        prompts = list(prompts) if prompts is not None else env_prompts(env)
        if self.multi_turn and prompts:
            raise ValueError("a multi-turn env's environment gives the prompts: do not pass prompts=")
        if not prompts and not self.multi_turn:
            raise ValueError("no prompts: pass prompts=[...] or build the env with prompts")
        self.prompts = prompts
        if prompts and len(prompts) < config.prompts_per_step:  # a small prompt set: some prompts get two groups
            logger.warning("%d prompts for %d groups per step: prompts are drawn with replacement (give more prompts, "
                           "or fewer rows: num_envs = prompts_per_step * group_size)", len(prompts),
                           config.prompts_per_step)
        # Under a multi-process launch each process draws its own groups (rank 0: the one-process stream).
        self.prompt_rng = np.random.default_rng(config.seed + data_parallel().rank)
        super().__init__(env, config, run_dir, ref_model)

    def collect(self) -> RolloutBatch:
        cfg = self.config
        if self.multi_turn:  # group g = rows g*G .. g*G+G-1 on one task of the environment (one seed)
            seeds = self.prompt_rng.integers(2**31, size=cfg.prompts_per_step)
            return collect_rollout(self.env, seed=self._reset_seed(), generator=self.generator,
                                   ref_model=self._batched_ref,
                                   environment_seeds=[int(s) for s in seeds for _ in range(cfg.group_size)])
        few = len(self.prompts) < cfg.prompts_per_step
        chosen = self.prompt_rng.choice(len(self.prompts), size=cfg.prompts_per_step, replace=few)
        rows = [self.prompts[i] for i in chosen for _ in range(cfg.group_size)]  # group g = rows g*G .. g*G+G-1
        return collect_rollout(
            self.env, prompts=rows, seed=self._reset_seed(), generator=self.generator, ref_model=self._batched_ref
        )

    def group_metrics(self, scores: torch.Tensor) -> dict[str, float]:
        groups = scores.view(-1, self.config.group_size)
        return {
            "train/group_score_std": float(groups.std(1).mean()),
            "train/zero_std_groups": float((groups.std(1) < 1e-6).float().mean()),
        }
