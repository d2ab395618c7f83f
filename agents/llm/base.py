"""Shared plumbing of the LLM agents (PPO, GRPO, RLOO) that drive the ``TextGen-v0`` vector env.

:class:`LMAgent` owns the ``learn()`` loop (collect a rollout with :func:`agents.llm.rollout.collect_rollout` ->
train -> log -> checkpoint), the minibatch update loop every algorithm trains with
(:meth:`LMAgent.minibatch_updates`), the optimizer, namespaced logging through :class:`agents.rundir.RunDir`
(``env/score_mean``, ``env/kl_to_ref``, ``losses/approx_kl``, ``losses/clipfrac``, ``losses/entropy``,
``charts/tokens_per_s``, ...), and checkpoints via ``save_pretrained``. A non-finite loss or gradient stops training
with :class:`NonFiniteLossError` before the optimizer step, so the weights and the last good checkpoint are never
overwritten with NaNs. Subclasses implement :meth:`LMAgent.train_on` (and may override :meth:`LMAgent.collect`).
:func:`optimizer_step` and :func:`save_checkpoint` serve the offline trainers (``agents.llm.offline``) too.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from agents.llm.distributed import data_parallel
from agents.llm.rollout import (  # noqa: F401 - re-exported: the agents' public vocabulary
    EnvCapabilityError,
    RolloutBatch,
    collect_rollout,
    env_prompts,
    env_setting,
    left_pack,
    sequence_forward,
)
from agents.llm.training import (
    TrainingSettings,
    backward_chunks,
    check_bf16,
    chunk_weights,
    frozen_reference,
    prepare_policy,
    split_rows,
)
from agents.rundir import RunDir
from rewardmodels.text.lm_reward import NonFiniteLossError  # one exception for every trainer of the toolkit
from textenv.checks import check
from textenv.files import atomic_directory, write_json

logger = logging.getLogger(__name__)

# A callback gets the agent, the iteration just finished (1-based) and its metrics; returning False stops learn().
Callback = Callable[["LMAgent", int, dict[str, float]], "bool | None"]
# The loss of one minibatch: (minibatch, its rows of the whole batch as a 1-D long tensor) -> (loss, metrics).
MinibatchLoss = Callable[[RolloutBatch, torch.Tensor], "tuple[torch.Tensor, dict[str, Any]]"]


@dataclasses.dataclass
class LMAgentConfig(TrainingSettings):
    """Settings shared by the LLM agents (and, keyword-only, the memory settings of
    :class:`agents.llm.training.TrainingSettings`: ``lora``, ``gradient_checkpointing``, ``bf16``,
    ``gradient_accumulation_steps``)."""

    learning_rate: float = 1e-5
    """Adam learning rate of the policy (and value head)."""
    adam_eps: float = 1e-5
    """Adam epsilon; 1e-5 rather than PyTorch's 1e-8 ("37 implementation details of PPO" #3, Huang et al. 2022)."""
    anneal_lr: bool = False
    """Decay the learning rate linearly to 0 over the iterations of ``learn()`` (37 details #4)."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip (37 details #11)."""
    iterations: int = 100
    """Default number of collect -> train iterations of ``learn()``."""
    seed: int = 0
    """Seed of the env reset and of the token sampler."""
    checkpoint_every: int = 0
    """Save a checkpoint every this many iterations (0: only at the end of ``learn()``, when a run dir is given)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        check(self.adam_eps > 0, f"adam_eps must be > 0, got {self.adam_eps}")
        check(self.max_grad_norm > 0, f"max_grad_norm must be > 0 (use math.inf to disable), got {self.max_grad_norm}")
        check(self.iterations >= 1, f"iterations must be >= 1, got {self.iterations}")
        check(
            self.checkpoint_every >= 0, f"checkpoint_every must be >= 0 (0 = at the end), got {self.checkpoint_every}"
        )


def accumulate(totals: dict[str, float], metrics: dict[str, Any]) -> None:
    """Add ``metrics`` (tensors or floats) into ``totals``; bare names go under ``losses/``."""
    for key, value in metrics.items():
        name = key if "/" in key else f"losses/{key}"
        value = value.detach() if torch.is_tensor(value) else value
        totals[name] = totals.get(name, 0.0) + float(value)


def check_finite(loss: torch.Tensor, iteration: int, where: str, last_checkpoint: Path | None) -> None:
    """Raise :class:`NonFiniteLossError` if ``loss`` is NaN/inf (one host sync per minibatch, never per token)."""
    if not bool(torch.isfinite(loss).all()):
        kept = f"the last good checkpoint {last_checkpoint} is kept" if last_checkpoint else "no checkpoint was written"
        raise NonFiniteLossError(
            f"{where} is {float(loss.detach())} at iteration {iteration}; training stopped before the update ({kept}). "
            "Check the reward function for NaN/inf scores, or lower the learning rate / tighten max_grad_norm."
        )


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    params: Iterable[nn.Parameter],
    loss: torch.Tensor,
    max_grad_norm: float,
    where: str,
    step: int,
    last_checkpoint: Path | None,
) -> torch.Tensor:
    """Backward + global-norm clip + step, refusing a non-finite loss or gradient (:class:`NonFiniteLossError`, the
    weights left as they were); returns the gradient norm before clipping. ``where`` names the loss in the error,
    ``step`` is the trainer's iteration / step count."""
    check_finite(loss, step, where, last_checkpoint)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    return clip_and_step(optimizer, params, max_grad_norm, step, last_checkpoint)


