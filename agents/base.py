"""Shared plumbing of the LLM agents (PPO, GRPO, RLOO) that drive the ``TextGen-v0`` vector env.

- :func:`collect_rollout` plays one episode in every row of a ``TextGenVectorEnv`` (``array_backend="torch"``), sampling
  from ``env.next_token_logits()`` so that the env's KL reward reuses the same forward pass, and returns a typed
  :class:`RolloutBatch` (query ids, response ids, masks, per-token old / reference log-probs, scores).
- :func:`sequence_forward` is the one full forward over finished sequences that training needs (log-probs, entropy and,
  on request, the last hidden states for a value head).
- :class:`LMAgent` owns the ``learn()`` loop (collect -> train -> log -> checkpoint), the optimizer, namespaced logging
  through :class:`agents.rundir.RunDir`, and checkpoints via ``save_pretrained``. A non-finite loss stops training with
  :class:`NonFiniteLossError` before the optimizer step, so the last good checkpoint is never overwritten.
  Subclasses implement :meth:`LMAgent.train_on` (and may override :meth:`LMAgent.collect`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from agents.losses import sequence_logprobs
from agents.math import entropy_from_logits
from agents.rundir import RunDir

logger = logging.getLogger(__name__)

# A callback gets the agent, the iteration just finished (1-based) and its metrics; returning False stops learn().
Callback = Callable[["LMAgent", int, dict[str, float]], "bool | None"]


class NonFiniteLossError(FloatingPointError):
    """A loss or gradient became NaN/inf; training stopped before the update and the last checkpoint is intact."""


class EnvCapabilityError(TypeError):
    """The env lacks something the agent needs (the torch backend, per-row prompts on reset, ...)."""


class RolloutBatch(NamedTuple):
    """One finished episode per row. ``B`` rows, queries left-padded to ``Lq``, responses right-padded to ``T``."""

    query_ids: torch.Tensor  # (B, Lq) long, left-padded
    query_mask: torch.Tensor  # (B, Lq) bool
    response_ids: torch.Tensor  # (B, T) long, right-padded (padding is masked out)
    response_mask: torch.Tensor  # (B, T) bool, True for generated tokens (the final EOS included)
    old_logprobs: torch.Tensor  # (B, T) log pi_old(a_t|s_t) at sampling time (temperature applied), 0 on padding
    ref_logprobs: torch.Tensor  # (B, T) log pi_ref(a_t|s_t), 0 on padding (= old_logprobs if the env has no reference)
    scores: torch.Tensor  # (B,) reward_fn score of each (prompt, response)
    ended_with_eos: torch.Tensor  # (B,) bool, False when truncated at max_new_tokens
    prompts: list[str]
    responses: list[str]

    @property
    def kl(self) -> torch.Tensor:
        """(B, T) per-token k1 KL sample ``log pi_old - log pi_ref`` (0 on padding)."""
        return (self.old_logprobs - self.ref_logprobs) * self.response_mask

    @property
    def kl_sum(self) -> torch.Tensor:
        """(B,) sequence KL to the reference (sum of per-token k1 samples)."""
        return self.kl.sum(-1)

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)

    def select(self, index: torch.Tensor) -> RolloutBatch:
        """The rows ``index`` (a 1-D long tensor) of every field."""
        idx = index.tolist()
        fields = [f[index] for f in self[:8]]
        return RolloutBatch(*fields, [self.prompts[i] for i in idx], [self.responses[i] for i in idx])


def left_pack(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the unmasked tokens of each row to the right end (left padding) and drop all-padding columns."""
    mask = mask.bool()
    order = torch.sort(mask.to(torch.int8), dim=1, stable=True).indices  # padding first, tokens last, order kept
    ids, mask = ids.gather(1, order), mask.gather(1, order)
    width = int(mask.sum(1).max())
    return ids[:, ids.shape[1] - width :], mask[:, mask.shape[1] - width :]


