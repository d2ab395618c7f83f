"""Token sampling, log-probabilities and the per-token episode loop shared by the engine and the LLM agents.

``sequence_logprobs`` scores whole sequences in one forward: how :meth:`textenv.engine.GenerationEngine.play` gets
the reference model's log-probs of a batch of finished episodes, instead of one reference decoding step per token.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable

import torch

from textenv.models import vocab_size


def sample_tokens(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row drawn from ``softmax(logits)``: ``(N, V)`` -> ``(N,)`` int64, by inverse-CDF sampling.

    Exact categorical sampling with one uniform number per row: cumulative probabilities (summed in float64, so large
    vocabularies lose no precision) and a binary search. ``torch.multinomial`` (what ``generate`` uses) draws V
    exponentials per row instead, a cost that dominates a small model's decoding step on CPU
    (``benchmarks/rollout_vs_generate.py`` compares them). Tokens whose logit is ``-inf`` are never drawn. Use
    ``generator`` for seeding.
    """
    cdf = torch.softmax(logits.float(), dim=-1).double().cumsum(dim=-1)  # (N, V)
    u = torch.rand(logits.shape[0], 1, generator=generator, device=logits.device, dtype=torch.float64)
    # right=True: the first index whose cumulative mass exceeds u * total, so zero-probability ids are skipped.
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
    return idx.squeeze(1).clamp_(max=logits.shape[1] - 1)


def token_logprob(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[i, tokens[i]]``: ``(N, V)``, ``(N,)`` -> ``(N,)``."""
    return logits.gather(1, tokens[:, None]).squeeze(1) - logits.logsumexp(-1)


def record_episodes(
    step: Callable[[torch.Tensor], tuple[dict[str, torch.Tensor], torch.Tensor]],
    num_rows: int,
    horizon: int,
    device: torch.device | str,
    check_every: int | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Play one episode per row, a token per call of ``step``, and record it: the one per-token loop of
    :meth:`GenerationEngine.play` and of agents that drive an env through ``step()`` (``agents.llm.rollout``).

    ``step(alive)`` gets the ``(N,)`` bool of rows whose episode is still running, advances every row by one token
    and returns that token's per-row values (``{name: (N,) tensor}``: actions, log-probs, ...) and the ``(N,)`` bool
    of rows whose episode ended with it. Rows whose episode ended before may do anything meanwhile (idle on padding,
    or start a new episode): their values are recorded as 0 and ``mask`` is False there. The loop stops after
    ``horizon`` calls or once no row is alive; that check is a device->host sync, so it runs every ``check_every``
    tokens (default: every token on CPU, every 8 on an accelerator; the extra steps are all masked out).

    Returns:
        ``({name: (N, T)}, mask)`` with ``mask`` ``(N, T)`` bool, True on each row's tokens, ``T`` the steps taken.
    """
    device = torch.device(device)
    alive = torch.ones(num_rows, dtype=torch.bool, device=device)
    mask = torch.zeros((num_rows, horizon), dtype=torch.bool, device=device)
    columns: dict[str, torch.Tensor] = {}
    if check_every is None:
        check_every = 1 if device.type == "cpu" else 8
    steps = 0
    for t in range(horizon):
        values, done = step(alive)
        for name, value in values.items():
            if name not in columns:
                columns[name] = torch.zeros((num_rows, horizon), dtype=value.dtype, device=device)
            columns[name][:, t] = value.where(alive, 0)
        mask[:, t] = alive
        alive = alive & ~done
        steps = t + 1
        if steps % check_every == 0 and not bool(alive.any()):
            break
    return {name: column[:, :steps] for name, column in columns.items()}, mask[:, :steps]


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Run with dropout off (rollouts and log-probs must be deterministic), restoring train mode afterwards."""
    was_training = model.training
    if was_training:
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def sequence_logprobs(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    n_scored: int,
    temperature: float = 1.0,
    max_logits_bytes: int = 256 * 2**20,
) -> torch.Tensor:
    """``log softmax(model(s_<t) / temperature)[s_t]`` of the last ``n_scored`` columns of LEFT-padded sequences.

    ``tokens``, ``mask``: ``(N, W)``, every row's sequence right-aligned (mask 1 on its tokens); ``n_scored <= W - 1``.
    Position ids are ``cumsum(mask) - 1``, as the engine's prefill uses. One teacher-forced forward over the whole
    batch, without a cache (what a KV-cached decoding step per token computes, to float rounding); rows go through in
    chunks so that the ``(rows, n_scored, V)`` float32 logits stay
    under ``max_logits_bytes``. Columns whose token is masked out get 0. Returns ``(N, n_scored)`` float32.
    """
    n, width = tokens.shape
    if not 1 <= n_scored < width:
        raise ValueError(f"n_scored must be in [1, {width - 1}], got {n_scored}")
    out = torch.zeros((n, n_scored), dtype=torch.float32, device=tokens.device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    targets = tokens[:, -n_scored:]
    rows = max(1, max_logits_bytes // (4 * n_scored * vocab_size(model)))
    keep = {"logits_to_keep": n_scored + 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    with torch.no_grad(), eval_mode(model):
        for lo in range(0, n, rows):
            hi = min(n, lo + rows)
            logits = model(input_ids=tokens[lo:hi], attention_mask=mask[lo:hi], position_ids=pos[lo:hi],
                           use_cache=False, **keep).logits[:, -n_scored - 1:-1].float()
            if temperature != 1.0:
                logits = logits / temperature
            lp = logits.gather(-1, targets[lo:hi, :, None]).squeeze(-1) - logits.logsumexp(-1)
            out[lo:hi] = lp.where(mask[lo:hi, -n_scored:].bool(), 0.0)
    return out
