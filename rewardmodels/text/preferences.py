"""Preference data over text completions: pairs, rankings -> pairs, files and datasets in common formats, Elo.

One label convention everywhere: ``label`` is the probability that the FIRST response (``response_a``, shown on the
left) is preferred: 1.0 = a preferred, 0.0 = b preferred, 0.5 = tie, NaN = skipped ("can't tell"; kept in files,
never used for training).

:func:`load_text_preferences` is the one entry point that every consumer (the LM reward model's training, DPO, KTO,
the text loop) reads preference data through. It takes a JSONL/JSON path, a ``datasets.Dataset``, a list of records
or a :class:`TextPreferencePairs`, and reads these record formats:

- ours (what :meth:`TextPreferencePairs.save` writes; ``label`` null = skipped)::

    {"prompt": "...", "response_a": "...", "response_b": "...", "label": 1.0}

- TRL's standard preference format, explicit prompt: ``{"prompt": str, "chosen": str, "rejected": str}`` (label 1);
- implicit prompt (Anthropic HH-RLHF): ``{"chosen": str, "rejected": str}``, the prompt being their shared start
  (:func:`split_implicit_prompt`);
- TRL's conversational format, explicit or implicit prompt: the same keys holding lists of ``{"role", "content"}``
  messages. The prompt messages are rendered with the tokenizer's chat template and ``add_generation_prompt=True``;
  the responses (the assistant turns) are the rest of the rendered conversation, as TRL's
  ``maybe_apply_chat_template`` renders them.

Errors name the record (``file.jsonl:LINE``, ``dataset row I``, ``record #I``) and the field, and are raised at load.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from textenv.files import atomic_write_text
from textenv.prompts import PromptError, check_chat, load_saved_dataset, render_chat

__all__ = [
    "EmptyResponseError",
    "IdenticalResponsesError",
    "PreferencePromptTooLongError",
    "PreferenceRow",
    "TextPair",
    "TextPreferenceError",
    "TextPreferenceFileError",
    "TextPreferencePairs",
    "elo_ratings",
    "load_text_preferences",
    "read_preference_rows",
    "split_implicit_prompt",
]


class TextPreferenceError(ValueError):
    """Invalid text preference data."""


class EmptyResponseError(TextPreferenceError):
    """A pair holds an empty (or whitespace-only) response."""


class IdenticalResponsesError(TextPreferenceError):
    """A pair compares a response with itself: the label carries no information."""


class TextPreferenceFileError(TextPreferenceError):
    """A preference file, dataset or record is corrupted or not in a known format."""


class PreferencePromptTooLongError(TextPreferenceError):
    """A prompt fills the model's whole context, leaving no room for the response."""


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
            _check_pair(f"pair #{i}", p, a, b, y)

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

    def subset(self, index: Sequence[int] | np.ndarray) -> TextPreferencePairs:
        """The pairs ``index`` (indices or a boolean mask), as ``PreferenceDataset.subset`` gives them."""
        return self[np.asarray(index)]

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
    def load(cls, path: str | os.PathLike, tokenizer: Any = None) -> TextPreferencePairs:
        """Read a preference file in any format :func:`load_text_preferences` reads (what :meth:`save` writes,
        TRL's standard and conversational formats, implicit prompts); the same as ``load_text_preferences(path)``."""
        return load_text_preferences(path, tokenizer)


def _check_pair(where: str, prompt: object, a: object, b: object, label: float) -> None:
    if not all(isinstance(s, str) for s in (prompt, a, b)):
        raise TextPreferenceError(f"{where}: prompt and responses must be str, got "
                                  f"{type(prompt).__name__}, {type(a).__name__}, {type(b).__name__}")
    for side, r in (("response_a", a), ("response_b", b)):
        if not r.strip():
            raise EmptyResponseError(
                f"{where}: {side} is empty; an empty completion cannot be compared, drop the pair (or represent "
                "'no answer' with explicit text)"
            )
    if a.strip() == b.strip():
        raise IdenticalResponsesError(
            f"{where}: response_a and response_b are identical ({a[:60]!r}); such a pair carries no preference "
            "information, drop it (or resample one of the responses)"
        )
    if not _valid_label(label):
        raise TextPreferenceError(
            f"{where}: label {label!r} is not one of 0 (b preferred), 0.5 (tie), 1 (a preferred), NaN (skipped)"
        )


# ---------------------------------------------------------------------- reading any source, any format


class PreferenceRow(NamedTuple):
    """One record read as text, before it is checked as a pair; ``where`` names it in errors."""

    prompt: str
    response_a: str
    response_b: str
    label: float
    where: str