def _vector_info(info: dict, key: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(values, present)`` of a vector-env info entry (Gymnasium's ``key`` / ``_key`` convention)."""
    if key not in info:
        return None
    value = torch.as_tensor(np.asarray(info[key]) if not torch.is_tensor(info[key]) else info[key], device=device)
    present = info.get(f"_{key}")
    if present is None:
        present = torch.ones(value.shape[0], dtype=torch.bool, device=device)
    else:
        present = torch.as_tensor(present, device=device).bool()
    return value, present


def env_setting(env, name: str, default: Any = None) -> Any:
    """A setting of a TextGen env (``max_new_tokens``, ``temperature``, ``kl_coef``...): on the env or its engine."""
    for holder in (env, getattr(env, "engine", None)):
        if holder is not None and hasattr(holder, name):
            return getattr(holder, name)
    return default


def env_prompts(env) -> list[str]:
    """The prompt list an env draws from (empty if it does not expose one)."""
    source = getattr(env, "prompt_source", None)
    return list(getattr(source, "prompts", None) or getattr(env, "prompts", None) or [])


def _reset(env, prompts: Sequence[str] | None, seed: int | None):
    if prompts is None:
        return env.reset(seed=seed)
    if len(prompts) != env.num_envs:
        raise ValueError(f"got {len(prompts)} prompts for an env of {env.num_envs} rows; pass one prompt per row")
    try:
        return env.reset(seed=seed, options={"prompts": list(prompts)})
    except (TypeError, KeyError) as exc:  # an env without per-row prompts
        raise EnvCapabilityError(
            "this env cannot start rows from chosen prompts (env.reset(options={'prompts': [...]})); GRPO/RLOO need "
            "it to give every group one prompt. Update textenv, or use an env that supports it."
        ) from exc


@torch.no_grad()
def collect_rollout(
    env,
    prompts: Sequence[str] | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    ref_model: nn.Module | None = None,
) -> RolloutBatch:
    """Play one episode in every row of ``env`` (a ``TextGenVectorEnv`` with ``array_backend="torch"``).

    Actions are sampled from ``env.next_token_logits()`` (temperature already applied); ``env.step`` then reuses those
    logits for the KL reward, so each token costs one policy forward (KV-cached) and, if the env has a reference model
    (``kl_coef > 0``), one reference forward. Rows that finish early keep stepping (Gymnasium's next-step autoreset)
    until every row is done; what they do after their first episode is discarded. ``prompts`` (one per row) needs an
    env whose reset accepts ``options={"prompts": [...]}``.

    Reference log-probs: the env's when it computes them; else, with ``ref_model``, ONE batched forward of it over the
    finished sequences (cheaper than a forward per token when the model is small and per-call overhead dominates, and
    the same numbers); else they equal the policy's (KL 0).
    """
    obs, _ = _reset(env, prompts, seed)
    ids = torch.as_tensor(obs["input_ids"])
    device = ids.device
    query_ids, query_mask = left_pack(ids, torch.as_tensor(obs["attention_mask"], device=device))
    n, horizon = env.num_envs, int(env_setting(env, "max_new_tokens"))
    tokens = torch.zeros(n, horizon, dtype=torch.long, device=device)
    logp = torch.zeros(n, horizon, device=device)
    ref_logp = torch.zeros(n, horizon, device=device)
    mask = torch.zeros(n, horizon, dtype=torch.bool, device=device)
    alive = torch.ones(n, dtype=torch.bool, device=device)
    eos = torch.zeros(n, dtype=torch.bool, device=device)
    scores = torch.zeros(n, device=device)
    prompt_text: list[str | None] = [None] * n
    response_text: list[str | None] = [None] * n
    # A host sync per token costs nothing on CPU; on an accelerator, check for the end only every few tokens.
    check_every = 1 if device.type == "cpu" else 8
    steps = 0
    for t in range(horizon):
        logits = env.next_token_logits()  # (N, V)
        probs = torch.softmax(logits.float(), dim=-1)
        actions = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (N,)
        _, _, terminated, truncated, info = env.step(actions)
        terminated = torch.as_tensor(terminated, device=device).bool()
        done = terminated | torch.as_tensor(truncated, device=device).bool()
        tokens[:, t] = actions
        mask[:, t] = alive
        logp[:, t] = torch.as_tensor(info["policy_logprob"], device=device).float() * alive
        ref = info.get("ref_logprob", info["policy_logprob"])  # no reference model (env kl_coef=0): KL is 0
        ref_logp[:, t] = torch.as_tensor(ref, device=device).float() * alive
        ended = alive & done
        score = _vector_info(info, "score", device)
        if score is not None:
            scores = torch.where(ended & score[1], score[0].float(), scores)
        eos |= ended & terminated
        alive = alive & ~done
        steps = t + 1
        if "prompt" in info or "response" in info:
            _record_text(info, ended, prompt_text, response_text)
        if steps % check_every == 0 and not bool(alive.any()):
            break
    tokens, mask, logp, ref_logp = tokens[:, :steps], mask[:, :steps], logp[:, :steps], ref_logp[:, :steps]
    tokens = tokens.masked_fill(~mask, 0)
    if ref_model is not None and "ref_logprob" not in info:
        temperature = float(env_setting(env, "temperature", 1.0))
        ref_logp = sequence_forward(ref_model, query_ids, query_mask, tokens, mask, temperature)[0]
    if any(r is None for r in response_text):  # an env that does not report text: decode it ourselves
        decoded = env.tokenizer.batch_decode(
            [row[m].tolist() for row, m in zip(tokens, mask, strict=True)], skip_special_tokens=True
        )
        response_text = [r if r is not None else d for r, d in zip(response_text, decoded, strict=True)]
    if any(p is None for p in prompt_text):
        decoded = env.tokenizer.batch_decode(
            [row[m].tolist() for row, m in zip(query_ids, query_mask, strict=True)], skip_special_tokens=True
        )
        prompt_text = [p if p is not None else d for p, d in zip(prompt_text, decoded, strict=True)]
    return RolloutBatch(query_ids, query_mask, tokens, mask, logp, ref_logp, scores, eos, prompt_text, response_text)


def _record_text(info: dict, ended: torch.Tensor, prompts: list, responses: list) -> None:
    rows = ended.nonzero().flatten().tolist()
    if not rows:
        return
    for key, out in (("prompt", prompts), ("response", responses)):
        if key not in info:
            continue
        present = info.get(f"_{key}")
        for i in rows:
            if out[i] is None and (present is None or bool(present[i])):
                out[i] = str(info[key][i])


def sequence_forward(
    model: nn.Module,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float = 1.0,
    output_hidden: bool = False,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One forward over ``[query; response]``: per-token log-probs and entropy of the response, (B, T) each.

    Logits are divided by the sampling temperature, as at sampling time ("scale the logits by the sampling
    temperature", The N Implementation Details of RLHF with PPO, Huang et al. 2024), and position ids come from the
    attention mask, as in the env, so left padding never shifts positions. With ``output_hidden`` the third output is
    the last layer's hidden states at the positions that predict each response token, (B, T, H); else None. The
    entropy carries a gradient only with ``entropy_grad`` (an entropy bonus); otherwise it is a detached diagnostic.
    """
    input_ids = torch.cat([query_ids, response_ids], dim=1)  # (B, Lq+T)
    attention = torch.cat([query_mask, response_mask], dim=1).long()
    position_ids = (attention.cumsum(1) - 1).clamp(min=0)
    out = model(
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=position_ids,
        use_cache=False,
        output_hidden_states=output_hidden,
    )
    lq = query_ids.shape[1]
    logits = out.logits[:, lq - 1 : -1].float() / temperature  # (B, T, V): position i predicts token i+1
    logprobs, _ = sequence_logprobs(logits, response_ids, response_mask)  # (B, T), 0 on padding
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):  # usually only a diagnostic
        entropy = entropy_from_logits(logits)  # (B, T)
    hidden = out.hidden_states[-1][:, lq - 1 : -1] if output_hidden else None
    return logprobs, entropy, hidden


@dataclasses.dataclass
class LMAgentConfig:
    """Settings shared by the LLM agents."""

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
        _check(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        _check(self.adam_eps > 0, f"adam_eps must be > 0, got {self.adam_eps}")
        _check(self.max_grad_norm > 0, f"max_grad_norm must be > 0 (use math.inf to disable), got {self.max_grad_norm}")
        _check(self.iterations >= 1, f"iterations must be >= 1, got {self.iterations}")
        _check(
            self.checkpoint_every >= 0, f"checkpoint_every must be >= 0 (0 = at the end), got {self.checkpoint_every}"
        )


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


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


def save_checkpoint(directory: Path, model: nn.Module, tokenizer, extra: dict[str, nn.Module], state: dict) -> Path:
    """Write ``directory`` atomically: build it beside, then swap, so a crash leaves the previous one whole."""
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    for name, module in extra.items():
        torch.save(module.state_dict(), tmp / f"{name}.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2, default=str) + "\n", encoding="utf-8")
    old = directory.with_name(f".{directory.name}.old")
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


class LMAgent:
    """Base of the on-policy LLM agents: ``learn()`` = repeat (collect a rollout -> ``train_on`` it -> log).

    ``env`` is a ``TextGenVectorEnv`` built with ``array_backend="torch"``; the agent trains ``env.policy`` in place
    (the env samples with it) against a frozen reference: ``env.ref_model`` if the env has one (it then computes the
    reference log-probs token by token), else ``ref_model``, else a frozen copy of the initial policy, whose
    log-probs the agent computes in one batched forward per rollout (build the env with ``kl_coef=0`` for that: it
    is the faster path for small models). Subclasses set ``self.config`` before calling ``super().__init__`` and
    implement :meth:`train_on`; extra trainable modules go in :meth:`extra_modules`.
    """

    config: LMAgentConfig
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
        self.policy: nn.Module = env.policy
        env_ref = getattr(env, "ref_model", None)
        if env_ref is not None:
            self.ref_model: nn.Module = env_ref
        else:
            self.ref_model = ref_model if ref_model is not None else copy.deepcopy(self.policy)
            self.ref_model.eval().requires_grad_(False)
        self._batched_ref = self.ref_model if env_ref is None else None
        self.tokenizer = env.tokenizer
        self.device = next(self.policy.parameters()).device
        self.temperature = float(env_setting(env, "temperature", 1.0))
        self.run_dir = run_dir if isinstance(run_dir, RunDir) or run_dir is None else RunDir(run_dir)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.iteration = 0
        self.tokens_seen = 0
        self.last_checkpoint: Path | None = None
        # Dropout off in rollouts and training alike, so old and new log-probs come from the same function
        # ("disable dropout", The N Implementation Details of RLHF with PPO, Huang et al. 2024).
        self.policy.eval()
        self.optimizer = torch.optim.Adam(self.parameters(), lr=config.learning_rate, eps=config.adam_eps)
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

    def policy_forward(self, batch: RolloutBatch, output_hidden: bool = False, entropy_grad: bool = False):
        """:func:`sequence_forward` of the policy over ``batch`` at the env's sampling temperature."""
        return sequence_forward(
            self.policy, *batch[:4], self.temperature, output_hidden=output_hidden, entropy_grad=entropy_grad
        )

    def _reset_seed(self) -> int | None:
        # Seed only the first reset: later resets continue the env's own np_random stream (Gymnasium convention).
        return self.config.seed if self.iteration == 0 else None

    def step_optimizer(self, loss: torch.Tensor, where: str = "loss") -> torch.Tensor:
        """Backward + clip + step, refusing non-finite losses/gradients (the weights stay as they were)."""
        check_finite(loss, self.iteration, where, self.last_checkpoint)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.parameters(), self.config.max_grad_norm)
        check_finite(grad_norm, self.iteration, "the gradient norm", self.last_checkpoint)
        self.optimizer.step()
        return grad_norm.detach()

    def rollout_metrics(self, batch: RolloutBatch, seconds: float) -> dict[str, float]:
        tokens = int(batch.response_mask.sum())
        self.tokens_seen += tokens
        kl = batch.kl_sum
        return {
            "env/score_mean": float(batch.scores.mean()),
            "env/score_std": float(batch.scores.std()) if len(batch.scores) > 1 else 0.0,
            "env/kl_to_ref": float(kl.mean()),
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
