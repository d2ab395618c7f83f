"""Preference data over text completions: pairs, rankings -> pairs, JSONL files and Elo ratings.

One label convention everywhere: ``label`` is the probability that the FIRST response (``response_a``, shown on the
left) is preferred: 1.0 = a preferred, 0.0 = b preferred, 0.5 = tie, NaN = skipped ("can't tell"; kept in files,
never used for training).

File format (JSONL, one pair per line; what :meth:`TextPreferencePairs.save` writes)::

    {"prompt": "...", "response_a": "...", "response_b": "...", "label": 1.0}     # label null = skipped

:meth:`TextPreferencePairs.load` also reads chosen/rejected records (``{"prompt", "chosen", "rejected"}``, the layout
of Anthropic HH-RLHF and TRL datasets) as label 1.0.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from textenv.files import atomic_write_text

__all__ = [
    "EmptyResponseError",
    "IdenticalResponsesError",
    "TextPair",
    "TextPreferenceError",
    "TextPreferenceFileError",
    "TextPreferencePairs",
    "elo_ratings",
]


class TextPreferenceError(ValueError):
    """Invalid text preference data."""


class EmptyResponseError(TextPreferenceError):
    """A pair holds an empty (or whitespace-only) response."""


class IdenticalResponsesError(TextPreferenceError):
    """A pair compares a response with itself: the label carries no information."""


class TextPreferenceFileError(TextPreferenceError):
    """A preference JSONL file is corrupted or not in the expected format."""


class TextPair(NamedTuple):
    """One labelled comparison (``label`` = P(response_a preferred))."""

    prompt: str
    response_a: str
    response_b: str
    label: float


def _valid_label(x: float) -> bool:
    return math.isnan(x) or x in (0.0, 0.5, 1.0)


@dataclass
class TextPreferencePairs:
    """A column-oriented batch of labelled text comparisons.

    Fields (all of length N):
        prompts: the prompt of each pair (may be empty for unconditional generation).
        responses_a: the first (left) responses.
        responses_b: the second (right) responses.
        labels: float32 array (N,) in {0, 0.5, 1, NaN}: P(response_a preferred).

    Raises:
        EmptyResponseError / IdenticalResponsesError / TextPreferenceError on construction (and on load), naming the
        offending pair.
    """

    prompts: list[str]
    responses_a: list[str]
    responses_b: list[str]
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.prompts, self.responses_a, self.responses_b = list(self.prompts), list(self.responses_a), list(
            self.responses_b
        )
        self.labels = np.asarray(self.labels, dtype=np.float32).reshape(-1)
        n = len(self.prompts)
        if not (len(self.responses_a) == len(self.responses_b) == len(self.labels) == n):
            raise TextPreferenceError(
                f"prompts, responses_a, responses_b and labels must have the same length; got {n}, "
                f"{len(self.responses_a)}, {len(self.responses_b)}, {len(self.labels)}"
            )
        columns = zip(self.prompts, self.responses_a, self.responses_b, self.labels.tolist(), strict=True)
        for i, (p, a, b, y) in enumerate(columns):
            _check_pair(i, p, a, b, y)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_chosen_rejected(
        cls, prompts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str]
    ) -> TextPreferencePairs:
        """Pairs with ``response_a = chosen``, ``response_b = rejected`` and label 1."""
        return cls(list(prompts), list(chosen), list(rejected), np.ones(len(prompts), dtype=np.float32))

    @classmethod
    def from_rankings(
        cls,
        prompts: Sequence[str],
        rankings: Sequence[Sequence[str]],
        rng: np.random.Generator | int | None = None,
    ) -> TextPreferencePairs:
        """Expand rankings of K responses (best first) into their K(K-1)/2 pairwise comparisons.

        InstructGPT (Ouyang et al. 2022, arXiv:2203.02155, section 3.5) collects rankings of K = 4..9 completions per
        prompt and trains on all K(K-1)/2 pairs, keeping the pairs of one prompt together in a batch (they are highly
        correlated, so shuffling them apart overfits); the pairs here come out grouped by prompt in that spirit.

        Args:
            prompts: one prompt per ranking.
            rankings: ``rankings[i]`` lists the responses to ``prompts[i]``, most preferred first (K >= 2).
            rng: if given (a Generator or a seed), each pair's sides are swapped with probability 1/2 (label 0 then),
                so that the better response is not always on the left; None keeps the better one as ``response_a``.
        """
        if len(prompts) != len(rankings):
            raise TextPreferenceError(f"got {len(prompts)} prompts but {len(rankings)} rankings; give one per prompt")
        gen = np.random.default_rng(rng) if rng is not None else None
        out_p, out_a, out_b, out_y = [], [], [], []
        for i, (prompt, ranking) in enumerate(zip(prompts, rankings, strict=True)):
            ranking = list(ranking)
            if len(ranking) < 2:
                raise TextPreferenceError(f"ranking #{i} has {len(ranking)} response(s); a ranking needs K >= 2")
            for hi in range(len(ranking)):
                for lo in range(hi + 1, len(ranking)):
                    better, worse = ranking[hi], ranking[lo]
                    swap = gen is not None and gen.random() < 0.5
                    out_p.append(prompt)
                    out_a.append(worse if swap else better)
                    out_b.append(better if swap else worse)
                    out_y.append(0.0 if swap else 1.0)
        return cls(out_p, out_a, out_b, np.asarray(out_y, dtype=np.float32))

    # ------------------------------------------------------------------ container protocol
    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self) -> Iterator[TextPair]:
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, index: int | slice | Sequence[int] | np.ndarray):  # -> TextPair | TextPreferencePairs
        """An int gives one :class:`TextPair`; a slice, index list or boolean mask gives a subset."""
        if isinstance(index, (int, np.integer)):
            i = int(index)
            return TextPair(self.prompts[i], self.responses_a[i], self.responses_b[i], float(self.labels[i]))
        idx = np.arange(len(self))[index]
        return self._take(idx)

    def _take(self, idx: np.ndarray) -> TextPreferencePairs:
        idx = [int(i) for i in np.asarray(idx).reshape(-1)]
        return TextPreferencePairs(
            [self.prompts[i] for i in idx],
            [self.responses_a[i] for i in idx],
            [self.responses_b[i] for i in idx],
            self.labels[idx] if idx else np.zeros(0, dtype=np.float32),
        )

    def append(self, other: TextPreferencePairs) -> TextPreferencePairs:
        """A new object holding ``self``'s pairs followed by ``other``'s."""
        return TextPreferencePairs(
            self.prompts + other.prompts,
            self.responses_a + other.responses_a,
            self.responses_b + other.responses_b,
            np.concatenate([self.labels, other.labels]),
        )

    # ------------------------------------------------------------------ views
    def labelled(self) -> TextPreferencePairs:
        """The pairs whose label is not NaN (skipped queries removed): the training set."""
        return self._take(np.flatnonzero(~np.isnan(self.labels)))

    def strict(self) -> TextPreferencePairs:
        """The pairs with a strict preference (label 0 or 1): no ties, no skips."""
        return self._take(np.flatnonzero((self.labels == 0.0) | (self.labels == 1.0)))

    def _require_strict(self, what: str) -> None:
        if not np.all((self.labels == 0.0) | (self.labels == 1.0)):
            raise TextPreferenceError(
                f"{what} is defined only for strict preferences, but these pairs contain ties (0.5) or skips (NaN); "
                f"use pairs.strict().{what}"
            )

    @property
    def chosen(self) -> list[str]:
        """The preferred response of each pair (aligned with ``prompts``); requires labels in {0, 1}."""
        self._require_strict("chosen")
        return [a if y == 1.0 else b for a, b, y in zip(self.responses_a, self.responses_b, self.labels, strict=True)]

    @property
    def rejected(self) -> list[str]:
        """The dispreferred response of each pair (aligned with ``prompts``); requires labels in {0, 1}."""
        self._require_strict("rejected")
        return [b if y == 1.0 else a for a, b, y in zip(self.responses_a, self.responses_b, self.labels, strict=True)]

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> None:
        """Write JSONL atomically (``textenv.files.atomic_write_text``: a failed save keeps the old file)."""
        lines = [
            json.dumps(
                {"prompt": p, "response_a": a, "response_b": b, "label": None if math.isnan(y) else float(y)},
                ensure_ascii=False,
            )
            for p, a, b, y in zip(self.prompts, self.responses_a, self.responses_b, self.labels.tolist(), strict=True)
        ]
        atomic_write_text(path, "".join(line + "\n" for line in lines))

    @classmethod
    def load(cls, path: str | os.PathLike) -> TextPreferencePairs:
        """Read a JSONL file written by :meth:`save` (or chosen/rejected records).

        Raises:
            FileNotFoundError: no such file.
            TextPreferenceFileError: a line is not JSON or lacks the fields (the message names the line).
            EmptyResponseError / IdenticalResponsesError: invalid pairs (the message names the line).
        """
        prompts, resp_a, resp_b, labels = [], [], [], []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise TextPreferenceFileError(
                        f"{where}: not valid JSON ({exc.msg}); the file may be truncated or corrupted"
                    ) from exc
                p, a, b, y = _parse_record(rec, where)
                try:
                    _check_pair(lineno, p, a, b, y)
                except TextPreferenceError as exc:
                    raise type(exc)(f"{where}: {exc}") from None
                prompts.append(p)
                resp_a.append(a)
                resp_b.append(b)
                labels.append(y)
        return cls(prompts, resp_a, resp_b, np.asarray(labels, dtype=np.float32))


def _parse_record(rec: object, where: str) -> tuple[str, str, str, float]:
    if not isinstance(rec, dict):
        raise TextPreferenceFileError(f"{where}: expected a JSON object per line, got {type(rec).__name__}")
    prompt = rec.get("prompt", "")
    if "response_a" in rec and "response_b" in rec:
        a, b = rec["response_a"], rec["response_b"]
        if "label" not in rec:
            raise TextPreferenceFileError(f"{where}: record has response_a/response_b but no 'label' (null = skipped)")
        label = rec["label"]
        y = float("nan") if label is None else label
    elif "chosen" in rec and "rejected" in rec:
        a, b, y = rec["chosen"], rec["rejected"], 1.0
    else:
        raise TextPreferenceFileError(
            f"{where}: expected keys prompt, response_a, response_b, label (or prompt, chosen, rejected); "
            f"got {sorted(rec)}"
        )
    if not all(isinstance(s, str) for s in (prompt, a, b)):
        raise TextPreferenceFileError(f"{where}: prompt and responses must be strings")
    if not isinstance(y, (int, float)) or isinstance(y, bool):
        raise TextPreferenceFileError(f"{where}: label must be a number in {{0, 0.5, 1}} or null, got {y!r}")
    return prompt, a, b, float(y)


def _check_pair(i: int, prompt: object, a: object, b: object, label: float) -> None:
    if not all(isinstance(s, str) for s in (prompt, a, b)):
        raise TextPreferenceError(f"pair #{i}: prompt and responses must be str, got "
                                  f"{type(prompt).__name__}, {type(a).__name__}, {type(b).__name__}")
    for side, r in (("response_a", a), ("response_b", b)):
        if not r.strip():
            raise EmptyResponseError(
                f"pair #{i}: {side} is empty; an empty completion cannot be compared, drop the pair (or represent "
                "'no answer' with explicit text)"
            )
    if a.strip() == b.strip():
        raise IdenticalResponsesError(
            f"pair #{i}: response_a and response_b are identical ({a[:60]!r}); such a pair carries no preference "
            "information, drop it (or resample one of the responses)"
        )
    if not _valid_label(label):
        raise TextPreferenceError(
            f"pair #{i}: label {label!r} is not one of 0 (b preferred), 0.5 (tie), 1 (a preferred), NaN (skipped)"
        )


def elo_ratings(
    data: TextPreferencePairs | Sequence[Sequence[Hashable]],
    k: float = 32.0,
    initial: float = 1000.0,
) -> dict[Hashable, float]:
    """Elo ratings (Elo 1978) from pairwise games, applied sequentially in the order given.

    For a game between x and y with score ``S`` in {1, 0.5, 0} for x::

        E_x = 1 / (1 + 10^((R_y - R_x) / 400)),   R_x += k (S - E_x),   R_y -= k (S - E_x)

    Args:
        data: either :class:`TextPreferencePairs` (players are the response strings; label 1 = a wins,
            0.5 = draw, NaN = skipped), or rankings: sequences of hashable items, best first, each expanded into its
            K(K-1)/2 games in order (1st vs 2nd, 1st vs 3rd, ..., 2nd vs 3rd, ...).
        k: the K-factor (update size).
        initial: the rating of an unseen player.

    Returns:
        ``{player: rating}``. Elo is order dependent; shuffle or iterate games yourself for order-free estimates.
    """
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    ratings: dict[Hashable, float] = {}

    def play(x: Hashable, y: Hashable, score: float) -> None:
        rx, ry = ratings.setdefault(x, initial), ratings.setdefault(y, initial)
        expected = 1.0 / (1.0 + 10.0 ** ((ry - rx) / 400.0))
        ratings[x] = rx + k * (score - expected)
        ratings[y] = ry - k * (score - expected)

    if isinstance(data, TextPreferencePairs):
        for _, a, b, y in data:
            if not math.isnan(y):
                play(a, b, y)
        return ratings
    for i, ranking in enumerate(data):
        if isinstance(ranking, (str, bytes)):
            raise TypeError(f"ranking #{i} is a string; pass rankings as sequences of items, best first")
        ranking = list(ranking)
        for hi in range(len(ranking)):
            for lo in range(hi + 1, len(ranking)):
                play(ranking[hi], ranking[lo], 1.0)
    return ratings
