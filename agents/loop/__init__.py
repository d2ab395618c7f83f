"""The one preference loop (Christiano et al. 2017) and what plugs into it.

- ``preference_loop``: ``PreferenceLoop`` (collect -> choose pairs -> label -> fit reward model -> improve agent ->
  repeat), its four protocols (``Agent``, ``PairSource``, ``RewardModel``, ``Labeller``), ``LoopConfig``, callbacks.
- ``segment_pairs`` / ``frame_pairs``: pair sources that cut trajectory segments (state vectors; stored frames).
- ``reward_model``: the reward ensemble as the loop's ``RewardModel``.
- ``prefs``: ``PrefsConfig`` (every setting of one control run) and ``run_prefs`` / ``build_loop``.
- ``presets``: the one preset registry (tuned per-env defaults; the paper's MuJoCo and Atari protocols).
- ``atari``: the paper's Atari preprocessing as registered env ids.
- ``text_rlhf``: RLHF for an LM (pairs -> LM reward model -> PPO / GRPO / RLOO / DPO).
"""

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
from agents.loop.prefs import PrefsConfig, build_loop, run_prefs
from agents.loop.segment_pairs import EnsembleRewardModel, SegmentPairSource

__all__ = [
    "Agent", "EnsembleRewardModel", "Labeller", "LoopCallback", "LoopConfig", "PairSource", "PreferenceLoop",
    "PrefsConfig", "RewardModel", "SegmentPairSource", "build_loop", "label_allocation", "run_prefs",
]
