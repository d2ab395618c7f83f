"""Rollouts of the ``TextGen-v0`` vector env for the LLM agents, and the training forward over finished sequences.

- :func:`collect_rollout` plays one episode in every row of a ``TextGenVectorEnv`` (``array_backend="torch"``), sampling
  from ``env.next_token_logits()`` so that the env's KL reward reuses the same forward pass, and returns a typed
  :class:`RolloutBatch` (query ids, response ids, masks, per-token old / reference log-probs, scores).
- :func:`sequence_forward` is the one full forward over finished sequences that training needs (log-probs, entropy and,
  on request, the last hidden states for a value head).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from agents.llm.losses import sequence_logprobs
from agents.llm.math import entropy_from_logits
from agents.llm.training import checkpointing_active, is_checkpointing
from textenv.decoders import fast_decoder
from textenv.engine import record_episodes


class EnvCapabilityError(TypeError):
    """The env lacks something the agent needs (the torch backend, per-row prompts on reset, ...)."""


class RolloutBatch(NamedTuple):
    """One finished episode per row. ``B`` rows, queries left-padded to ``Lq``, responses right-padded to ``T``.

    Multi-turn episodes (an environment that answers) hold the environment's replies between the policy's tokens:
    ``context_mask`` marks them. They are part of the sequence every forward reads (``sequence_mask``) but never
    actions: ``response_mask`` (what losses, KL and advantages use) is False there, and log-probs and rewards 0.
    """

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
    rewards: torch.Tensor | None = None  # (B, T) the env's reward of each step (KL penalty + score at the last), 0 on
    # padding; None = a batch built by hand: the score at the last token, no KL penalty (see ``env_rewards``)
    kl_coef: float = 0.0  # the env's KL-penalty beta when the batch was sampled
    context_mask: torch.Tensor | None = None  # (B, T) bool, True on the environment's tokens; None: single-turn

    @property
    def sequence_mask(self) -> torch.Tensor:
        """(B, T) bool, True on every token of the response part of the sequence: the actions and, multi-turn, the
        environment's replies between them (the attention mask of a forward)."""
        return self.response_mask if self.context_mask is None else self.response_mask | self.context_mask

    @property
    def last_index(self) -> torch.Tensor:
        """(B,) position of each row's last action (where the score is rewarded)."""
        if self.context_mask is None:
            return (self.lengths - 1).clamp(min=0)
        cols = torch.arange(1, self.response_mask.shape[1] + 1, device=self.response_mask.device)
        return (self.response_mask.long() * cols).argmax(1)

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

    @property
    def env_rewards(self) -> torch.Tensor:
        """(B, T) the env's per-step rewards: ``rewards``, or for a batch without them the score at each row's last
        token."""
        if self.rewards is not None:
            return self.rewards
        last = self.last_index[:, None]
        zeros = torch.zeros(self.response_mask.shape, dtype=torch.float32, device=self.scores.device)
        return zeros.scatter_add(1, last, self.scores.float()[:, None]) * self.response_mask

    def select(self, index: torch.Tensor) -> RolloutBatch:
        """The rows ``index`` (a 1-D long tensor) of every field."""
        idx = index.tolist()
        fields = [f[index] for f in self[:8]]
        rewards = self.rewards[index] if self.rewards is not None else None
        context = self.context_mask[index] if self.context_mask is not None else None
        return RolloutBatch(*fields, [self.prompts[i] for i in idx], [self.responses[i] for i in idx], rewards,
                            self.kl_coef, context)


