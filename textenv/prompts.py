"""Prompt sources for TextGen-v0: where the starting states s_0 come from.

``PromptSource.from_any(source)`` accepts

* a list/tuple of strings;
* a path to a ``.txt`` file (one prompt per line; blank lines are skipped);
* a path to a ``.jsonl`` file (one JSON object per line; the prompt is ``obj[field]``, default field ``"prompt"``);
* a ``datasets.Dataset`` (the column ``field``), if the ``datasets`` package is installed.

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


def read_prompts(source: Any, field: str = "prompt") -> list[str]:
    """The list of prompt strings in ``source`` (see the module docstring for the accepted kinds)."""
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
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise PromptError(f"prompt #{bad[0]} is a {type(prompts[bad[0]]).__name__}, not a string")
    if not prompts:
        raise EmptyPromptSourceError(
            f"the prompt source {_describe(source)} is empty: give at least one prompt "
            "(a list of strings, a .txt file with one prompt per line, or a .jsonl file with a prompt field)"
        )
    return prompts


def _is_dataset(obj: Any) -> bool:
    # Duck-typed so that `datasets` stays optional; a real datasets.Dataset has both attributes.
    return hasattr(obj, "column_names") and hasattr(obj, "__getitem__") and not isinstance(obj, (list, tuple))


def _describe(source: Any) -> str:
    return repr(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else f"({type(source).__name__})"


def _read_file(path: Path, field: str) -> list[str]:
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
            prompts.append(obj[field])
        return prompts
    if path.suffix not in (".txt", ""):
        raise PromptError(f"unsupported prompt file type {path.suffix!r}: use .txt (one per line) or .jsonl")
    return [line for line in text.splitlines() if line.strip()]


class PromptSource:
    """A tokenized list of prompts, sampled with a NumPy generator.

    Args:
        prompts: the prompt strings.
        tokenizer: a Hugging Face tokenizer (special tokens such as a BOS are added as the tokenizer does by default).
        max_prompt_tokens: the longest allowed prompt, in tokens.
    """

    def __init__(self, prompts: list[str], tokenizer: Any, max_prompt_tokens: int):
        if not prompts:
            raise EmptyPromptSourceError("the prompt source is empty: give at least one prompt")
        self.prompts = list(prompts)
        self.tokenizer = tokenizer
        self.max_prompt_tokens = int(max_prompt_tokens)
        self.token_ids: list[list[int]] = self.encode(self.prompts)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of ``texts``; raises ``PromptTooLongError`` naming the first prompt that does not fit."""
        encoded = self.tokenizer(list(texts), add_special_tokens=True)["input_ids"]
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
