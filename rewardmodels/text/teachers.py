"""Synthetic text teachers: preference labels over pairs of completions from a text scorer plus B-Pref noise.

A text teacher scores each response with a scorer of the ``reward_fn`` protocol (``(prompts, responses) -> (B,)``),
treats the score as a one-step "return" (shape ``(B, 1)``) and hands it to :class:`rewardmodels.teachers.Teacher`,
so text labels have exactly the noise models of the control teachers (rationality ``beta``, mistakes ``eps``,
``equal_threshold`` ties, ``skip_threshold`` skips; Lee et al. 2021, B-Pref, arXiv:2111.03026). ``gamma`` has no effect
on a one-step return. Thresholds and ``beta`` are in the scorer's units: VADER compound lies in [-1, 1], so
``beta=10`` is a mildly noisy sentiment teacher and ``beta=1`` a very noisy one.

Labels follow the toolkit convention: 1.0 = first response (a) preferred, 0.0 = b, 0.5 = tie, NaN = skipped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from rewardmodels.teachers import Teacher
from rewardmodels.text.preferences import TextPreferencePairs, load_text_preferences
from textenv.rewards import KeywordReward, LengthReward, SentimentReward, validate_scores

__all__ = ["EnvironmentReturns", "KeywordTeacher", "LengthTeacher", "ReturnTeacher", "SentimentTeacher",
           "TextTeacher"]

Scorer = Callable[[list[str], list[str]], Any]


class TextTeacher:
    """Labels pairs of completions by comparing ``scorer`` scores through a B-Pref :class:`Teacher`.

    Args:
        scorer: ``(prompts, responses) -> (B,)`` floats (any ``textenv.rewards`` scorer, an ``LMRewardModel``, ...).
        teacher: a ready :class:`Teacher` (e.g. ``make_teacher("noisy", seed=0)``); or leave None and give its
            fields below. Passing both is an error.
        beta, gamma, eps, skip_threshold, equal_threshold, seed: the :class:`Teacher` fields (defaults: the oracle).
    """

    def __init__(
        self,
        scorer: Scorer,
        *,
        teacher: Teacher | None = None,
        beta: float = math.inf,
        gamma: float = 1.0,
        eps: float = 0.0,
        skip_threshold: float | None = None,
        equal_threshold: float | None = None,
        seed: int | None = None,
    ) -> None:
        if not callable(scorer):
            raise TypeError(f"scorer must be callable as scorer(prompts, responses), got {type(scorer).__name__}")
        noise = {"beta": beta, "gamma": gamma, "eps": eps, "skip_threshold": skip_threshold,
                 "equal_threshold": equal_threshold, "seed": seed}
        if teacher is not None:
            defaults = {"beta": math.inf, "gamma": 1.0, "eps": 0.0, "skip_threshold": None, "equal_threshold": None,
                        "seed": None}
            changed = sorted(k for k, v in noise.items() if v != defaults[k])
            if changed:
                raise ValueError(f"pass either teacher=... or the noise settings {changed}, not both")
        self.scorer = scorer
        self.teacher = teacher if teacher is not None else Teacher(**noise)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """``(B,)`` float64 scores of ``responses`` (validated: one finite float per response)."""
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts and {len(responses)} responses; they must pair up")
        return validate_scores(self.scorer(list(prompts), list(responses)), len(responses), self.scorer)

    __call__ = score  # a teacher is itself a reward_fn (the oracle score used to evaluate policies)

    def label(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> np.ndarray:
        """``(B,)`` float32 labels in {1, 0, 0.5, NaN}: P(``responses_a[i]`` preferred), drawn by the teacher."""
        if not (len(prompts) == len(responses_a) == len(responses_b)):
            raise ValueError(
                f"prompts, responses_a and responses_b must have the same length; got {len(prompts)}, "
                f"{len(responses_a)}, {len(responses_b)}"
            )
        s_a = self.score(prompts, responses_a)[:, None]  # (B, 1): a one-step "return"
        s_b = self.score(prompts, responses_b)[:, None]
        return self.teacher.label(s_a, s_b)

    def label_text_pairs(self, pairs: TextPreferencePairs | Any, tokenizer: Any = None) -> TextPreferencePairs:
        """A copy of ``pairs`` with labels from this teacher (existing labels are ignored). ``pairs`` is any source
        :func:`rewardmodels.text.preferences.load_text_preferences` reads (conversations are rendered with
        ``tokenizer``'s chat template), e.g. a preference dataset to measure the teacher's agreement with."""
        pairs = load_text_preferences(pairs, tokenizer)
        labels = self.label(pairs.prompts, pairs.responses_a, pairs.responses_b)
        return TextPreferencePairs(pairs.prompts, pairs.responses_a, pairs.responses_b, labels)


class SentimentTeacher(TextTeacher):
    """Prefers the response with the higher VADER compound sentiment (Hutto & Gilbert 2014; offline lexicon), the
    synthetic labeller of the sentiment task (Ziegler et al. 2019, arXiv:1909.08593). Scores lie in [-1, 1].

    ``repetition_penalty`` makes it a harder judge: the score minus ``repetition_penalty`` times the share of the
    response's words that repeat an earlier word (``1 - distinct / total``), so gushing by repetition ("great great
    great") loses to a varied positive review. A reward model fitted on a policy's first, rarely repetitive samples
    does not see this; a policy optimised on it can learn to repeat (the over-optimisation of Gao et al. 2022).

    Keyword arguments are the :class:`TextTeacher` noise settings.
    """

    def __init__(self, repetition_penalty: float = 0.0, **noise: Any) -> None:
        if not (math.isfinite(repetition_penalty) and repetition_penalty >= 0):
            raise ValueError(f"repetition_penalty must be a finite number >= 0, got {repetition_penalty!r}")
        scorer: Scorer = SentimentReward()
        if repetition_penalty:
            scorer = _RepetitionPenalised(scorer, repetition_penalty)
        super().__init__(scorer, **noise)


class EnvironmentReturns:
    """A scorer of conversations with an environment that answers (multi-turn ``TextGen-v0``): each conversation's
    return, as the environment gave it when the conversation was played (``record``). A return depends on what the
    environment hid (a number to guess, a hidden state), not only on the text, so it is looked up, not recomputed:
    scoring a conversation that was never recorded is an error."""

    __name__ = "environment-return"

    def __init__(self) -> None:
        self.returns: dict[tuple[str, str], float] = {}

    def record(self, prompts: Sequence[str], conversations: Sequence[str], returns: Sequence[float]) -> None:
        for p, c, r in zip(prompts, conversations, returns, strict=True):
            self.returns[(p, c)] = float(r)

    def __call__(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        missing = [i for i, key in enumerate(zip(prompts, responses, strict=True)) if key not in self.returns]
        if missing:
            first = responses[missing[0]]
            raise KeyError(f"no environment return was recorded for conversation #{missing[0]} ({first!r:.80}): a "
                           "return teacher judges the conversations the run played")
        return np.array([self.returns[key] for key in zip(prompts, responses, strict=True)], dtype=np.float64)


class ReturnTeacher(TextTeacher):
    """Prefers the conversation with the higher environment return (the scripted oracle of Christiano et al. 2017,
    whose teacher compared true returns, for conversations): ``returns`` is the :class:`EnvironmentReturns` the pair
    source records into. Keyword arguments are the :class:`TextTeacher` noise settings, in the environment's reward
    units."""

    def __init__(self, returns: EnvironmentReturns | None = None, **noise: Any) -> None:
        self.returns = returns if returns is not None else EnvironmentReturns()
        super().__init__(self.returns, **noise)


class _RepetitionPenalised:
    """``scorer`` minus ``penalty`` times the share of repeated words of each response (punctuation and case
    ignored)."""

    def __init__(self, scorer: Scorer, penalty: float) -> None:
        self.scorer, self.penalty = scorer, float(penalty)
        self.__name__ = f"{type(scorer).__name__}-repetition"

    def __call__(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        base = np.asarray(self.scorer(prompts, responses), dtype=np.float64)
        return base - self.penalty * np.array([repetition(r) for r in responses])


def repetition(text: str) -> float:
    """The share of a text's words that repeat an earlier word: ``1 - distinct / total`` (0 for no words)."""
    words = [w.strip(".,;:!?\"'()").lower() for w in text.split()]
    words = [w for w in words if w]
    return 1.0 - len(set(words)) / len(words) if words else 0.0


class _WordCount:
    """Response length in words or characters (longer = higher score)."""

    def __init__(self, unit: str) -> None:
        if unit not in ("words", "chars"):
            raise ValueError(f"unit must be 'words' or 'chars', got {unit!r}")
        self.unit = unit

    def __call__(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        return np.array([len(r.split()) if self.unit == "words" else len(r) for r in responses], dtype=np.float64)


class LengthTeacher(TextTeacher):
    """Prefers longer responses (``target=None``) or responses closer to ``target`` words/characters
    (score ``-|n - target| / target``, as ``textenv.rewards.LengthReward``).

    Args:
        target: wanted length, or None for "longer is better".
        unit: ``"words"`` or ``"chars"``.
        **noise: the :class:`TextTeacher` noise settings.
    """

    def __init__(self, target: int | None = None, unit: str = "words", **noise: Any) -> None:
        scorer: Scorer = _WordCount(unit) if target is None else LengthReward(target, unit)
        super().__init__(scorer, **noise)


class KeywordTeacher(TextTeacher):
    """Prefers responses that contain more of ``words`` (whole-word matches, case-insensitive by default; as
    ``textenv.rewards.KeywordReward``).

    Args:
        words: the keywords.
        normalize: divide the count by the response's word count.
        case_sensitive: match case exactly.
        **noise: the :class:`TextTeacher` noise settings.
    """

    def __init__(self, words: Iterable[str], normalize: bool = False, case_sensitive: bool = False,
                 **noise: Any) -> None:
        super().__init__(KeywordReward(words, normalize=normalize, case_sensitive=case_sensitive), **noise)
