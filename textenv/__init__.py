"""textenv: LLM text generation as a token-level Gymnasium MDP (``TextGen-v0``).

Importing this package registers ``TextGen-v0`` (single env ``TextGenEnv``; vector entry point
``TextGenVectorEnv`` for ``gym.make_vec``). ``gym.make("textenv:TextGen-v0")`` imports it by itself.
"""

import gymnasium as gym

from textenv.engine import ActionTypeError, GenerationEngine, InvalidActionError, sample_tokens
from textenv.env import EpisodeEndedError, TextGenEnv
from textenv.models import ModelLoadError, VocabularyMismatchError
from textenv.prompts import EmptyPromptSourceError, PromptError, PromptSource, PromptTooLongError, read_prompts
from textenv.rewards import (
    KeywordReward,
    LengthReward,
    RewardFunctionError,
    SentimentReward,
    TokenCountReward,
    validate_scores,
)
from textenv.vector_env import TextGenVectorEnv

ENV_ID = "TextGen-v0"

if ENV_ID not in gym.registry:  # importing twice (or via "textenv:TextGen-v0") must not re-register
    gym.register(
        ENV_ID,
        entry_point="textenv.env:TextGenEnv",
        vector_entry_point="textenv.vector_env:TextGenVectorEnv",
    )

__all__ = [
    "ENV_ID",
    "ActionTypeError",
    "EmptyPromptSourceError",
    "EpisodeEndedError",
    "GenerationEngine",
    "InvalidActionError",
    "KeywordReward",
    "LengthReward",
    "ModelLoadError",
    "PromptError",
    "PromptSource",
    "PromptTooLongError",
    "RewardFunctionError",
    "SentimentReward",
    "TextGenEnv",
    "TextGenVectorEnv",
    "TokenCountReward",
    "VocabularyMismatchError",
    "read_prompts",
    "sample_tokens",
    "validate_scores",
]
