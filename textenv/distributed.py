"""Data-parallel training of the LLM trainers and the LM reward model on ``accelerate`` (DDP), with no code change
in the training script.

Launched with ``accelerate launch --multi_gpu --num_processes N train.py`` (on CPU:
``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N --num_machines 1 --mixed_precision no
--dynamo_backend no train.py``, N gloo processes; accelerate's ``--cpu`` flag alone starts ONE process), every process
builds its own env and agent, on its own device (``data_parallel().device``). The RL agents (PPO, GRPO, RLOO) then
roll out their own share of the batch (seeds offset by the process rank, so the shares differ); the offline trainers
(DPO, KTO) take every ``N``-th row of each global minibatch (all processes shuffle alike). Gradients are averaged by
DDP (``Accelerator.prepare_model``); each process weights its loss by its share of the global minibatch's loss units
(``agents.llm.training.chunk_weights``), so N processes compute the update of one process on the combined batch.
The LM reward model's trainer (``rewardmodels.text.lm_reward.train_reward_model``) shards each minibatch of pairs alike.
Only the main process writes the run directory and checkpoints.

Without a launcher (``WORLD_SIZE`` unset or 1) nothing here touches ``accelerate`` and training is unchanged.
FSDP and DeepSpeed configurations are refused with an error: the env samples with the full, unsharded policy.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterable, Iterator

import torch
from torch import nn


class DataParallel:
    """The process group a trainer runs in: rank, world size, and DDP wrapping through ``accelerate``."""

    def __init__(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.accelerator = None
        self.rank = 0
        if self.world_size > 1:
            try:
                from accelerate import Accelerator
            except ImportError as exc:
                raise ImportError(
                    "WORLD_SIZE > 1 (a multi-process launch) needs accelerate: pip install 'rlhf-gym[distributed]'"
                ) from exc
            self.accelerator = Accelerator()
            if self.accelerator.num_processes != self.world_size:
                raise RuntimeError(
                    f"{self.world_size} processes were launched (WORLD_SIZE) but accelerate sees "
                    f"{self.accelerator.num_processes}: on a machine without GPUs set ACCELERATE_USE_CPU=1 "
                    "(accelerate's --cpu flag alone starts one process unless MPI is configured)"
                )
            kind = str(self.accelerator.distributed_type).rsplit(".", 1)[-1]
            if kind in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
                raise NotImplementedError(
                    f"accelerate is configured for {kind}; the LLM trainers run data-parallel (DDP) only: the env "
                    "samples with the policy's full parameters, which sharding splits. Launch with --multi_gpu "
                    "(and LoRA or gradient checkpointing to save memory)"
                )
            self.rank = self.accelerator.process_index

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """Where this process's model belongs (``cuda:<local rank>`` on GPUs, else CPU)."""
        return self.accelerator.device if self.accelerator is not None else torch.device("cpu")

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` wrapped for data-parallel training (DDP via accelerate), or ``module`` itself in one process.
        The wrapper shares the module's parameters; it is only needed for the forwards whose gradients train."""
        if not self.active or not any(p.requires_grad for p in module.parameters()):
            return module
        return self.accelerator.prepare_model(module, device_placement=False)

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` summed over all processes (itself in one process)."""
        return self.accelerator.reduce(value.clone(), reduction="sum") if self.active else value

    @contextlib.contextmanager
    def no_sync(self, modules: Iterable[nn.Module], skip: bool) -> Iterator[None]:
        """With ``skip``, DDP does not all-reduce the gradients of the backward passes in the block (accumulation
        chunks before the last: they are reduced once, with the last chunk's)."""
        with contextlib.ExitStack() as stack:
            if skip and self.active:
                for module in modules:
                    if isinstance(module, nn.parallel.DistributedDataParallel):
                        stack.enter_context(module.no_sync())
            yield

    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        """This process's rows of a global minibatch: every ``world_size``-th, from ``rank``."""
        return rows[self.rank :: self.world_size]


@functools.cache
def data_parallel() -> DataParallel:
    """The process's :class:`DataParallel` (one per process: accelerate's state is a process-wide singleton)."""
    return DataParallel()
