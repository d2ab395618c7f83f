"""Text reward functions: the score R(prompt, response) TextGen-v0 adds at the last step of an episode.

Protocol (shared by every scorer and by learned reward models)::

    reward_fn(prompts: list[str], responses: list[str]) -> array-like of shape (B,), float

Scorers here are deterministic and cheap; they are the synthetic "human" of text experiments (a sentiment task in
the style of Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences") and trivial tasks for tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

RewardFn = Callable[[list[str], list[str]], Any]


class RewardFunctionError(ValueError):
    """A reward function returned something other than B finite floats."""


def validate_scores(scores: Any, batch: int, reward_fn: Any = None) -> np.ndarray:
    """``scores`` as a float64 array of shape ``(batch,)``; raise ``RewardFunctionError`` if it is not one."""
    name = getattr(reward_fn, "__name__", type(reward_fn).__name__) if reward_fn is not None else "reward_fn"
    if hasattr(scores, "detach"):  # a torch tensor, possibly on a GPU
        scores = scores.detach().float().cpu().numpy()
    try:
        arr = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise RewardFunctionError(f"{name} returned {type(scores).__name__}, not numbers: {exc}") from exc
    if arr.shape != (batch,):
        raise RewardFunctionError(
            f"{name} returned shape {arr.shape} for {batch} responses; it must return one float per response, "
            f"shape ({batch},) (e.g. np.array([...]) or a 1-D tensor; squeeze a (B, 1) output)"
        )
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise RewardFunctionError(
            f"{name} returned a non-finite score ({arr[bad]}) for response #{bad}; a reward function must return "
            "finite floats (map failures to a finite penalty instead)"
        )
    return arr


class SentimentReward:
    """VADER compound sentiment of the response, in [-1, 1] (Hutto & Gilbert 2014; needs ``vaderSentiment``)."""

    def __init__(self):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer  # lazy: only this reward needs it

        self._analyzer = SentimentIntensityAnalyzer()

    def __call__(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        return np.array([self._analyzer.polarity_scores(r)["compound"] for r in responses], dtype=np.float64)


class LengthReward:
    """``-|n - target| / target`` where n is the response length in words (or characters): 0 at the target length.

    Args:
        target: the wanted length (> 0).
        unit: ``"words"`` (whitespace split) or ``"chars"``.
    """

    def __init__(self, target: int, unit: str = "words"):
        if target <= 0:
            raise ValueError(f"target must be a positive length, got {target}")
        if unit not in ("words", "chars"):
            raise ValueError(f"unit must be 'words' or 'chars', got {unit!r}")
        self.target, self.unit = int(target), unit

    def __call__(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        n = np.array([len(r.split()) if self.unit == "words" else len(r) for r in responses], dtype=np.float64)
        return -np.abs(n - self.target) / self.target


class KeywordReward:
    """Number of response words that are in ``words`` (case-insensitive by default), optionally per word.

    Args:
        words: the keywords.
        normalize: divide by the number of words in the response (score in [0, 1]).
        case_sensitive: match case exactly.
    """

    def __init__(self, words: Iterable[str], normalize: bool = False, case_sensitive: bool = False):
        self.case_sensitive = case_sensitive
        self.words = {w if case_sensitive else w.lower() for w in words}
        if not self.words:
            raise ValueError("KeywordReward needs at least one keyword")
        self.normalize = normalize

    def __call__(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        out = np.zeros(len(responses), dtype=np.float64)
        for i, r in enumerate(responses):
            toks = re.findall(r"[\w']+", r if self.case_sensitive else r.lower())
            hits = sum(t in self.words for t in toks)
            out[i] = hits / max(len(toks), 1) if self.normalize else hits
        return out


class TokenCountReward:
    """Number of occurrences of one token in the response, re-encoded with ``tokenizer`` (a trivial task for tests
    and benchmarks: the optimal policy emits that token at every step).

    Args:
        token: the token, as an id or as its string (looked up with ``tokenizer.convert_tokens_to_ids``).
        tokenizer: the env's tokenizer.
    """

    def __init__(self, token: int | str, tokenizer: Any):
        self.tokenizer = tokenizer
        self.token_id = int(tokenizer.convert_tokens_to_ids(token) if isinstance(token, str) else token)
        if isinstance(token, str) and self.token_id == tokenizer.unk_token_id and token != tokenizer.unk_token:
            raise ValueError(f"token {token!r} is not in the tokenizer's vocabulary")

    def __call__(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        ids = self.tokenizer(list(responses), add_special_tokens=False)["input_ids"]
        return np.array([sum(i == self.token_id for i in row) for row in ids], dtype=np.float64)
