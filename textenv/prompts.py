"""Prompt sources for TextGen-v0: where the starting states s_0 come from.

``PromptSource.from_any(source)`` accepts

* a list/tuple of strings;
* a path to a ``.txt`` file (one prompt per line; blank lines are skipped);
* a path to a ``.jsonl`` file (one JSON object per line; the prompt is ``obj[field]``, default field ``"prompt"``);
* a ``datasets.Dataset`` (the column ``field``), if the ``datasets`` package is installed.

A prompt is a string or, in the conversational format of TRL datasets, a list of chat messages
(``[{"role": "user", "content": "..."}]``). Message lists are rendered to text with the tokenizer's chat template and
``add_generation_prompt=True`` (:func:`render_chat`), so the policy continues as the assistant; the template's text
already holds its special tokens, so it is tokenized without adding more (no second BOS). A tokenizer without a chat
template raises :class:`ChatTemplateError`.

Prompts are tokenized once, up front, so that a prompt longer than ``max_prompt_tokens`` is reported when the env is
built, not hours into a run. Sampling uses the env's ``np_random`` only, so seeded resets are reproducible.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


class PromptError(ValueError):
    """Base class of prompt-source errors."""


class EmptyPromptSourceError(PromptError):
    """The prompt source holds no prompts."""


class PromptTooLongError(PromptError):
    """A prompt has more tokens than ``max_prompt_tokens`` (it is never truncated silently)."""


class ChatTemplateError(PromptError):
    """Chat messages were given but the tokenizer has no chat template to render them."""


Prompt = str | list[dict[str, Any]]
"""A prompt: plain text, or a conversation (a list of ``{"role", "content"}`` messages)."""


def is_chat(obj: Any) -> bool:
    """True if ``obj`` is a conversation: a non-empty list of dicts that all have a ``role`` (TRL's
    conversational format). Only the shape is looked at; :func:`check_chat` validates the messages."""
    return isinstance(obj, (list, tuple)) and len(obj) > 0 and all(isinstance(m, dict) and "role" in m for m in obj)


def check_chat(messages: Any, where: str) -> list[dict[str, Any]]:
    """``messages`` as a list after checking that each is a dict with string ``role`` and ``content``; raises
    :class:`PromptError` naming ``where`` (e.g. ``"prompts.jsonl:3"``) and the message otherwise."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise PromptError(f"{where}: a conversation must be a non-empty list of {{'role', 'content'}} messages")
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise PromptError(
                f"{where}: message #{j} must be a dict with string 'role' and 'content' (TRL's conversational format, "
                f"e.g. {{'role': 'user', 'content': 'Hi'}}), got {m!r:.80}"
            )
    return list(messages)