def load_text_preferences(source: Any, tokenizer: Any = None, *, max_length: int | None = None) -> TextPreferencePairs:
    """Preference data from any source and format, as :class:`TextPreferencePairs` (see the module docstring).

    Args:
        source: a path (``.jsonl``, or ``.json`` holding a list or JSON lines), a ``datasets.Dataset``, a list of
            records (dicts in any format, ``(prompt, chosen, rejected)`` or ``(prompt, a, b, label)`` tuples), or
            :class:`TextPreferencePairs` (returned after the length check).
        tokenizer: renders conversational records with its chat template (required for them), and measures prompts.
        max_length: the model's context in tokens (prompt + response); with ``tokenizer``, a prompt of that many
            tokens or more raises :class:`PreferencePromptTooLongError`, since the model could not read a response.

    Raises:
        FileNotFoundError: no such file.
        TextPreferenceFileError: unreadable JSON, an unknown format, a missing field, a wrong type, a conversational
            record without a chat template to render it.
        EmptyResponseError / IdenticalResponsesError / TextPreferenceError: an invalid pair or label.
        PreferencePromptTooLongError: a prompt longer than ``max_length``.
        Every message names the record (``path:line``, ``dataset row i``, ``record #i`` or ``pair #i``).
    """
    check_lengths = tokenizer is not None and max_length is not None
    if isinstance(source, TextPreferencePairs):  # already checked pair by pair at construction
        if check_lengths:
            _check_prompt_lengths(read_preference_rows(source), tokenizer, max_length)
        return source
    rows = read_preference_rows(source, tokenizer)
    for row in rows:
        _check_pair(row.where, *row[:4])
    if check_lengths:
        _check_prompt_lengths(rows, tokenizer, max_length)
    return TextPreferencePairs([r.prompt for r in rows], [r.response_a for r in rows], [r.response_b for r in rows],
                               np.asarray([r.label for r in rows], dtype=np.float32))


def is_unpaired(source: Any) -> bool:
    """Whether ``source``'s records are TRL's unpaired format (``prompt``, ``completion``, ``label``: KTO's data, not
    preference pairs), judged by its first record."""
    if isinstance(source, TextPreferencePairs):
        return False
    for rec, _ in iter_records(source):
        return isinstance(rec, dict) and "completion" in rec and "chosen" not in rec
    return False


def is_conversational(source: Any) -> bool:
    """Whether ``source``'s records are in TRL's conversational format (lists of role/content messages), judged by
    its first record; ``TextPreferencePairs`` hold text already (False)."""
    if isinstance(source, TextPreferencePairs):
        return False
    for rec, _ in iter_records(source):
        return isinstance(rec, dict) and any(isinstance(rec.get(k), (list, tuple)) for k in ("prompt", "chosen"))
    return False


def read_preference_rows(source: Any, tokenizer: Any = None) -> list[PreferenceRow]:
    """Every record of ``source`` (as for :func:`load_text_preferences`) parsed into text, labels not yet checked
    against {0, 0.5, 1, NaN} (DPO reads any label in [0, 1]); conversational records are rendered with
    ``tokenizer``'s chat template."""
    if isinstance(source, TextPreferencePairs):
        return [PreferenceRow(*pair, f"pair #{i}") for i, pair in enumerate(source)]
    return [_parse_record(rec, where, tokenizer) for rec, where in iter_records(source)]


def iter_records(source: Any) -> Iterator[tuple[Any, str]]:
    """``(record, where)`` for every raw record of a .jsonl/.json path, a ``datasets.Dataset`` or a list, ``where``
    naming it for errors (``path:line``, ``dataset row i``, ``record #i``); records are not parsed."""
    if isinstance(source, (str, os.PathLike)):
        yield from _file_records(Path(source))
    elif isinstance(source, dict):
        if all(hasattr(v, "column_names") for v in source.values()) and source:
            raise TextPreferenceFileError(
                f"got a DatasetDict with splits {sorted(source)}; pass one split, e.g. dataset[{next(iter(source))!r}]"
            )
        raise TextPreferenceFileError("got a single dict; pass a list of records (or a path, or a datasets.Dataset)")
    elif isinstance(source, Iterable) and not isinstance(source, bytes):
        name = "dataset row {}" if hasattr(source, "column_names") else "record #{}"  # a datasets.Dataset
        yield from ((rec, name.format(i)) for i, rec in enumerate(source))
    else:
        raise TextPreferenceFileError(
            f"preference data must be a .jsonl/.json path, a datasets.Dataset, a list of records or "
            f"TextPreferencePairs; got {type(source).__name__}"
        )


