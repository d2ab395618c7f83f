"""Rewards for text: preference data in TRL's formats, the LM reward model (a scalar head on a transformer, saved as
a Hugging Face sequence-classification checkpoint) and its Bradley-Terry trainer, and simulated text teachers.

- ``preferences``: ``TextPreferencePairs`` and ``load_text_preferences`` (TRL standard, conversational and
  implicit-prompt records; JSON lines, ``datasets.Dataset`` or lists), Elo ratings.
- ``lm_reward``: ``LMRewardModel`` (``(prompts, responses) -> (B,)`` scores, a ``reward_fn`` of ``TextGen-v0``).
- ``training``: ``train_reward_model`` (pairwise Bradley-Terry, margins, centering, data parallel).
- ``teachers``: simulated labellers of text (VADER sentiment, length, keywords) with B-Pref rationality.
- ``common``: the errors and the tokenizer check the parts share.
"""

from textenv.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "rewardmodels.text.preferences": ("TextPreferenceError", "TextPreferencePairs", "load_text_preferences"),
    "rewardmodels.text.lm_reward": ("LMRewardModel", "RewardCheckpointError"),
    "rewardmodels.text.training": ("train_reward_model",),
    "rewardmodels.text.teachers": ("KeywordTeacher", "LengthTeacher", "SentimentTeacher", "TextTeacher"),
    "rewardmodels.text.common": ("NonFiniteLossError", "TokenizerMismatchError", "tokenizers_match"),
})