def clip_and_step(
    optimizer: torch.optim.Optimizer,
    params: Iterable[nn.Parameter],
    max_grad_norm: float,
    step: int,
    last_checkpoint: Path | None,
) -> torch.Tensor:
    """Global-norm clip of the gradients in ``params`` and an optimizer step, refusing a non-finite gradient (the
    weights left as they were); returns the gradient norm before clipping."""
    grad_norm = nn.utils.clip_grad_norm_(params, max_grad_norm)
    check_finite(grad_norm, step, "the gradient norm", last_checkpoint)
    optimizer.step()
    return grad_norm.detach()


def weighted_mean(values: list[dict[str, Any]], weights: list[float]) -> dict[str, Any]:
    """The metrics of accumulation chunks averaged with ``weights`` (each chunk's share of the minibatch)."""
    if len(values) == 1:
        return values[0]
    total = sum(weights)
    return {k: sum(w * v[k] for v, w in zip(values, weights, strict=True)) / total for k in values[0]}


def shaped_scores(batch: RolloutBatch, score_clip: float | None, missing_eos_penalty: float | None) -> torch.Tensor:
    """(B,) scores after optional clipping and the missing-EOS penalty (N details, "EOS trick")."""
    scores = batch.scores.float()
    if score_clip is not None:
        scores = scores.clamp(-score_clip, score_clip)
    if missing_eos_penalty is not None:
        scores = scores - missing_eos_penalty * (~batch.ended_with_eos).float()
    return scores


def save_checkpoint(directory: Path, model: nn.Module, tokenizer, extra: dict[str, nn.Module], state: dict) -> Path:
    """Write ``directory`` atomically (``textenv.files.atomic_directory``): a crash leaves the previous one
    whole. It holds ``save_pretrained`` of the model and tokenizer, ``<name>.pt`` per extra module and
    ``trainer_state.json``."""
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, module in extra.items():
            torch.save(module.state_dict(), tmp / f"{name}.pt")
        write_json(tmp / "trainer_state.json", state)
    return directory


