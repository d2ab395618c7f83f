"""textenv: LLM text generation as a token-level Gymnasium MDP (``TextGen-v0``).

Importing this package registers ``TextGen-v0`` (single env ``TextGenEnv``; vector entry point
``TextGenVectorEnv`` for ``gym.make_vec``). ``gym.make("textenv:TextGen-v0")`` imports it by itself. The names below
load their modules (and torch) on first use (``textenv.lazy``).
"""

import gymnasium as gym

from textenv.lazy import lazy_exports

ENV_ID = "TextGen-v0"

if ENV_ID not in gym.registry:  # importing twice (or via "textenv:TextGen-v0") must not re-register
    gym.register(
        ENV_ID,
        entry_point="textenv.env:TextGenEnv",
        vector_entry_point="textenv.vector_env:TextGenVectorEnv",
    )

__getattr__, __dir__, _names = lazy_exports(__name__, {
    "textenv.engine": ("ActionTypeError", "EpisodeEndedError", "GenerationEngine", "InvalidActionError",
                       "sample_tokens"),
    "textenv.env": ("TextGenEnv",),
    "textenv.vector_env": ("TextGenVectorEnv",),
    "textenv.models": ("ModelLoadError", "VocabularyMismatchError"),
    "textenv.prompts": ("EmptyPromptSourceError", "PromptError", "PromptSource", "PromptTooLongError",
                        "read_prompts"),
    "textenv.rewards": ("KeywordReward", "LengthReward", "RewardFunctionError", "SentimentReward",
                        "TokenCountReward", "validate_scores"),
})
__all__ = ["ENV_ID", *_names]