def render_chat(messages: list[dict[str, Any]], tokenizer: Any, *, add_generation_prompt: bool = True,
                where: str = "chat prompt") -> str:
    """The text of ``messages`` under ``tokenizer``'s chat template (``apply_chat_template(..., tokenize=False)``).

    ``add_generation_prompt=True`` appends the template's opening of an assistant turn (what a policy continues);
    pass False to render a whole conversation, assistant turns included.

    Raises:
        ChatTemplateError: the tokenizer has no chat template.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            f"{where} is a list of chat messages, but the tokenizer ({type(tokenizer).__name__}) has no chat template "
            "to render it: use a tokenizer that has one (an instruct/chat model's), set tokenizer.chat_template to a "
            "Jinja template, or give the prompt as plain text"
        )
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def read_prompts(source: Any, field: str = "prompt") -> list[Prompt]:
    """The prompts in ``source`` (see the module docstring for the accepted kinds): strings, or conversations (lists
    of ``{"role", "content"}`` messages, checked here and rendered by :class:`PromptSource`)."""
    if isinstance(source, (str, os.PathLike)):
        prompts = _read_file(Path(source), field)
    elif _is_dataset(source):
        if field not in source.column_names:
            raise PromptError(f"the dataset has no column {field!r} (columns: {source.column_names}); pass field=...")
        prompts = list(source[field])
    elif isinstance(source, Sequence):
        prompts = list(source)
    else:
        raise PromptError(
            f"prompts must be a list of strings, a .txt/.jsonl path or a datasets.Dataset; got {type(source).__name__}"
        )
    for i, p in enumerate(prompts):
        if isinstance(p, (list, tuple)):
            prompts[i] = check_chat(p, f"prompt #{i}")
        elif not isinstance(p, str):
            raise PromptError(
                f"prompt #{i} is a {type(p).__name__}, not a string or a list of chat messages "
                "([{'role': 'user', 'content': '...'}])"
            )
    if not prompts:
        raise EmptyPromptSourceError(
            f"the prompt source {_describe(source)} is empty: give at least one prompt "
            "(a list of strings, a .txt file with one prompt per line, or a .jsonl file with a prompt field)"
        )
    return prompts


def prompt_columns(source: Any, field: str = "prompt") -> list[dict[str, Any]]:
    """The other columns of each prompt's row in ``source`` (a .jsonl file, a ``datasets.Dataset`` or its saved
    directory), in the order of :func:`read_prompts`; empty dicts for sources without columns (.txt, lists). What
    TRL-style reward functions receive as keyword arguments (``textenv.reward_functions``)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            return prompt_columns(load_saved_dataset(path), field)
        if path.suffix != ".jsonl" or not path.is_file():
            return [{} for _ in read_prompts(source, field)]
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [{k: v for k, v in row.items() if k != field} for row in rows]
    if _is_dataset(source):
        others = [c for c in source.column_names if c != field]
        return [{c: source[i][c] for c in others} for i in range(len(source))]
    return [{} for _ in read_prompts(source, field)]


def _is_dataset(obj: Any) -> bool:
    # Duck-typed so that `datasets` stays optional; a real datasets.Dataset has both attributes.
    return hasattr(obj, "column_names") and hasattr(obj, "__getitem__") and not isinstance(obj, (list, tuple))