def left_pack(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the unmasked tokens of each row to the right end (left padding) and drop all-padding columns."""
    mask = mask.bool()
    order = torch.sort(mask.to(torch.int8), dim=1, stable=True).indices  # padding first, tokens last, order kept
    ids, mask = ids.gather(1, order), mask.gather(1, order)
    width = int(mask.sum(1).max())
    return ids[:, ids.shape[1] - width :], mask[:, mask.shape[1] - width :]


def draw_tokens(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from ``softmax(logits)`` with ``torch.multinomial`` (as ``model.generate`` samples):
    ``(N, V)`` -> ``(N,)``. It consumes ``generator`` the same way whatever the logits, as ``env.play`` requires."""
    return torch.multinomial(torch.softmax(logits.float(), dim=-1), 1, generator=generator).squeeze(-1)


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


def _reset(env, prompts: Sequence[str] | None, seed: int | None, environment_seeds: Sequence[int] | None = None):
    if environment_seeds is not None:  # multi-turn: the rows' tasks (textenv.conversation)
        return env.reset(seed=seed, options={"environment_seeds": [int(x) for x in environment_seeds]})
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
    environment_seeds: Sequence[int] | None = None,
) -> RolloutBatch:
    """Play one episode in every row of ``env`` (a ``TextGenVectorEnv`` with ``array_backend="torch"``).

    Actions are drawn with :func:`draw_tokens` from the policy's next-token logits (temperature already applied), which
    the env reuses for the KL reward, so each token costs one policy forward (KV-cached) and, if the env has a reference
    model, one reference forward. The batch holds the env's per-step rewards as it returned them (its KL penalty
    included): agents train on those and never recompute the penalty. An env with ``play()`` (``TextGenVectorEnv``)
    plays the episodes in one call; any other env is stepped token by token with ``env.next_token_logits()``, rows that
    finish early stepping on (Gymnasium's next-step autoreset) until every row is done, what they do after their first
    episode discarded. Both give the same batch for the same generator. ``prompts`` (one per row) needs an env whose
    reset accepts ``options={"prompts": [...]}``; ``environment_seeds`` (one per row) chooses the tasks of a
    multi-turn env (``environment=...``), whose replies the batch marks in ``context_mask`` (``play()`` only).

    Reference log-probs: the env's when it computes them; else, with ``ref_model``, ONE batched forward of it over the
    finished sequences (cheaper than a forward per token when the model is small and per-call overhead dominates, and
    the same numbers); else they equal the policy's (KL 0).
    """
    obs, _ = _reset(env, prompts, seed, environment_seeds)
    kl_coef = float(env_setting(env, "kl_coef", 0.0))  # before the episodes: an adaptive beta moves after them
    ids = torch.as_tensor(obs["input_ids"])
    device = ids.device
    query_ids, query_mask = left_pack(ids, torch.as_tensor(obs["attention_mask"], device=device))
    if callable(getattr(env, "play", None)):  # whole episodes in one call: same MDP, no per-token step() round trips
        ep = env.play(generator, draw_tokens)
        context = ep.context_mask  # multi-turn: the environment's tokens between the actions
        seen = ep.mask if context is None else ep.mask | context
        tokens, mask, logp, ref_logp = ep.tokens.masked_fill(~seen, 0), ep.mask, ep.policy_logprob, ep.ref_logprob
        rewards = ep.reward * ep.mask
        scores = torch.as_tensor(ep.scores, dtype=torch.float32, device=device)
        eos = torch.as_tensor(ep.terminated, device=device)
        prompt_text, response_text = list(ep.prompts), list(ep.responses)
    else:
        if getattr(env, "multi_turn", False):
            raise EnvCapabilityError("a multi-turn env is collected with its play(): step-by-step collection does "
                                     "not see the environment's replies")
        context = None
        tokens, mask, logp, ref_logp, rewards, scores, eos, prompt_text, response_text = _step_episodes(
            env, generator, query_ids, query_mask
        )
    if ref_logp is None:  # the env has no reference model
        if ref_model is not None:
            temperature = float(env_setting(env, "temperature", 1.0))
            ref_logp = sequence_forward(ref_model, query_ids, query_mask, tokens, mask, temperature,
                                        context_mask=context)[0]
        else:
            ref_logp = logp  # KL 0
    return RolloutBatch(query_ids, query_mask, tokens, mask, logp, ref_logp, scores, eos, prompt_text, response_text,
                        rewards.float(), kl_coef, context)