class LMAgent:
    """Base of the on-policy LLM agents: ``learn()`` = repeat (collect a rollout -> ``train_on`` it -> log).

    ``env`` is a ``TextGenVectorEnv`` built with ``array_backend="torch"``; the agent trains ``env.policy`` in place
    (the env samples with it) against a frozen reference: ``env.ref_model`` if the env has one (it then computes the
    reference log-probs token by token), else ``ref_model``, else a frozen copy of the initial policy (for a LoRA
    policy, ``config.lora`` or a ``peft`` model in the env, its base with the adapters disabled: no copy), whose
    log-probs the agent computes in one batched forward per rollout (build the env with ``kl_coef=0`` for that: one
    call instead of one per token, which pays when per-call overhead dominates, as with small models). Subclasses
    set ``self.config`` before calling ``super().__init__`` and implement :meth:`train_on`; extra trainable modules
    go in :meth:`extra_modules`.
    """

    config: LMAgentConfig
    config_class: type[LMAgentConfig] = LMAgentConfig
    algo: str = "lm"

    def __init__(
        self,
        env,
        config: LMAgentConfig,
        run_dir: RunDir | str | os.PathLike | None = None,
        ref_model: nn.Module | None = None,
    ):
        if not hasattr(env, "next_token_logits") or not hasattr(env, "policy"):
            raise EnvCapabilityError(
                f"{type(env).__name__} is not a TextGen vector env (no next_token_logits()/policy); build one with "
                "textenv.TextGenVectorEnv(..., array_backend='torch')"
            )
        self.env = env
        self.config = config
        self.parallel = data_parallel()
        # With LoRA the adapters are injected into env.policy in place: the env samples with them too.
        self.policy: nn.Module = prepare_policy(env.policy, config)
        env_ref = getattr(env, "ref_model", None)
        if env_ref is not None:
            self.ref_model: nn.Module = env_ref
            if config.lora is not None and env_ref is not self.policy and any(True for _ in env_ref.parameters()):
                logger.warning(
                    "lora is set but the env holds a full copy of the model as its reference; build the env with "
                    "kl_coef=0 (the agent then scores the base with adapters disabled, no copy) or with "
                    "ref_model=textenv.lora.reference_view(policy)"
                )
        else:
            self.ref_model = frozen_reference(self.policy, ref_model)
        self._batched_ref = self.ref_model if env_ref is None else None
        self.tokenizer = env.tokenizer
        self.device = next(self.policy.parameters()).device
        check_bf16(config, self.device)
        self.temperature = float(env_setting(env, "temperature", 1.0))
        if not self.parallel.is_main:  # one writer per run: the main process
            run_dir = None
        self.run_dir = run_dir if isinstance(run_dir, RunDir) or run_dir is None else RunDir(run_dir)
        # Each process samples its own share of the batch: its own random stream (rank 0 = the one-process stream).
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed + self.parallel.rank)
        self.iteration = 0
        self.tokens_seen = 0
        self.last_checkpoint: Path | None = None
        # Dropout off in rollouts and training alike, so old and new log-probs come from the same function
        # ("disable dropout", The N Implementation Details of RLHF with PPO, Huang et al. 2024).
        self.policy.eval()
        # foreach: one multi-tensor kernel per update step instead of a loop over parameters.
        self.optimizer = torch.optim.Adam(self.parameters(), lr=config.learning_rate, eps=config.adam_eps, foreach=True)
        # The modules whose training forwards need DDP's gradient averaging (themselves in one process).
        self._wrapped = {id(m): self.parallel.wrap(m) for m in (self.policy, *self.extra_modules().values())}
        if self.run_dir is not None:
            self.run_dir.write_config({"algo": self.algo, "config": config})

    # ----------------------------------------------------------------- to override
    def extra_modules(self) -> dict[str, nn.Module]:
        """Trainable modules besides the policy (saved with each checkpoint), e.g. a value head."""
        return {}

    def collect(self) -> RolloutBatch:
        """One rollout: an episode per env row, on prompts the env draws."""
        return collect_rollout(self.env, seed=self._reset_seed(), generator=self.generator, ref_model=self._batched_ref)

    def train_on(self, batch: RolloutBatch) -> dict[str, float]:
        """Update the policy on ``batch``; return namespaced metrics (``losses/...``, ``train/...``)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- shared
    def parameters(self) -> list[nn.Parameter]:
        params = [p for p in self.policy.parameters() if p.requires_grad]
        for module in self.extra_modules().values():
            params += [p for p in module.parameters() if p.requires_grad]
        return params

    def trained(self, module: nn.Module) -> nn.Module:
        """``module`` as its training forwards call it: DDP-wrapped under a multi-process launch, else itself."""
        return self._wrapped.get(id(module), module)

    def policy_forward(self, batch: RolloutBatch, output_hidden: bool = False, entropy_grad: bool = False):
        """:func:`sequence_forward` of the policy over ``batch`` at the env's sampling temperature."""
        return sequence_forward(
            self.trained(self.policy), *batch[:4], self.temperature, output_hidden=output_hidden,
            entropy_grad=entropy_grad, context_mask=batch.context_mask,
        )

    def loss_units(self, batch: RolloutBatch) -> torch.Tensor:
        """What the loss averages over in ``batch``: its response tokens (a token-mean loss). A loss that averages
        over rows says so by overriding this; gradient accumulation and data parallelism weight by it."""
        return batch.response_mask.sum()

    def _reset_seed(self) -> int | None:
        # Seed only the first reset: later resets continue the env's own np_random stream (Gymnasium convention).
        return self.config.seed + self.parallel.rank if self.iteration == 0 else None

    def step_optimizer(self, loss: torch.Tensor, where: str = "loss") -> torch.Tensor:
        """Backward + clip + step, refusing non-finite losses/gradients (the weights stay as they were)."""
        cfg = self.config
        return optimizer_step(
            self.optimizer, self.parameters(), loss, cfg.max_grad_norm, where, self.iteration, self.last_checkpoint
        )

    def minibatch_updates(
        self, batch: RolloutBatch, epochs: int, num_minibatches: int, minibatch_loss: MinibatchLoss
    ) -> dict[str, float]:
        """``epochs`` passes over ``batch``, each in ``num_minibatches`` minibatches of rows drawn without replacement
        (37 details #6), one optimizer step per minibatch on ``minibatch_loss(minibatch, rows)``. Returns the
        metrics averaged over the steps (bare names under ``losses/``), with ``losses/loss`` and
        ``losses/grad_norm``."""
        n = batch.response_mask.shape[0]
        size = n // num_minibatches
        totals: dict[str, float] = {}
        count = 0
        for _ in range(epochs):
            order = torch.randperm(n, generator=self.generator, device=self.device)
            for start in range(0, n, size):
                loss, metrics, grad_norm = self.update(batch, order[start : start + size], minibatch_loss)
                accumulate(totals, {**metrics, "loss": loss, "grad_norm": grad_norm})
                count += 1
        return {k: v / count for k, v in totals.items()}

    def update(
        self, batch: RolloutBatch, rows: torch.Tensor, minibatch_loss: MinibatchLoss
    ) -> tuple[torch.Tensor, dict[str, Any], torch.Tensor]:
        """One optimizer step on the minibatch ``rows`` of ``batch``: ``gradient_accumulation_steps`` chunks, each
        a forward/backward (under bf16 autocast if set) with its loss weighted by its share of the minibatch's
        :meth:`loss_units` across all processes (``agents.llm.training.chunk_weights``), then one clipped step.
        Returns the minibatch's loss, metrics and gradient norm."""
        cfg, where = self.config, f"the {self.algo.upper()} loss"
        chunks = split_rows(rows, cfg.gradient_accumulation_steps)
        mbs = [batch.select(c) for c in chunks]
        units = [self.loss_units(mb) for mb in mbs]
        exact = len(chunks) == 1 and not self.parallel.active  # the plain step: no weights, the same numbers
        weights = None if exact else chunk_weights(units, self.parallel.sum(sum(units)), self.parallel.world_size)
        self.optimizer.zero_grad(set_to_none=True)
        outs = backward_chunks(
            [functools.partial(minibatch_loss, mb, chunk) for mb, chunk in zip(mbs, chunks, strict=True)],
            weights,
            cfg,
            self.device,
            lambda loss: check_finite(loss, self.iteration, where, self.last_checkpoint),
            lambda skip: self.parallel.no_sync(self._wrapped.values(), skip),
        )
        grad_norm = clip_and_step(self.optimizer, self.parameters(), cfg.max_grad_norm, self.iteration,
                                  self.last_checkpoint)
        metrics = outs[0] if len(outs) == 1 else weighted_mean(outs, [float(u) for u in units])
        return metrics.pop(""), metrics, grad_norm

    def rollout_metrics(self, batch: RolloutBatch, seconds: float) -> dict[str, float]:
        tokens = int(batch.response_mask.sum())
        self.tokens_seen += tokens
        kl = batch.kl_sum
        return {
            "env/score_mean": float(batch.scores.mean()),
            "env/score_std": float(batch.scores.std()) if len(batch.scores) > 1 else 0.0,
            "env/kl_to_ref": float(kl.mean()),
            "env/kl_coef": batch.kl_coef,  # the env's KL-penalty beta this batch was rewarded with
            "env/response_length": float(batch.lengths.float().mean()),
            "env/eos_fraction": float(batch.ended_with_eos.float().mean()),
            "charts/rollout_tokens_per_s": tokens / max(seconds, 1e-9),
        }

    def learn(self, iterations: int | None = None, callback: Callback | None = None) -> LMAgent:
        """Run ``iterations`` (default ``config.iterations``) collect -> train rounds; return ``self``.

        ``callback(agent, iteration, metrics)`` runs after each round; returning ``False`` stops early.
        """
        total = self.config.iterations if iterations is None else int(iterations)
        if total < 1:
            raise ValueError(f"iterations must be >= 1, got {total}")
        for i in range(total):
            if self.config.anneal_lr:  # 37 details #4: linear decay to 0
                for group in self.optimizer.param_groups:
                    group["lr"] = self.config.learning_rate * (1.0 - i / total)
            start = time.perf_counter()
            batch = self.collect()
            rollout_s = time.perf_counter() - start
            metrics = self.rollout_metrics(batch, rollout_s)
            metrics.update(self.train_on(batch))
            self.iteration += 1
            elapsed = time.perf_counter() - start
            metrics["charts/tokens_per_s"] = float(batch.response_mask.sum()) / max(elapsed, 1e-9)
            metrics["charts/learning_rate"] = self.optimizer.param_groups[0]["lr"]
            metrics = {k: float(v) for k, v in metrics.items()}
            self.last_metrics = metrics
            if self.run_dir is not None:
                self.run_dir.log(self.iteration, metrics)
            logger.info(
                "%s iter %d: score %.3f kl %.3f tok/s %.0f",
                self.algo,
                self.iteration,
                metrics["env/score_mean"],
                metrics["env/kl_to_ref"],
                metrics["charts/tokens_per_s"],
            )
            every = self.config.checkpoint_every
            if self.run_dir is not None and every and self.iteration % every == 0:
                self.save(self.run_dir.checkpoints / "last")
            if callback is not None and callback(self, self.iteration, metrics) is False:
                break
        if self.run_dir is not None:
            self.save(self.run_dir.checkpoints / "last")
        return self

    def save(self, directory: str | os.PathLike) -> Path:
        """Save the policy (``save_pretrained``), tokenizer, extra modules and trainer state to ``directory``."""
        for name, p in self.policy.named_parameters():
            if not bool(torch.isfinite(p).all()):  # never replace a good checkpoint with broken weights
                raise NonFiniteLossError(
                    f"parameter {name} holds NaN/inf at iteration {self.iteration}; not saving (the last good "
                    f"checkpoint {self.last_checkpoint} is kept). Lower the learning rate."
                )
        state = {"algo": self.algo, "iteration": self.iteration, "tokens_seen": self.tokens_seen}
        self.last_checkpoint = save_checkpoint(
            Path(directory), self.policy, self.tokenizer, self.extra_modules(), state
        )
        return self.last_checkpoint
