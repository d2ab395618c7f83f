"""The batched generation engine behind TextGenEnv and TextGenVectorEnv (one implementation, N rows).

State layout (all on the model's device):

* ``tokens`` and ``mask``: ``(N, L)`` int64, LEFT-padded, ``L = max_prompt_tokens + max_new_tokens``. Every row's
  state (prompt + tokens generated so far) is right-aligned, so appending an action is a shift by one column and all
  rows share the same "now" (the last column) whatever their episode step.
* ``pos``: ``(N,)`` position id of each row's last token (= state length - 1; ``cumsum(mask) - 1`` of the row).
* One KV cache per model (policy, reference) whose ``C <= L`` columns are aligned with the last ``C`` columns of
  ``tokens``. Masked columns (left padding, a previous episode's leftovers) may hold any finite values.

Per-row reset (vector autoreset) runs a prefill forward over the new prompts only and splices their K/V into the right
end of those rows of the cache (``splice_rows``); since every live token of every row lies within the last
``max(state length)`` columns, the cache is trimmed to that width before each decode step (``trim_cache``), so it
never grows past ``L``. Logits are computed lazily, once per step, and cached: ``next_token_logits()`` (the native
agents' sampling input) and ``step()`` (the reward) read the same tensor, so both paths give the same reward.

Host bookkeeping (prompt lengths, step counts) is deterministic and lives in NumPy, so the only device->host transfer
per step is the EOS check (one small tensor, as ``model.generate`` does for its stopping criterion), and none at all
when actions come from the host.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from textenv.conversation import Conversations
from textenv.decoders import fast_decoder
from textenv.engine_turns import MultiTurnMixin
from textenv.episodes import Episodes, StepResult
from textenv.kl import KLPenalty
from textenv.kvcache import cache_width, splice_rows, supports_splicing, trim_cache
from textenv.models import max_positions, pad_token_id, vocab_size
from textenv.rewards import validate_scores
from textenv.sampling import eval_mode, record_episodes, sample_tokens, sequence_logprobs, token_logprob

__all__ = ["ActionTypeError", "EpisodeEndedError", "Episodes", "GenerationEngine", "InvalidActionError", "StepResult",
           "eval_mode", "record_episodes", "sample_tokens", "token_logprob"]

logger = logging.getLogger(__name__)

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


class InvalidActionError(ValueError):
    """An action is not a token id of the vocabulary (out of range, or wrong shape)."""


class ActionTypeError(InvalidActionError, TypeError):
    """An action has the wrong type (a float, a bool, a string ...) instead of an integer token id."""


class EpisodeEndedError(RuntimeError):
    """``step()`` was called before ``reset()``, after the episode ended, or after a step that raised midway."""


# ----------------------------------------------------------------------------------------------------- the engine


class GenerationEngine(MultiTurnMixin):
    """Batched token-level MDP over ``num_rows`` rows sharing one policy (and reference) forward per step.

    Args:
        policy: a Hugging Face causal LM.
        tokenizer: its tokenizer (decodes responses; gives EOS).
        ref_model: the reference model, or None. With one, every step reports log pi_ref of the taken token and
            episodes their KL sum, whatever the penalty (0 measures the KL without penalising it).
        reward_fn: ``(prompts, responses) -> (B,)`` scores added at the last step, or None (score 0).
        num_rows: N.
        kl_coef: beta of ``r_t = -beta (log pi - log pi_ref)``: a number, or a ``textenv.kl.KLPenalty`` (adaptive
            beta), which the engine asks at every step and tells the KL of every batch of finished episodes.
        max_new_tokens: episode length limit (truncation).
        max_prompt_tokens: longest prompt; ``L = max_prompt_tokens + max_new_tokens``.
        temperature: logits are divided by it before log-softmax / sampling (both models).
        device: where the state and models live.
        use_cache: KV-cached decoding (default); False recomputes the full forward every step (reference path).
        fast_decode: decode with the hand-written step of ``textenv.decoders`` where the architecture has one (same
            logits as the model's own cached forward, without the per-call overhead of the Hugging Face module
            stack that dominates small models); False always calls the model.
        conversations: multi-turn episodes with an environment that answers (``textenv.conversation``: one
            environment per row); None: single-turn. ``max_new_tokens`` is then the episode's budget of tokens after
            the prompt (the policy's and the environment's), and ``max_turn_tokens`` the policy's tokens per turn.
        environment_reward_weight: multi-turn, the weight of the environment's rewards in the policy's reward and
            score (0: they are recorded, in ``Conversations.returns``, but not given: the RLHF setting, where a
            teacher judges by them and the policy learns from a reward model).
    """

    def __init__(
        self,
        policy: torch.nn.Module,
        tokenizer: Any,
        ref_model: torch.nn.Module | None,
        reward_fn: Callable | None,
        num_rows: int,
        kl_coef: float | KLPenalty,
        max_new_tokens: int,
        max_prompt_tokens: int,
        temperature: float,
        device: torch.device,
        use_cache: bool = True,
        fast_decode: bool = True,
        conversations: Conversations | None = None,
        max_turn_tokens: int | None = None,
        environment_reward_weight: float = 1.0,
    ):
        self.policy, self.tokenizer, self.reward_fn = policy, tokenizer, reward_fn
        self.ref_model = ref_model
        self.kl = KLPenalty.of(kl_coef)
        self._policy_only = False  # True inside play(): the reference model is not decoded token by token
        self.num_rows, self.temperature = int(num_rows), float(temperature)
        self.max_new_tokens, self.max_prompt_tokens = int(max_new_tokens), int(max_prompt_tokens)
        self.L = self.max_new_tokens + self.max_prompt_tokens
        self.device, self.use_cache = device, use_cache
        self.vocab_size = vocab_size(policy)
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = pad_token_id(tokenizer)
        n_pos = max_positions(policy)
        if n_pos is not None and self.L > n_pos:
            raise ValueError(
                f"max_prompt_tokens + max_new_tokens = {self.L} exceeds the model's {n_pos} positions: "
                "lower one of them"
            )
        params = {id(m): inspect.signature(m.forward).parameters for m in (policy, self.ref_model) if m is not None}
        self._keep_arg = {key: "logits_to_keep" in p for key, p in params.items()}
        # transformers 5.x renamed the KV-cache argument and output field from past_key_values to cache (the old
        # name warns, and goes in 5.40); older releases only know past_key_values.
        self._cache_arg = {key: "cache" if "cache" in p else "past_key_values" for key, p in params.items()}
        # With SDPA attention a ready 4D boolean mask skips transformers' per-forward mask construction (it returns
        # 4D masks as-is), and one mask then serves both models. Other attention kernels get the usual 2D mask.
        self._mask4d = all(
            getattr(getattr(m, "config", None), "_attn_implementation", None) == "sdpa" for m in self._models()
        )
        self.fast_decode = bool(fast_decode)
        self.decoders: dict[int, Any] = {}
        n, L = self.num_rows, self.L
        self.tokens = torch.full((n, L), self.pad_id, dtype=torch.long, device=device)
        self.mask = torch.zeros((n, L), dtype=torch.long, device=device)
        self.pos = torch.zeros(n, dtype=torch.long, device=device)
        self.t_dev = torch.zeros(n, dtype=torch.long, device=device)  # device twin of self.t (no H2D per step)
        self.kl_sum = torch.zeros(n, dtype=torch.float32, device=device)
        self._ones = torch.ones((n, 1), dtype=torch.long, device=device)
        self.plen = np.zeros(n, dtype=np.int64)  # prompt length per row (host)
        self.t = np.zeros(n, dtype=np.int64)  # tokens generated so far per row (host)
        self.prompt_text: list[str] = [""] * n
        self._need_prefill = np.zeros(n, dtype=bool)
        self._need_decode = np.zeros(n, dtype=bool)
        self._logits: torch.Tensor | None = None
        self._ref_logits: torch.Tensor | None = None
        self._caches: dict[int, Any] = {}
        self.failure: str | None = None  # why the rows cannot go on (a step raised midway), until all are reset
        # Multi-turn (textenv.conversation): t counts every token after the prompt (the policy's and the
        # environment's); turn_t the policy's tokens in its current turn; ctx marks the environment's tokens.
        self.conv = conversations
        self.env_weight = float(environment_reward_weight)
        self.max_turn_tokens = int(max_turn_tokens or self.max_new_tokens)
        end_ids = conversations.format.end_ids if conversations is not None else (
            () if self.eos_id is None else (int(self.eos_id),))
        self.end_ids = np.array(end_ids, dtype=np.int64)
        self._end_ids_t = torch.as_tensor(self.end_ids, device=device)
        self.turn_t = np.zeros(n, dtype=np.int64)
        self.ctx = torch.zeros((n, L), dtype=torch.bool, device=device) if conversations is not None else None

    @property
    def kl_coef(self) -> float:
        """The current beta of the KL penalty (``self.kl.value``)."""
        return self.kl.value

    # ------------------------------------------------------------------------------------------------ state changes

    def load_prompts(self, rows: np.ndarray, ids: list[list[int]], texts: list[str]) -> None:
        """Start new episodes in ``rows`` with prompts ``ids`` (token lists, each <= max_prompt_tokens)."""
        rows = np.asarray(rows, dtype=np.int64)
        k, L = len(rows), self.L
        tok = np.full((k, L), self.pad_id, dtype=np.int64)
        msk = np.zeros((k, L), dtype=np.int64)
        plen = np.array([len(x) for x in ids], dtype=np.int64)
        for j, x in enumerate(ids):  # host-side, once per episode, not per token
            tok[j, L - len(x) :] = x
            msk[j, L - len(x) :] = 1
        idx = torch.as_tensor(rows, device=self.device)
        # Out of place: obs tensors already handed out (torch backend) must not change under the caller.
        self.tokens = self.tokens.index_put((idx,), torch.as_tensor(tok, device=self.device))
        self.mask = self.mask.index_put((idx,), torch.as_tensor(msk, device=self.device))
        self.pos = self.pos.index_put((idx,), torch.as_tensor(plen - 1, device=self.device))
        self.kl_sum = self.kl_sum.index_fill(0, idx, 0.0)
        self.t_dev = self.t_dev.index_fill(0, idx, 0)
        self.plen[rows], self.t[rows], self.turn_t[rows] = plen, 0, 0
        if self.ctx is not None:
            self.ctx = self.ctx.index_fill(0, idx, False)
        for r, text in zip(rows.tolist(), texts, strict=True):
            self.prompt_text[r] = text
        self._need_prefill[rows], self._need_decode[rows] = True, False
        self._logits = self._ref_logits = None
        if self.failure is not None and np.isin(np.arange(self.num_rows), rows).all():
            self.failure = None  # every row starts afresh: nothing of the interrupted step is left

    def refresh(self) -> None:
        """Recompute the KV caches from the token state on the next forward. Call this after changing the policy's
        (or reference's) weights in the middle of episodes: cached K/V were made by the old weights."""
        self._need_prefill[:], self._need_decode[:] = True, False
        self._logits = self._ref_logits = None

    def next_token_logits(self) -> torch.Tensor:
        """``(N, V)`` float32 policy logits at the current states, divided by the temperature (cached)."""
        with self._failure_ends_episodes("next_token_logits()"):  # a forward that raised may have half-updated caches
            self._ensure_logits()
        assert self._logits is not None
        return self._logits

    def ensure_usable(self) -> None:
        """Raise ``EpisodeEndedError`` if an earlier call raised midway (see :meth:`step`): new prompts are needed."""
        if self.failure is not None:
            raise EpisodeEndedError(f"{self.failure}, which ended the episodes in progress: call reset() before step()")

    @contextlib.contextmanager
    def _failure_ends_episodes(self, call: str):
        """Check :meth:`ensure_usable`, then run the block: any exception from it (``reward_fn``, a model, Ctrl-C)
        propagates, with a note, and ends every row's episode: the state may hold the step's action, so going on
        would lengthen the episode or score it twice."""
        self.ensure_usable()
        try:
            yield
        except BaseException as exc:
            self.failure = f"an earlier {call} raised {type(exc).__name__}: {exc}"
            exc.add_note(f"TextGen-v0: {call} did not complete; the episodes in progress ended unscored: call reset()")
            raise

    def step(
        self,
        actions: Any,
        reset_rows: np.ndarray | None = None,
        reset_ids: list[list[int]] | None = None,
        reset_texts: list[str] | None = None,
    ) -> StepResult:
        """Append ``actions`` (N,) to the rows not in ``reset_rows``; start new episodes in ``reset_rows`` (their
        actions are ignored: Gymnasium's next-step autoreset). Returns rewards and which episodes ended.

        Invalid actions raise ``InvalidActionError`` before anything changes. Any later exception (``reward_fn``, e.g.
        a reward server's ``ConnectionError``; a model; Ctrl-C) propagates and ends every row's episode: ``step``,
        ``play`` and ``next_token_logits`` raise ``EpisodeEndedError`` until :meth:`load_prompts` filled every row.
        """
        active = np.ones(self.num_rows, dtype=bool)
        if reset_rows is not None and len(reset_rows):
            active[reset_rows] = False
        a, eos_hit, eos_t = self._check_actions(actions, active)
        with self._failure_ends_episodes("step()"):
            res = self._advance(a, active, eos_hit, eos_t)
            if not active.all():
                self.load_prompts(reset_rows, reset_ids, reset_texts)
        return res

    def _advance(self, a: torch.Tensor, active: np.ndarray, eos_hit: np.ndarray, eos_t: torch.Tensor | None):
        """:meth:`step` after the action checks: append ``a`` to the active rows, reward them, score ended episodes."""
        n = self.num_rows
        any_active = bool(active.any())
        act_t = None if active.all() else torch.as_tensor(active, device=self.device)
        if any_active:
            self._ensure_logits()
            logits = self._logits
            lp = token_logprob(logits, a)  # log pi(a|s), (N,)
            if self.ref_model is not None:
                rlp = token_logprob(self._ref_logits, a)
                kl = lp - rlp  # the per-token KL estimate of Ziegler et al. 2019 / Stiennon et al. 2020
                reward = -self.kl.value * kl
            else:
                rlp, kl, reward = None, None, torch.zeros_like(lp)
            if act_t is not None:
                reward, lp = reward.where(act_t, 0.0), lp.where(act_t, 0.0)
                rlp = rlp.where(act_t, 0.0) if rlp is not None else None
                kl = kl.where(act_t, 0.0) if kl is not None else None
            if kl is not None:
                self.kl_sum = self.kl_sum + kl
        else:
            reward = lp = torch.zeros(n, dtype=torch.float32, device=self.device)
            rlp = torch.zeros_like(lp) if self.ref_model is not None else None
        # The oldest column is padding or, for rows being reset, irrelevant: step()'s load_prompts overwrites it.
        self._append(a)
        self.t[active] += 1
        self.t_dev = self.t_dev + (1 if act_t is None else act_t.long())
        self._need_decode[:], self._need_prefill[:] = active, False
        if self.conv is None:
            terminated = eos_hit & active
            truncated = (self.t >= self.max_new_tokens) & active & ~terminated
        else:  # the turns that ended go to their environments (host-side), whose replies join those rows' states
            terminated, truncated, env_reward = self._turns(active, eos_hit)
            if env_reward.any():
                reward = reward + torch.as_tensor(env_reward, dtype=reward.dtype, device=self.device)
            eos_t = None  # the episode ends are the environments' (host) answers
        ended = np.flatnonzero(terminated | truncated)
        term_t = trunc_t = None
        if eos_t is not None:
            term_t = eos_t if act_t is None else eos_t & act_t
            trunc_t = (self.t_dev >= self.max_new_tokens) & ~term_t
            trunc_t = trunc_t if act_t is None else trunc_t & act_t
        prompts, responses, scores, kl_sums = [], [], np.zeros(0), np.zeros(0)
        if len(ended):
            prompts, responses = self._decode_episodes(ended, terminated)
            scores = np.zeros(len(ended))
            if self.reward_fn is not None:
                scores = validate_scores(self.reward_fn(prompts, responses), len(ended), self.reward_fn)
                idx = torch.as_tensor(ended, device=self.device)
                reward = reward.index_add(0, idx, torch.as_tensor(scores, dtype=reward.dtype, device=self.device))
            if self.conv is not None:  # the episode's score: reward_fn's and the environment's (already rewarded)
                scores = scores + self.env_weight * self.conv.returns[ended]
            kl_sums = self.kl_sum[torch.as_tensor(ended, device=self.device)].double().cpu().numpy()
            if self.ref_model is not None:
                self.kl.observe(float(kl_sums.mean()), len(ended))  # an adaptive beta follows the finished episodes
        return StepResult(
            reward, lp, rlp, active, terminated, truncated, term_t, trunc_t, ended, prompts, responses, scores, kl_sums
        )

    @torch.no_grad()
    def play(
        self,
        sample: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] = sample_tokens,
        generator: torch.Generator | None = None,
    ) -> Episodes:
        """Play every row's episode from its start (``t = 0`` in all rows) to its end; return the whole episodes.

        The same MDP as calling :meth:`step` with ``actions = sample(next_token_logits(), generator)`` until each row's
        episode has ended, token for token (same actions, log-probs, rewards, scores), but without what only a
        step-by-step driver needs: no per-token action checks, text decoding or reward calls (``reward_fn`` runs once,
        on all N episodes), no reference decoding step per token (the reference scores the finished episodes in one
        teacher-forced forward: the same log-probs to float rounding), no autoreset of rows that finish early (they idle
        on a masked padding token until the last row ends). ``sample`` must draw one token per row from ``(N, V)``
        logits and consume ``generator`` the same way whatever the logits (as :func:`sample_tokens` and
        ``torch.multinomial`` do), so that a row's draws do not depend on when other rows end.

        Afterwards every row holds its final state (prompt + response, right-aligned); the caches are rebuilt on the
        next forward.
        """
        self.ensure_usable()
        if (self.t != 0).any():
            raise RuntimeError("play() plays episodes from their start: load new prompts (reset) first")
        if self.conv is not None:
            return self._play_turns(sample, generator)
        eos_id = -1 if self.eos_id is None else self.eos_id

        def one_token(alive: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
            self._ensure_logits()
            a = sample(self._logits, generator).where(alive, self.pad_id)
            values = {"action": a, "logp": token_logprob(self._logits, a)}
            # Every row shifts by one column (the shared "now"); ended rows append masked-out padding, which
            # _end_play moves into the left padding.
            self._append(a)
            self.t += 1
            self._need_decode[:] = True
            return values, a == eos_id

        self._policy_only = True  # the reference scores the finished episodes in one forward (_end_play)
        try:
            with self._failure_ends_episodes("play()"):
                record, mask = record_episodes(one_token, self.num_rows, self.max_new_tokens, self.device)
                return self._end_play(record["action"], mask, record["logp"], eos_id)
        finally:
            self._policy_only = False

    def _end_play(self, tokens: torch.Tensor, mask: torch.Tensor, logp: torch.Tensor, eos_id: int) -> Episodes:
        """Set the final states (prompt + response, right-aligned) after :meth:`play`, score the episodes once (the
        reference model: one teacher-forced forward over all of them) and return them."""
        n, dev = self.num_rows, self.device
        lengths = mask.sum(1)
        terminated = ((tokens == eos_id) & mask).any(1)
        # Ended rows' idle columns move to the left padding.
        width = self.L - mask.shape[1]
        state_tok = torch.cat([self.tokens[:, :width], tokens.where(mask, self.pad_id)], dim=1)
        state_msk = torch.cat([self.mask[:, :width], mask.long()], dim=1)
        order = torch.sort(state_msk.to(torch.int8), dim=1, stable=True).indices
        self.tokens, self.mask = state_tok.gather(1, order), state_msk.gather(1, order)
        lengths_h, terminated_h = lengths.cpu().numpy(), terminated.cpu().numpy()
        self.t = lengths_h.astype(np.int64)
        self.pos = torch.as_tensor(self.plen + self.t - 1, device=dev)
        self.t_dev = lengths.clone()
        self._need_prefill[:], self._need_decode[:] = True, False
        ref_logp = None
        if self.ref_model is not None:  # row i's token t sits at column T - len_i + t of the last T columns
            steps = mask.shape[1]
            width = int((torch.as_tensor(self.plen, device=dev) + lengths).max())
            right = sequence_logprobs(self.ref_model, self.tokens[:, -width:], self.mask[:, -width:], steps,
                                      self.temperature)
            idx = ((steps - lengths)[:, None] + torch.arange(steps, device=dev)).clamp_(max=steps - 1)
            ref_logp = right.gather(1, idx).where(mask, 0.0)
        kl = (logp - ref_logp) if ref_logp is not None else None
        self.kl_sum = kl.sum(1) if kl is not None else torch.zeros(n, dtype=torch.float32, device=dev)
        reward = -self.kl.value * kl if kl is not None else torch.zeros_like(logp)
        rows = np.arange(n)
        prompts, responses = self._decode_episodes(rows, terminated_h)
        scores = np.zeros(n)
        if self.reward_fn is not None:
            scores = validate_scores(self.reward_fn(prompts, responses), n, self.reward_fn)
            last = (lengths - 1).clamp(min=0)[:, None]
            reward = reward.scatter_add(1, last, torch.as_tensor(scores, dtype=reward.dtype, device=dev)[:, None])
        kl_sums = self.kl_sum.double().cpu().numpy()
        if ref_logp is not None:
            self.kl.observe(float(kl_sums.mean()), n)  # after the rewards above: they used the beta of this batch
        return Episodes(
            tokens.masked_fill(~mask, self.pad_id),
            mask,
            logp,
            ref_logp,
            reward,
            terminated_h,
            prompts,
            responses,
            scores,
            kl_sums,
        )

    def _append(self, a: torch.Tensor) -> None:
        """``s_{t+1} = [s_t, a_t]`` in every row: shift the state left by one column and write ``a`` (N,) into the
        last; the cached logits are stale afterwards."""
        self.tokens = torch.cat([self.tokens[:, 1:], a[:, None]], dim=1)
        self.mask = torch.cat([self.mask[:, 1:], self._ones], dim=1)
        if self.ctx is not None:
            self.ctx = torch.cat([self.ctx[:, 1:], self.ctx.new_zeros((self.num_rows, 1))], dim=1)
        self.pos = self.pos + 1
        self._logits = self._ref_logits = None

    # -------------------------------------------------------------------------------------------------- internals

    def _check_actions(self, actions: Any, active: np.ndarray) -> tuple[torch.Tensor, np.ndarray, torch.Tensor | None]:
        """Validate actions; return them as a (N,) long tensor on the device, the host EOS mask and, for tensor
        actions, the device EOS mask."""
        n, V = self.num_rows, self.vocab_size
        if torch.is_tensor(actions):
            if actions.dtype not in _INT_DTYPES:
                raise ActionTypeError(f"actions must be integer token ids, got a tensor of dtype {actions.dtype}")
            if tuple(actions.shape) != (n,):
                raise InvalidActionError(f"expected actions of shape ({n},), got {tuple(actions.shape)}")
            a = actions.to(self.device, torch.long)
            if not active.all():
                a = a.where(torch.as_tensor(active, device=self.device), self.pad_id)
            bad = ((a < 0) | (a >= V)).any()
            eos = self._is_end(a)
            flags = torch.cat([bad[None], eos]).cpu().numpy()  # the one device->host transfer of a step
            if flags[0]:
                first = int(torch.nonzero((a < 0) | (a >= V))[0, 0])
                raise InvalidActionError(
                    f"action {int(a[first])} (row {first}) is not a token id: the action space is Discrete({V}), "
                    f"ids 0..{V - 1}"
                )
            return a, flags[1:].astype(bool), eos
        arr = np.asarray(actions)
        if arr.dtype.kind not in "iu":
            raise ActionTypeError(
                f"actions must be integer token ids, got {arr.dtype} ({type(actions).__name__}); "
                "pass ints, an integer NumPy array or an integer tensor"
            )
        if arr.shape != (n,):
            raise InvalidActionError(f"expected actions of shape ({n},), got {arr.shape}")
        arr = np.where(active, arr, self.pad_id).astype(np.int64)
        bad = np.flatnonzero((arr < 0) | (arr >= V))
        if len(bad):
            raise InvalidActionError(
                f"action {arr[bad[0]]} (row {bad[0]}) is not a token id: the action space is Discrete({V}), "
                f"ids 0..{V - 1}"
            )
        eos = arr == self.end_ids[0] if len(self.end_ids) == 1 else np.isin(arr, self.end_ids)
        return torch.from_numpy(arr).to(self.device), eos, None

    def _is_end(self, a: torch.Tensor) -> torch.Tensor:
        """(N,) bool on the device: ``a`` is an end-of-turn token (single-turn: EOS, which ends the episode)."""
        if len(self.end_ids) == 1:
            return a == int(self.end_ids[0])
        return torch.isin(a, self._end_ids_t)

    def _decode_episodes(self, rows: np.ndarray, terminated: np.ndarray) -> tuple[list[str], list[str]]:
        toks = self.tokens[torch.as_tensor(rows, device=self.device)].cpu().numpy()
        resp = []
        for j, r in enumerate(rows.tolist()):
            ids = toks[j, self.L - self.t[r] :]
            if len(ids) and ids[-1] in self.end_ids:
                ids = ids[:-1]  # the EOS (end-of-turn) token is the "stop" action, not text
            resp.append(ids.tolist())
        return [self.prompt_text[r] for r in rows.tolist()], self.tokenizer.batch_decode(resp, skip_special_tokens=True)

    def _models(self) -> list[torch.nn.Module]:
        return [self.policy] if self.ref_model is None or self._policy_only else [self.policy, self.ref_model]

    def _forward(self, model, input_ids, attention_mask, position_ids, cache=None, use_cache=True):
        kwargs = {"logits_to_keep": 1} if self._keep_arg.get(id(model), False) else {}
        cache_arg = self._cache_arg.get(id(model), "past_key_values")
        kwargs.update({cache_arg: cache, "attention_mask": attention_mask, "position_ids": position_ids})
        with torch.no_grad(), eval_mode(model):
            out = model(input_ids=input_ids, use_cache=use_cache, **kwargs)
        return self._scaled(out.logits[:, -1].float()), (out[cache_arg] if use_cache else None)

    def _scaled(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.temperature if self.temperature != 1.0 else logits

    def _ensure_logits(self) -> None:
        if self._logits is not None:
            return
        state_len = self.plen + self.t
        if not self.use_cache:
            w = int(state_len.max())
            ids, msk = self.tokens[:, -w:], self.mask[:, -w:]
            pos = (msk.cumsum(-1) - 1).clamp_(min=0)
            outs = [self._forward(m, ids, msk, pos, use_cache=False)[0] for m in self._models()]
            self._set_logits(outs)
            self._need_prefill[:], self._need_decode[:] = False, False
            return
        decode, prefill = self._need_decode, self._need_prefill
        assert bool((decode ^ prefill).all()), "engine invariant: each row needs exactly one of decode/prefill"
        outs: list[torch.Tensor | None] = [None] * len(self._models())
        if decode.any():
            width = int(state_len[decode].max())  # includes the pending token, which is not in the cache yet
            ids, pos, masks = self.tokens[:, -1:], self.pos[:, None], {}
            for i, m in enumerate(self._models()):
                cache, decoder = self._caches[id(m)], self.decoders.get(id(m))
                trim_cache(cache, width - 1)
                c = cache_width(cache) + 1
                as4d = self._mask4d or decoder is not None
                if (c, as4d) not in masks:
                    masks[c, as4d] = self.mask[:, -c:].bool()[:, None, None, :] if as4d else self.mask[:, -c:]
                if decoder is not None:
                    outs[i] = self._scaled(decoder.step(ids, masks[c, as4d], pos, cache).float())
                else:
                    outs[i], self._caches[id(m)] = self._forward(m, ids, masks[c, as4d], pos, cache)
        if prefill.any():
            rows = np.flatnonzero(prefill)
            w = int(state_len[rows].max())
            everything = len(rows) == self.num_rows
            idx = None if everything else torch.as_tensor(rows, device=self.device)
            ids = self.tokens[:, -w:] if everything else self.tokens[idx, -w:]
            msk = self.mask[:, -w:] if everything else self.mask[idx, -w:]
            pos = (msk.cumsum(-1) - 1).clamp_(min=0)
            if everything:  # once per batch of episodes: re-check the models (hooks, adapters may have come since)
                self.decoders = {id(m): fast_decoder(m) if self.fast_decode else None for m in self._models()}
            for i, m in enumerate(self._models()):
                decoder = self.decoders.get(id(m))
                if decoder is not None:
                    logits, new = decoder.prefill(ids, msk, pos)
                    logits = self._scaled(logits.float())
                else:
                    logits, new = self._forward(m, ids, msk, pos, None)
                if not supports_splicing(new):
                    logger.warning("unsupported KV-cache layout for %s: recomputing every step", type(m).__name__)
                    self.use_cache = False
                    self._ensure_logits()
                    return
                if everything:
                    outs[i], self._caches[id(m)] = logits, new
                else:
                    splice_rows(self._caches[id(m)], idx, new)
                    outs[i] = outs[i].index_put((idx,), logits)
        self._set_logits(outs)
        self._need_prefill[:], self._need_decode[:] = False, False

    def _set_logits(self, outs: list) -> None:
        self._logits = outs[0]
        self._ref_logits = outs[1] if len(outs) > 1 else None