def _file_records(path: Path) -> Iterator[tuple[Any, str]]:
    if path.suffix.lower() in (".csv", ".tsv", ".parquet", ".arrow"):
        raise TextPreferenceFileError(
            f"{path}: {path.suffix} files are not read directly; write JSON lines, or load it with "
            f"datasets.load_dataset({path.suffix[1:]!r}, data_files=...)['train'] and pass the Dataset"
        )
    if path.is_dir():  # Dataset.save_to_disk
        try:
            data = load_saved_dataset(path)
        except PromptError as exc:
            raise TextPreferenceFileError(str(exc)) from exc
        yield from ((rec, f"{path} row {i}") for i, rec in enumerate(data))
        return
    if not path.is_file():
        raise FileNotFoundError(f"preference file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):  # a .json file holding one list of records
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TextPreferenceFileError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
        yield from ((rec, f"{path} item #{i}") for i, rec in enumerate(records))
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TextPreferenceFileError(
                f"{path}:{lineno}: not valid JSON ({exc.msg}); the file may be truncated or corrupted"
            ) from exc
        yield rec, f"{path}:{lineno}"


_FORMATS = (
    "expected keys prompt, response_a, response_b, label (this toolkit's format); prompt, chosen, rejected (TRL's "
    "explicit-prompt format); or chosen, rejected (implicit prompt: their shared start, as in Anthropic HH)"
)


def _parse_record(rec: Any, where: str, tokenizer: Any) -> PreferenceRow:
    if isinstance(rec, (tuple, list)) and len(rec) in (3, 4) and not any(isinstance(x, dict) for x in rec):
        # (prompt, chosen, rejected), or (prompt, response_a, response_b, label) as a TextPair is
        keys = ("prompt", "chosen", "rejected") if len(rec) == 3 else ("prompt", "response_a", "response_b", "label")
        rec = dict(zip(keys, rec, strict=True))
    if not isinstance(rec, dict):
        raise TextPreferenceFileError(f"{where}: expected a JSON object (dict) per record, got {type(rec).__name__}")
    if "response_a" in rec or "response_b" in rec:
        names = ("response_a", "response_b")
        _require(rec, (*names, "label"), where, "(label null = skipped)")
        label = float("nan") if rec["label"] is None else rec["label"]
        prompt = rec.get("prompt", "")  # no prompt: unconditional generation
    elif "chosen" in rec or "rejected" in rec:
        names, label = ("chosen", "rejected"), 1.0
        _require(rec, names, where, "(a preference record needs both)")
        prompt = rec.get("prompt")  # None: implicit prompt
    elif "completion" in rec:
        raise TextPreferenceFileError(
            f"{where}: this is an unpaired record (prompt, completion, label: TRL's KTO format), not a preference "
            "pair; preference data needs 'chosen' and 'rejected' (KTOTrainer reads unpaired records)"
        )
    else:
        raise TextPreferenceFileError(f"{where}: {_FORMATS}; got {sorted(rec)}")
    if not isinstance(label, (int, float)) or isinstance(label, bool):
        raise TextPreferenceFileError(f"{where}: label must be a number in {{0, 0.5, 1}} or null, got {label!r}")
    p, a, b = _record_text(prompt, rec[names[0]], rec[names[1]], names, where, tokenizer)
    return PreferenceRow(p, a, b, float(label), where)


def _require(rec: dict, fields: Sequence[str], where: str, why: str) -> None:
    missing = [f for f in fields if f not in rec]
    if missing:
        raise TextPreferenceFileError(
            f"{where}: field {missing[0]!r} is missing {why}; the record has {sorted(rec)}. {_FORMATS}"
        )


def _record_text(prompt: Any, a: Any, b: Any, names: Sequence[str], where: str, tokenizer: Any) -> tuple[str, ...]:
    """Plain-text ``(prompt, a, b)`` of one record: implicit prompts split off, conversations rendered."""
    fields = {"prompt": prompt, names[0]: a, names[1]: b} if prompt is not None else {names[0]: a, names[1]: b}
    if all(isinstance(v, str) for v in fields.values()):
        if prompt is None:
            return split_implicit_prompt(a, b, where)
        return prompt, a, b
    if not all(isinstance(v, (list, tuple)) for v in fields.values()):
        kinds = ", ".join(f"{k}: {type(v).__name__}" for k, v in fields.items())
        raise TextPreferenceFileError(
            f"{where}: fields must all be strings (standard format) or all lists of {{'role', 'content'}} messages "
            f"(conversational format); got {kinds}"
        )
    try:
        msgs = {k: check_chat(v, f"{where}: field {k!r}") for k, v in fields.items()}
    except PromptError as exc:
        raise TextPreferenceFileError(str(exc)) from None
    if prompt is None:
        prompt_msgs, a_msgs, b_msgs = split_implicit_prompt(msgs[names[0]], msgs[names[1]], where)
    else:
        prompt_msgs, a_msgs, b_msgs = msgs["prompt"], msgs[names[0]], msgs[names[1]]
    for name, resp in zip(names, (a_msgs, b_msgs), strict=True):
        if resp[0]["role"] != "assistant":
            raise TextPreferenceFileError(
                f"{where}: field {name!r}: the response must be the assistant's turn(s), but it starts with a "
                f"{resp[0]['role']!r} message"
            )
    return render_conversation(prompt_msgs, a_msgs, b_msgs, tokenizer, where)


def render_conversation(prompt: list, a: list, b: list, tokenizer: Any, where: str) -> tuple[str, str, str]:
    """Prompt and two responses as text: the chat template applied to ``prompt`` (+ generation prompt) and to
    ``prompt + a`` / ``prompt + b``; the responses are what follows the shared rendered prompt."""
    if tokenizer is None:
        raise TextPreferenceFileError(
            f"{where}: a conversational record (lists of role/content messages) is rendered with a tokenizer's chat "
            "template; pass the model's tokenizer (load_text_preferences(source, tokenizer))"
        )
    try:
        prompt_text = render_chat(prompt, tokenizer, where=f"{where}: the prompt")
        full_a = render_chat(prompt + a, tokenizer, add_generation_prompt=False)
        full_b = render_chat(prompt + b, tokenizer, add_generation_prompt=False)
    except PromptError as exc:
        raise TextPreferenceFileError(str(exc)) from None
    # The prompt is what the three renderings share: some templates (DeepSeek-R1's) render the generation prompt
    # differently from the same turn inside a conversation (TRL's maybe_apply_chat_template does the same).
    shared = os.path.commonprefix([prompt_text, full_a, full_b])
    return shared, full_a[len(shared) :], full_b[len(shared) :]


def split_implicit_prompt(chosen: Any, rejected: Any, where: str = "record") -> tuple[Any, Any, Any]:
    """``(prompt, chosen_rest, rejected_rest)`` of an implicit-prompt record: the prompt is the shared start.

    Conversations (message lists) share whole messages. Text shares characters, cut back to a word boundary so that
    no word is split between prompt and response, and the response keeps its leading whitespace (the HH format
    ``"...\n\nAssistant: Sure"`` gives the prompt ``"...\n\nAssistant:"`` and the response ``" Sure"``, as TRL's
    ``extract_prompt`` does; TRL would split a word whose first letters agree, this does not).

    Raises:
        TextPreferenceFileError: nothing is shared, so there is no prompt to infer (``where`` names the record).
    """
    if isinstance(chosen, str) and isinstance(rejected, str):
        j = len(os.path.commonprefix([chosen, rejected]))
        while j > 0 and not _word_boundary(chosen, rejected, j):
            j -= 1
        while j > 0 and chosen[j - 1].isspace():
            j -= 1
    else:
        j = 0
        while j < min(len(chosen), len(rejected)) and chosen[j] == rejected[j]:
            j += 1
    if j == 0:
        raise TextPreferenceFileError(
            f"{where}: the record has 'chosen' and 'rejected' but no 'prompt', and they share no leading "
            f"{'text' if isinstance(chosen, str) else 'message'}, so the prompt cannot be inferred; add a 'prompt' "
            "field (or give both responses with the prompt at their start)"
        )
    return chosen[:j], chosen[j:], rejected[j:]


def _word_boundary(a: str, b: str, j: int) -> bool:
    """Whether cutting both strings at ``j`` splits no word: after whitespace, or before whitespace/end in both."""
    return a[j - 1].isspace() or all(j == len(x) or x[j].isspace() for x in (a, b))


def _check_prompt_lengths(rows: Sequence[PreferenceRow], tokenizer: Any, max_length: int) -> None:
    if not rows:
        return
    lengths = [len(ids) for ids in tokenizer([r.prompt for r in rows], add_special_tokens=False)["input_ids"]]
    for n, row in zip(lengths, rows, strict=True):
        if n >= max_length:
            raise PreferencePromptTooLongError(
                f"{row.where}: the prompt has {n} tokens but the model reads at most {max_length} tokens of prompt "
                "and response together, so no response would fit; drop or shorten this record, or use a model with "
                "a longer context (nothing is truncated silently)"
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