def _step_episodes(env, generator, query_ids: torch.Tensor, query_mask: torch.Tensor) -> tuple:
    """:func:`collect_rollout` for an env without ``play()``: step it token by token until every row's first episode
    ended (the per-token loop is ``textenv.engine.record_episodes``, the one ``play()`` uses; only the step differs:
    here it goes through ``env.step`` and its info). Returns tokens, mask, log-probs, reference log-probs (None if
    the env reports none), scores, EOS flags, prompts and responses."""
    device = query_ids.device
    n = env.num_envs
    scores = torch.zeros(n, device=device)
    eos = torch.zeros(n, dtype=torch.bool, device=device)
    prompt_text: list[str | None] = [None] * n
    response_text: list[str | None] = [None] * n

    def one_token(alive: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        actions = draw_tokens(env.next_token_logits(), generator)  # (N,)
        _, reward, terminated, truncated, info = env.step(actions)
        terminated = torch.as_tensor(terminated, device=device).bool()
        done = terminated | torch.as_tensor(truncated, device=device).bool()
        ended = alive & done  # rows whose FIRST episode ends now; later episodes are discarded
        score = _vector_info(info, "score", device)
        if score is not None:
            scores.copy_(torch.where(ended & score[1], score[0].float(), scores))
        eos.logical_or_(ended & terminated)
        if "prompt" in info or "response" in info:
            _record_text(info, ended, prompt_text, response_text)
        values = {"action": actions, "logp": torch.as_tensor(info["policy_logprob"], device=device).float(),
                  "reward": torch.as_tensor(reward, device=device).float()}
        if "ref_logprob" in info:
            values["ref_logp"] = torch.as_tensor(info["ref_logprob"], device=device).float()
        return values, done

    record, mask = record_episodes(one_token, n, int(env_setting(env, "max_new_tokens")), device)
    tokens = record["action"]  # 0 after each row's end
    prompts = _decoded_where_missing(prompt_text, query_ids, query_mask, env.tokenizer)
    responses = _decoded_where_missing(response_text, tokens, mask, env.tokenizer)
    return tokens, mask, record["logp"], record.get("ref_logp"), record["reward"], scores, eos, prompts, responses


def _decoded_where_missing(texts: list, ids: torch.Tensor, mask: torch.Tensor, tokenizer) -> list[str]:
    """``texts`` with each None (an env that does not report the text) replaced by its row's decoded ``ids[mask]``."""
    if all(t is not None for t in texts):
        return texts
    decoded = tokenizer.batch_decode(
        [row[m].tolist() for row, m in zip(ids, mask, strict=True)], skip_special_tokens=True
    )
    return [t if t is not None else d for t, d in zip(texts, decoded, strict=True)]


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
    context_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One forward over ``[query; response]``: per-token log-probs and entropy of the response, (B, T) each.

    Logits are divided by the sampling temperature, as at sampling time ("scale the logits by the sampling
    temperature", The N Implementation Details of RLHF with PPO, Huang et al. 2024), and position ids come from the
    attention mask, as in the env, so left padding never shifts positions. With ``output_hidden`` the third output is
    the last layer's hidden states at the positions that predict each response token, (B, T, H); else None. The
    entropy carries a gradient only with ``entropy_grad`` (an entropy bonus); otherwise it is a detached diagnostic.
    ``context_mask`` (multi-turn) marks response tokens that are the environment's: read, but not scored (their
    log-probs are 0, so no loss reaches them).
    """
    input_ids = torch.cat([query_ids, response_ids], dim=1)  # (B, Lq+T)
    seen = response_mask if context_mask is None else response_mask | context_mask
    attention = torch.cat([query_mask, seen], dim=1).long()
    position_ids = (attention.cumsum(1) - 1).clamp(min=0)
    lq = query_ids.shape[1]
    # Gradient checkpointing is transformers' (the fast decoders keep every activation): a checkpointed model with
    # gradients on runs its own forward, its checkpointed layers in training mode (agents.llm.training).
    checkpointed = torch.is_grad_enabled() and is_checkpointing(model)
    decoder = fast_decoder(model) if not (_dropout_active(model) or checkpointed) else None
    if decoder is not None:  # the same function without the Hugging Face module stack (textenv.decoders)
        states = decoder.hidden_states(input_ids, attention, position_ids)[:, lq - 1 : -1]
        logits = decoder.logits(states)
    else:
        with checkpointing_active(model) if checkpointed else contextlib.nullcontext():
            out = model(
                input_ids=input_ids,
                attention_mask=attention,
                position_ids=position_ids,
                use_cache=False,
                output_hidden_states=output_hidden,
            )
        logits = out.logits[:, lq - 1 : -1]
        states = out.hidden_states[-1][:, lq - 1 : -1] if output_hidden else None
    logits = logits.float() / temperature  # (B, T, V): position i predicts token i+1
    logprobs, _ = sequence_logprobs(logits, response_ids, response_mask)  # (B, T), 0 on padding
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):  # usually only a diagnostic
        entropy = entropy_from_logits(logits)  # (B, T)
    return logprobs, entropy, (states if output_hidden else None)


def _dropout_active(model: nn.Module) -> bool:
    return model.training and any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())