def _describe(source: Any) -> str:
    return repr(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else f"({type(source).__name__})"


def load_saved_dataset(path: str | os.PathLike) -> Any:
    """The ``datasets.Dataset`` that ``Dataset.save_to_disk`` wrote into directory ``path`` (of a ``DatasetDict``, its
    ``train`` split, or its only one). Needs the ``datasets`` package (``pip install rlhf-gym[data]``)."""
    try:
        import datasets
    except ImportError as exc:
        raise PromptError(f"{os.fspath(path)} is a directory: reading a saved dataset needs the datasets package "
                          "(pip install 'rlhf-gym[data]'), or give a .jsonl file") from exc
    try:
        data = datasets.load_from_disk(os.fspath(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise PromptError(f"{os.fspath(path)} is a directory but not a dataset saved with Dataset.save_to_disk "
                          f"({exc}); give a .jsonl file or such a directory") from exc
    if isinstance(data, datasets.DatasetDict):
        splits = list(data)
        if "train" not in splits and len(splits) != 1:
            raise PromptError(f"{os.fspath(path)} holds the splits {splits}; save one split, or name one called train")
        data = data["train" if "train" in splits else splits[0]]
    return data


def _read_file(path: Path, field: str) -> list[str]:
    if path.is_dir():
        return read_prompts(load_saved_dataset(path), field)
    if not path.is_file():
        raise PromptError(
            f"prompt file {str(path)!r} does not exist. To give prompts directly, pass a list of strings "
            "(a single string is read as a file path)."
        )
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        prompts = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PromptError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(obj, dict) or field not in obj:
                raise PromptError(f"{path}:{lineno}: no field {field!r} in this line; pass prompt_field=<its name>")
            value = obj[field]
            if isinstance(value, list):
                value = check_chat(value, f"{path}:{lineno}: field {field!r}")
            elif not isinstance(value, str):
                raise PromptError(
                    f"{path}:{lineno}: field {field!r} is a {type(value).__name__}; a prompt is a string or a list of "
                    "chat messages"
                )
            prompts.append(value)
        return prompts
    if path.suffix not in (".txt", ""):
        raise PromptError(f"unsupported prompt file type {path.suffix!r}: use .txt (one per line) or .jsonl")
    return [line for line in text.splitlines() if line.strip()]


class PromptSource:
    """A tokenized list of prompts, sampled with a NumPy generator.

    Args:
        prompts: the prompts: strings, or conversations (lists of ``{"role", "content"}`` messages), which are
            rendered with the tokenizer's chat template (:func:`render_chat`); ``self.prompts`` holds the text.
        tokenizer: a Hugging Face tokenizer (special tokens such as a BOS are added as the tokenizer does by default;
            not to rendered conversations, whose template text carries its own).
        max_prompt_tokens: the longest allowed prompt, in tokens.
    """

    def __init__(self, prompts: list[Prompt], tokenizer: Any, max_prompt_tokens: int):
        if not prompts:
            raise EmptyPromptSourceError("the prompt source is empty: give at least one prompt")
        chat = [isinstance(p, (list, tuple)) for p in prompts]
        self.tokenizer = tokenizer
        self.prompts: list[str] = [
            render_chat(check_chat(p, f"prompt #{i}"), tokenizer, where=f"prompt #{i}") if c else p
            for i, (p, c) in enumerate(zip(prompts, chat, strict=True))
        ]
        self.max_prompt_tokens = int(max_prompt_tokens)
        self.token_ids: list[list[int]] = self.encode(self.prompts, templated=chat)

    @classmethod
    def tokenize(cls, prompts: list[Prompt], tokenizer: Any) -> list[list[int]]:
        """The token ids the env would start episodes from, with no length limit (to measure the prompts)."""
        return cls(list(prompts), tokenizer, max_prompt_tokens=2**62).token_ids

    def encode(self, texts: list[str], templated: Sequence[bool] | None = None) -> list[list[int]]:
        """Token ids of ``texts``; raises ``PromptTooLongError`` naming the first prompt that does not fit.

        ``templated[i]`` marks a text rendered by a chat template: it is tokenized without adding special tokens.
        """
        templated = [False] * len(texts) if templated is None else list(templated)
        encoded: list[list[int]] = [[] for _ in texts]
        for flag in (False, True):  # one batched call per kind
            rows = [i for i, c in enumerate(templated) if c == flag]
            if rows:
                ids = self.tokenizer([texts[i] for i in rows], add_special_tokens=not flag)["input_ids"]
                for i, row in zip(rows, ids, strict=True):
                    encoded[i] = row
        # An empty prompt conditions on a start token, as HF generate does for unconditional sampling.
        start = self.tokenizer.bos_token_id
        start = self.tokenizer.eos_token_id if start is None else start
        out: list[list[int]] = []
        for i, ids in enumerate(encoded):
            ids = [int(x) for x in ids]
            if not ids:
                if start is None:
                    raise PromptError(f"prompt #{i} ({texts[i]!r}) has no tokens and the tokenizer no BOS/EOS token")
                ids = [int(start)]
            out.append(ids)
        lengths = np.array([len(ids) for ids in out])
        longest = int(lengths.argmax())
        if lengths[longest] > self.max_prompt_tokens:
            n_long = int((lengths > self.max_prompt_tokens).sum())
            raise PromptTooLongError(
                f"prompt #{longest} ({texts[longest][:60]!r}) has {lengths[longest]} tokens but max_prompt_tokens="
                f"{self.max_prompt_tokens} ({n_long} prompt(s) are too long): raise max_prompt_tokens to at least "
                f"{lengths[longest]}, or shorten/filter those prompts. Prompts are never truncated silently."
            )
        return out

    def __len__(self) -> int:
        return len(self.prompts)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` prompt indices drawn uniformly with replacement from ``rng``."""
        return rng.integers(len(self.prompts), size=n)
