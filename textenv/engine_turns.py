"""The multi-turn half of ``textenv.engine.GenerationEngine``: a policy's turn ends at an end-of-turn token or the
per-turn limit, its text goes to the row's environment (``textenv.conversation.Conversations``), and the reply joins
the row's state as context, never as actions. A mixin over the engine's state (``tokens``, ``mask``, ``ctx``, ``t``,
``turn_t``, the KV-cache flags), kept apart so that the single-turn engine reads on its own."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from textenv.episodes import Episodes
from textenv.rewards import validate_scores
from textenv.sampling import record_episodes, sequence_logprobs, token_logprob

__all__ = ["MultiTurnMixin"]


class MultiTurnMixin:
    """Multi-turn play and stepping for ``GenerationEngine`` (which defines every attribute used here)."""

    def _play_turns(self, sample: Callable, generator: torch.Generator | None) -> Episodes:
        """:meth:`play` of multi-turn episodes: the same per-token loop, with the turns that end sent to the rows'
        environments (one device->host transfer per token: the environments answer on the host). A row's final
        state is kept when its episode ends (it then idles on padding, which may shift its state out of the
        buffer); the episodes come back in the layout of :class:`Episodes`, replies marked by ``context_mask``."""
        n, dev = self.num_rows, self.device
        final = {"tokens": self.tokens.clone(), "mask": self.mask.clone(), "ctx": self.ctx.clone()}
        final_t, finished = self.t.copy(), np.zeros(n, dtype=bool)

        def one_token(alive: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
            self._ensure_logits()
            a = sample(self._logits, generator).where(alive, self.pad_id)
            values = {"action": a, "logp": token_logprob(self._logits, a)}
            self._append(a)
            live = alive.cpu().numpy()
            self.t[live] += 1
            self._need_decode[:], self._need_prefill[:] = True, False
            terminated, truncated, env_reward = self._turns(live, self._is_end(a).cpu().numpy())
            done = terminated | truncated
            if done.any():  # keep the final states: idling on padding shifts them
                rows = torch.as_tensor(np.flatnonzero(done), device=dev)
                for name, state in (("tokens", self.tokens), ("mask", self.mask), ("ctx", self.ctx)):
                    final[name] = final[name].index_copy(0, rows, state[rows])
                final_t[done], finished[done] = self.t[done], True
            values["env_reward"] = torch.as_tensor(env_reward, dtype=torch.float32, device=dev)
            values["terminated"] = torch.as_tensor(terminated, device=dev)
            return values, torch.as_tensor(done, device=dev)

        self._policy_only = True  # the reference scores the finished episodes in one forward
        try:
            with self._failure_ends_episodes("play()"):
                record, steps_mask = record_episodes(one_token, n, self.max_new_tokens, dev, check_every=1)
                # Every action spends one token of the budget, so max_new_tokens steps end every episode.
                assert finished.all(), "engine invariant: a multi-turn episode outlived its token budget"
                self.tokens, self.mask, self.ctx = final["tokens"], final["mask"], final["ctx"]
                self.t = final_t
                return self._end_play_turns(record, steps_mask)
        finally:
            self._policy_only = False

    def _end_play_turns(self, record: dict[str, torch.Tensor], steps_mask: torch.Tensor) -> Episodes:
        """The episodes of :meth:`_play_turns` from the rows' final states: the tokens after each prompt, right-padded,
        with each step's values (recorded per action) moved to its action's position; the reference's log-probs in
        one teacher-forced forward; reward_fn once on all conversations."""
        n, dev, L = self.num_rows, self.device, self.L
        self.pos = torch.as_tensor(self.plen + self.t - 1, device=dev)
        self.t_dev = torch.as_tensor(self.t, device=dev)
        self._need_prefill[:], self._need_decode[:] = True, False
        self._logits = self._ref_logits = None
        t = torch.as_tensor(self.t, device=dev)
        T = int(self.t.max())
        cols = torch.arange(T, device=dev)
        valid = cols[None, :] < t[:, None]
        idx = ((L - t)[:, None] + cols[None, :]).clamp_(max=L - 1)
        tokens = self.tokens.gather(1, idx).where(valid, self.pad_id)
        context = self.ctx.gather(1, idx) & valid
        acts = valid & ~context
        step_of = (acts.long().cumsum(1) - 1).clamp_(min=0)  # the k-th action of a row is its step k

        def at_actions(values: torch.Tensor) -> torch.Tensor:
            return values.gather(1, step_of).where(acts, 0)

        logp, env_reward = at_actions(record["logp"]), at_actions(record["env_reward"])
        terminated = (record["terminated"] & steps_mask).any(1).cpu().numpy()
        ref_logp = None
        if self.ref_model is not None:  # the last T columns of each row's final state hold its tokens after the prompt
            width = int((torch.as_tensor(self.plen, device=dev) + t).max())
            right = sequence_logprobs(self.ref_model, self.tokens[:, -width:], self.mask[:, -width:], T,
                                      self.temperature)
            ref_logp = right.gather(1, ((T - t)[:, None] + cols[None, :]).clamp_(max=T - 1)).where(acts, 0.0)
        kl = (logp - ref_logp) if ref_logp is not None else None
        self.kl_sum = kl.sum(1) if kl is not None else torch.zeros(n, dtype=torch.float32, device=dev)
        reward = (-self.kl.value * kl if kl is not None else torch.zeros_like(logp)) + env_reward
        rows = np.arange(n)
        prompts, responses = self._decode_episodes(rows, terminated)
        scores = np.zeros(n)
        if self.reward_fn is not None:
            scores = validate_scores(self.reward_fn(prompts, responses), n, self.reward_fn)
            last = (acts.long() * (cols + 1)).argmax(1, keepdim=True)  # each row's last action
            reward = reward.scatter_add(1, last, torch.as_tensor(scores, dtype=reward.dtype, device=dev)[:, None])
        scores = scores + self.env_weight * self.conv.returns
        kl_sums = self.kl_sum.double().cpu().numpy()
        if ref_logp is not None:
            self.kl.observe(float(kl_sums.mean()), n)
        return Episodes(tokens, acts, logp, ref_logp, reward, terminated, prompts, responses, scores, kl_sums,
                        context_mask=context, turns=self.conv.turns.copy())

    def _turns(self, active: np.ndarray, end_hit: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """After the active rows' actions were appended: end the turns that ended (an end-of-turn token, or the
        per-turn limit) by sending their text to the rows' environments and appending the replies; end the episodes
        the environments end, or that the budget cannot hold. Returns (terminated, truncated, environment reward)."""
        n, conv = self.num_rows, self.conv
        self.turn_t[active] += 1
        turn_end = active & (end_hit | (self.turn_t >= self.max_turn_tokens))
        terminated = np.zeros(n, dtype=bool)
        truncated = active & (self.t >= self.max_new_tokens) & ~turn_end
        env_reward = np.zeros(n)
        rows = np.flatnonzero(turn_end)
        if not len(rows):
            return terminated, truncated, env_reward
        width = int(self.turn_t[rows].max())
        toks = self.tokens[torch.as_tensor(rows, device=self.device), -width:].cpu().numpy()
        for j, r in enumerate(rows.tolist()):
            closed = bool(end_hit[r])
            ids = toks[j, width - self.turn_t[r] :]
            text = self.tokenizer.decode(ids[:-1] if closed else ids, skip_special_tokens=True)
            turn = conv.respond(r, text)
            env_reward[r] = self.env_weight * turn.reward
            if turn.terminated or turn.truncated:
                terminated[r], truncated[r] = turn.terminated, not turn.terminated
                continue
            reply = conv.format.reply(turn.observation, closed)
            if self.t[r] + len(reply) >= self.max_new_tokens:  # no room for the reply and one token after it
                truncated[r] = True
                continue
            self._append_reply(r, reply)
        return terminated, truncated, env_reward

    def _append_reply(self, r: int, reply: list[int]) -> None:
        """Append the environment's ``reply`` (token ids) to row ``r``'s state; its KV caches are recomputed from
        the state on the next forward (the reply is prefilled into that row alone)."""
        k, dev = len(reply), self.device
        if k:
            idx = torch.tensor([r], device=dev)
            new = torch.as_tensor(reply, dtype=torch.long, device=dev)
            # Out of place: observations already handed out (torch backend) must not change under the caller.
            self.tokens = self.tokens.index_put((idx,), torch.cat([self.tokens[r, k:], new])[None])
            self.mask = self.mask.index_put((idx,), torch.cat([self.mask[r, k:], torch.ones_like(new)])[None])
            ctx = torch.cat([self.ctx[r, k:], torch.ones_like(new, dtype=torch.bool)])
            self.ctx = self.ctx.index_put((idx,), ctx[None])
            self.pos = self.pos.index_put((idx,), self.pos[r] + k)
            self.t_dev = self.t_dev.index_put((idx,), self.t_dev[r] + k)
            self.t[r] += k
        self.turn_t[r] = 0
        self._need_prefill[r], self._need_decode[r] = True, False
        self._logits = self._ref_logits = None
