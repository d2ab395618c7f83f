"""The one preference loop (Christiano et al. 2017) and the two worlds that plug into it.

- ``preference_loop``: ``PreferenceLoop`` (collect -> choose pairs -> label -> fit reward model -> improve agent ->
  repeat), its four protocols (``Agent``, ``PairSource``, ``RewardModel``, ``Labeller``), ``LoopConfig``, callbacks.
- ``config``: what every run config of the loop shares (``RunConfig``: one ``load()`` of a run directory's
  ``config.json``, with migration of older formats and the checkpoints' copies as fallback).
- ``control/``: a Gymnasium env's trajectory segments with SB3 agents (``PrefsConfig``, its presets, segment and
  frame pair sources, the reward-ensemble model, the paper's Atari preprocessing, ``run_prefs``).
- ``text/``: an LM's completions with the LLM agents (``TextRLHFConfig``, the algorithm registry, completion and
  dataset pair sources, the LM reward model, ``run_text_rlhf``).
"""

from textenv.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "agents.loop.preference_loop": ("Agent", "Labeller", "LoopCallback", "LoopConfig", "PairSource",
                                    "PreferenceLoop", "RewardModel", "label_allocation"),
    "agents.loop.config": ("RunConfig", "RunConfigError"),
    "agents.loop.control.config": ("PrefsConfig",),
    "agents.loop.control.presets": ("PREFS_PRESETS", "Preset", "PresetError", "apply_preset"),
    "agents.loop.control.run": ("build_loop", "build_reward_ensemble", "make_labeller", "run_prefs"),
    "agents.loop.reward_model": ("EnsembleRewardModel",),
    "agents.loop.control.segment_pairs": ("SegmentPairSource",),
    "agents.loop.control.frame_pairs": ("ImageSegmentPairSource",),
    "agents.loop.text.config": ("TextRLHFConfig",),
    "agents.loop.text.loop": ("TextPolicyAgent", "build_text_loop"),
    "agents.loop.text.pairs": ("CompletionPairSource", "DatasetPairSource", "PairsAsReward"),
    "agents.loop.text.run": ("run_text_loop", "run_text_rlhf"),
})
