"""The one preference loop (Christiano et al. 2017) and what plugs into it.

- ``preference_loop``: ``PreferenceLoop`` (collect -> choose pairs -> label -> fit reward model -> improve agent ->
  repeat), its four protocols (``Agent``, ``PairSource``, ``RewardModel``, ``Labeller``), ``LoopConfig``, callbacks.
- ``segment_pairs`` / ``frame_pairs``: pair sources that cut trajectory segments (state vectors; stored frames).
- ``reward_model``: the reward ensemble as the loop's ``RewardModel``.
- ``config``: ``PrefsConfig``, every setting of one control run (``LoopConfig`` plus env, agent, labeller, reward net).
- ``presets``: the one preset registry (``tuned`` per-env settings; the paper's MuJoCo and Atari protocols).
- ``prefs``: ``build_loop`` / ``run_prefs``: a ``PrefsConfig`` wired into a running loop.
- ``atari``: the paper's Atari preprocessing as registered env ids.
- ``text_rlhf``: RLHF for an LM through the same loop (``rounds=1``: the offline pipeline), wired by ``text_loop``
  (the text ``Agent``), with its pair sources, labellers and LM reward models in ``text_pairs``, its settings and
  context in ``text_context`` and its improvement steps (PPO / GRPO / RLOO / DPO / KTO / SB3) in ``text_improvers``.
"""

from agents.loop.config import PrefsConfig, RunConfigError
from agents.loop.frame_pairs import ImageSegmentPairSource
from agents.loop.preference_loop import (
    Agent,
    Labeller,
    LoopCallback,
    LoopConfig,
    PairSource,
    PreferenceLoop,
    RewardModel,
    label_allocation,
)
from agents.loop.prefs import build_loop, make_labeller, run_prefs
from agents.loop.presets import PRESETS, Preset, PresetError, apply_preset
from agents.loop.reward_model import EnsembleRewardModel, build_reward_ensemble
from agents.loop.segment_pairs import SegmentPairSource
from agents.loop.text_context import TextRLHFConfig
from agents.loop.text_loop import TextPolicyAgent, build_text_loop
from agents.loop.text_pairs import (
    CompletionPairSource,
    DatasetPairSource,
    LMRewardEnsemble,
    MixedTextLabeller,
    PairsAsReward,
)
from agents.loop.text_rlhf import run_text_loop, run_text_rlhf

__all__ = [
    "PRESETS", "Agent", "CompletionPairSource", "DatasetPairSource", "EnsembleRewardModel", "ImageSegmentPairSource",
    "LMRewardEnsemble", "Labeller", "LoopCallback", "LoopConfig", "MixedTextLabeller", "PairSource", "PairsAsReward",
    "PreferenceLoop", "PrefsConfig", "Preset", "PresetError", "RewardModel", "RunConfigError", "SegmentPairSource",
    "TextPolicyAgent", "TextRLHFConfig", "apply_preset", "build_loop", "build_reward_ensemble", "build_text_loop",
    "label_allocation", "make_labeller", "run_prefs", "run_text_loop", "run_text_rlhf",
]
