"""Multi-turn episodes: TextGen-v0 with an environment that answers.

An *environment* here is a turn-level text environment with GEM's signature (``reset(seed=) -> (observation, info)``,
``step(text) -> (observation, reward, terminated, truncated, info)``, strings in and out; ``textenv.environments``).
The token-level MDP around it (``TextGenEnv(environment=...)``, ``TextGenVectorEnv(n, environment=...)``):

* The episode starts from the environment's first observation, rendered as the first user turn (the prompt).
* An action is one token, as in the single-turn env. The policy's turn ends at an end-of-turn token (EOS, or the
  chat template's end of an assistant message) or after ``max_turn_tokens`` of its tokens; its text goes to
  ``environment.step``. The environment's reward is added to the reward of the token that ended the turn; if the
  environment says ``terminated`` / ``truncated`` the episode ends there; else its observation is appended to the
  state as the next user turn (through the chat template when the tokenizer has one, as raw text otherwise) and the
  policy's next turn begins. Those appended tokens are part of the transition, never actions.
* ``max_new_tokens`` is the episode's budget of tokens after the prompt, the policy's and the environment's together:
  a reply that does not fit (with room for one more token) truncates the episode, as does the budget running out in
  the middle of a turn.

This module holds what the engine needs beside its token state: the rendering of observations into tokens
(:class:`TurnFormat`) and one environment per row with its turn bookkeeping (:class:`Conversations`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from textenv.prompts import PromptTooLongError

__all__ = ["Conversations", "Turn", "TurnFormat"]

_PROBE = [{"role": "user", "content": "\x00u"}, {"role": "assistant", "content": "\x00a"}]


class TurnFormat:
    """How a tokenizer turns observations into tokens: the first observation as a prompt, later ones as replies.

    With a chat template (``tokenizer.chat_template``) an observation is a user message: the prompt is
    ``[user: observation]`` with the generation prompt; a reply is what the template writes after an assistant
    message (its closing, then ``[user: observation]`` and the next generation prompt). Without one, observations
    are tokenized as they are. End-of-turn tokens: ``end_of_turn`` (ids or token strings) if given, else EOS plus,
    with a chat template, the special token that closes an assistant message in it (``<|im_end|>``, ``<|eot_id|>``).
    """

    def __init__(self, tokenizer: Any, end_of_turn: Sequence[int | str] | None = None):
        self.tokenizer = tokenizer
        self.chat = bool(getattr(tokenizer, "chat_template", None))
        self.closing = ""  # the text the template writes after an assistant message's content
        self.after_user = ""  # the text from there to the next generation prompt, with the user turn in between
        ends: list[int] = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
        if self.chat:
            base = tokenizer.apply_chat_template(_PROBE, tokenize=False)
            content_end = base.rfind("\x00a") + 2
            if content_end < 2:
                raise ValueError("the tokenizer's chat template drops the assistant's message; pass a tokenizer "
                                 "without a chat template (raw text turns) or one that keeps it")
            self.closing = base[content_end:]
            first = tokenizer(self.closing, add_special_tokens=False)["input_ids"] if self.closing else []
            special = set(getattr(tokenizer, "all_special_ids", []) or [])
            if first and first[0] in special:
                ends.append(int(first[0]))
        if end_of_turn is not None:
            ends = [self._token_id(x) for x in end_of_turn]
        if not ends:
            raise ValueError("no end-of-turn token: the tokenizer has no EOS; pass end_of_turn=[token ids or strings]")
        self.end_ids = tuple(dict.fromkeys(ends))

    def _token_id(self, token: int | str) -> int:
        if isinstance(token, (int, np.integer)) and not isinstance(token, bool):
            return int(token)
        if isinstance(token, str):
            ids = self.tokenizer(token, add_special_tokens=False)["input_ids"]
            if len(ids) == 1:
                return int(ids[0])
            raise ValueError(f"end_of_turn token {token!r} is {len(ids)} tokens for this tokenizer; give one token")
        raise TypeError(f"end_of_turn holds token ids or token strings, got {type(token).__name__} {token!r}")

    def prompt(self, observation: str) -> tuple[str, list[int]]:
        """The text and token ids of the episode's first turn (what the policy continues)."""
        if not self.chat:
            return observation, [int(x) for x in self.tokenizer(observation)["input_ids"]]
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": observation}], tokenize=False,
                                                  add_generation_prompt=True)
        return text, [int(x) for x in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    def reply(self, observation: str, closed: bool) -> list[int]:
        """Token ids appended after the policy's turn: the environment's ``observation`` as the next user turn.
        ``closed``: the policy ended its turn with an end-of-turn token (else it hit the per-turn limit and the
        template's closing is written for it)."""
        if not self.chat:
            return [int(x) for x in self.tokenizer(observation, add_special_tokens=False)["input_ids"]]
        text = self._between(observation)
        first = self.tokenizer(self.closing, add_special_tokens=False)["input_ids"][:1]
        if closed and first and int(first[0]) in self.end_ids:  # the policy wrote the closing's first token itself
            head = self.tokenizer.decode(first)
            at = text.find(head)
            if at >= 0 and not text[:at].strip():
                text = text[at + len(head) :]
        return [int(x) for x in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    def _between(self, observation: str) -> str:
        """The template's text from the end of an assistant message's content to the next generation prompt, with
        ``observation`` as the user turn in between."""
        full = self.tokenizer.apply_chat_template([*_PROBE, {"role": "user", "content": observation}],
                                                  tokenize=False, add_generation_prompt=True)
        base = self.tokenizer.apply_chat_template(_PROBE, tokenize=False)
        content_end = base.rfind("\x00a") + 2
        if not full.startswith(base[:content_end]):
            raise ValueError("the tokenizer's chat template renders earlier turns differently once a user turn "
                             "follows; multi-turn episodes need a template that only appends")
        return full[content_end:]


@dataclass
class Turn:
    """What the environment answered to one turn of the policy."""

    reward: float
    terminated: bool
    truncated: bool
    observation: str
    info: dict


class Conversations:
    """One environment per engine row (``factory()`` each: a ``textenv.environments`` factory of checked
    environments, whose returns are validated there), with each row's turn count, return and transcript.

    ``messages[r]`` is row ``r``'s conversation as chat messages (``user``: the environment, ``assistant``: the
    policy), for labelling and display.
    """

    def __init__(self, factory: Callable[[], Any], num_rows: int, fmt: TurnFormat, max_prompt_tokens: int):
        self.format = fmt
        self.max_prompt_tokens = int(max_prompt_tokens)
        self.envs = [factory() for _ in range(int(num_rows))]
        self.returns = np.zeros(num_rows)  # the environment's rewards so far in each row's episode
        self.turns = np.zeros(num_rows, dtype=np.int64)  # the policy's turns that the environment answered
        self.messages: list[list[dict[str, str]]] = [[] for _ in range(num_rows)]
        self.live = np.zeros(num_rows, dtype=bool)  # the environment's episode is running (reset, not yet ended)

    def start(self, rows: Sequence[int], seeds: Sequence[int | None]) -> tuple[list[str], list[list[int]]]:
        """Reset the environments of ``rows`` (with ``seeds``); their first observations, rendered: ``(texts, ids)``."""
        texts, ids = [], []
        for r, seed in zip(rows, seeds, strict=True):
            observation, _ = self.envs[r].reset(seed=None if seed is None else int(seed))
            text, tok = self.format.prompt(observation)
            if len(tok) > self.max_prompt_tokens:
                raise PromptTooLongError(
                    f"{_name(self.envs[r])}'s first observation ({observation[:60]!r}) is {len(tok)} tokens but "
                    f"max_prompt_tokens={self.max_prompt_tokens}: raise max_prompt_tokens to at least {len(tok)}")
            self.returns[r], self.turns[r], self.live[r] = 0.0, 0, True
            self.messages[r] = [{"role": "user", "content": observation}]
            texts.append(text)
            ids.append(tok)
        return texts, ids

    def respond(self, row: int, text: str) -> Turn:
        """Send the policy's turn ``text`` of ``row`` to its environment; returns what it answered."""
        observation, reward, terminated, truncated, info = self.envs[row].step(text)
        self.returns[row] += reward
        self.turns[row] += 1
        self.messages[row].append({"role": "assistant", "content": text})
        ended = bool(terminated) or bool(truncated)
        if not ended:
            self.messages[row].append({"role": "user", "content": observation})
        self.live[row] = not ended
        return Turn(reward, bool(terminated), bool(truncated), observation, info)

    def close(self) -> None:
        for env in self.envs:
            close = getattr(env, "close", None)
            if callable(close):
                close()


def _name(env: Any) -> str:
    name = getattr(env, "name", None)  # a checked environment's spec or class
    return name if isinstance(name, str) and name else type(env).__name__
