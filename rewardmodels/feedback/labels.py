"""What the label store stores: the choices and their label values, labeller names, pair ids, queries, and the
store's errors (one vocabulary for the store, the web app and the labellers; ``label_store`` re-exports it).

Labeller names (:func:`check_labeller`): 1-64 letters/digits of any script, space, ``_ . @ + -``; no leading or
trailing space, no control characters (``"alice\n"`` is refused). The name is stored as given (after Unicode NFKC
normalisation), but a PERSON is its case-folded form (:func:`labeller_key`): ``alice``, ``Alice`` and ``ALICE`` are
one person everywhere (one label per pair, one reserved pair at a time, one invitation).

Label convention (the toolkit's one convention): ``label`` = probability that the FIRST item ("a", shown on the
LEFT) is preferred: 1.0 left, 0.0 right, 0.5 equal, NaN skipped ("can't tell", never used for training).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import unicodedata
from typing import Any, Literal

import numpy as np

#: The choices a person can make, and the label each one stores.
CHOICES: dict[str, float] = {"left": 1.0, "right": 0.0, "equal": 0.5, "skip": math.nan}
KINDS = ("segment", "text")
PAIR_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
# Letters/digits of any script, space and a few separators; no control characters, quotes or markup. Used with
# fullmatch: `$` would also match before a trailing newline ("alice\n").
LABELLER_RE = re.compile(r"[\w.@+-](?:[\w .@+-]{0,62}[\w.@+-])?")


class LabelStoreError(Exception):
    """Base class of the label store's errors."""


class UnknownPairError(LabelStoreError, KeyError):
    """A pair id that was never enqueued."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "unknown pair"


class AlreadyLabelledError(LabelStoreError):
    """The pair already has all the labels it needs (or this labeller already labelled it)."""


class InvalidLabelError(LabelStoreError, ValueError):
    """A label value, labeller name, pair id or payload that is not allowed."""


class LabelTimeoutError(LabelStoreError, TimeoutError):
    """``wait_for_labels`` ran out of time before every pair was labelled."""


def parse_label(value: Any) -> tuple[float, str]:
    """``value`` (a choice name, 1 / 0 / 0.5, NaN or None for skip) -> (label, choice). Raises InvalidLabelError."""
    if isinstance(value, str):
        if value not in CHOICES:
            raise InvalidLabelError(f"label {value!r} is not one of {sorted(CHOICES)}")
        return CHOICES[value], value
    if value is None:
        return math.nan, "skip"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidLabelError(f"label must be one of {sorted(CHOICES)} or 1 / 0 / 0.5 / NaN, got {value!r}")
    value = float(value)
    if math.isnan(value):
        return math.nan, "skip"
    for choice, label in CHOICES.items():
        if label == value:
            return label, choice
    raise InvalidLabelError(f"label {value!r} is not 1 (left), 0 (right), 0.5 (equal) or NaN (skip)")


def check_labeller(name: Any) -> str:
    """``name`` in NFKC form if it is a valid labeller name (module docstring), else InvalidLabelError."""
    normal = unicodedata.normalize("NFKC", name) if isinstance(name, str) else None
    if normal is None or not LABELLER_RE.fullmatch(normal):
        raise InvalidLabelError(
            f"labeller name {name!r} must be 1-64 characters: letters, digits, space, '_', '.', '@', '+', '-', "
            f"not starting or ending with a space")
    return normal


def labeller_key(name: str) -> str:
    """The person a name stands for: NFKC + case folding, so 'Alice' and 'alice' are one person."""
    return unicodedata.normalize("NFKC", name).casefold()


def check_pair_id(pair_id: Any) -> str:
    if not isinstance(pair_id, str) or not PAIR_ID_RE.match(pair_id):
        raise InvalidLabelError(f"pair id {pair_id!r} must be 1-128 characters of [A-Za-z0-9_.:-]")
    return pair_id


@dataclasses.dataclass(frozen=True)
class Query:
    """One pair to be labelled.

    Segment payload: ``{"clip_a": rel_path, "clip_b": rel_path}`` (paths relative to the run's clip directory; shown
    side by side) or ``{"clip": rel_path}`` (one side-by-side clip, as rendered by ``rewardmodels.feedback.clips``),
    plus any JSON metadata. Text payload: ``{"prompt": str, "response_a": str, "response_b": str}`` and, for two
    conversations with an environment, ``turns_a`` / ``turns_b``: each a list of ``{"role": "user"|"assistant",
    "content": str}`` messages, which the web app shows turn by turn.
    """

    kind: Literal["segment", "text"]
    payload: dict[str, Any]
    pair_id: str | None = None
    """None -> a content hash of kind + payload, so enqueueing the same pair again is a no-op (resume)."""
    run: str = ""
    """Free tag grouping the queries of one run/iteration (the web app can show one run only)."""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise InvalidLabelError(f"query kind {self.kind!r} must be one of {KINDS}")
        if self.kind == "text":
            missing = [k for k in ("prompt", "response_a", "response_b") if not isinstance(self.payload.get(k), str)]
        else:
            has_pair = all(isinstance(self.payload.get(k), str) for k in ("clip_a", "clip_b"))
            missing = [] if has_pair or isinstance(self.payload.get("clip"), str) else ["clip_a", "clip_b"]
        if missing:
            raise InvalidLabelError(f"{self.kind} query payload lacks string field(s) {missing}")
        if self.pair_id is not None:
            check_pair_id(self.pair_id)

    @classmethod
    def segment(cls, clip_a: str, clip_b: str, pair_id: str | None = None, run: str = "", **meta) -> Query:
        return cls("segment", {"clip_a": str(clip_a), "clip_b": str(clip_b), **meta}, pair_id, run)

    @classmethod
    def text(cls, prompt: str, response_a: str, response_b: str, pair_id: str | None = None, run: str = "",
             turns: tuple[list[dict[str, str]], list[dict[str, str]]] | None = None) -> Query:
        payload: dict[str, Any] = {"prompt": prompt, "response_a": response_a, "response_b": response_b}
        if turns is not None:
            for side, messages in zip("ab", turns, strict=True):
                if not (isinstance(messages, list) and all(
                        isinstance(m, dict) and m.get("role") in ("user", "assistant")
                        and isinstance(m.get("content"), str) for m in messages)):
                    raise InvalidLabelError(f"turns_{side} must be a list of {{'role': 'user'|'assistant', "
                                            "'content': str}} messages")
                payload[f"turns_{side}"] = [{"role": m["role"], "content": m["content"]} for m in messages]
        return cls("text", payload, pair_id, run)

    @property
    def id(self) -> str:
        if self.pair_id is not None:
            return self.pair_id
        blob = json.dumps([self.kind, self.run, self.payload], sort_keys=True).encode()
        return f"{self.kind[0]}-{hashlib.sha256(blob).hexdigest()[:24]}"
