"""Preference learning on Gymnasium envs (classic control, MuJoCo, Atari) with Stable-Baselines3 agents.

- ``config``: ``PrefsConfig``, every setting of one run (``LoopConfig`` plus env, agent, labeller, reward net).
- ``presets``: the preset registry ``PREFS_PRESETS`` (``tuned`` per-env settings; the paper's MuJoCo and Atari
  protocols).
- ``run``: ``build_loop`` / ``run_prefs``: a ``PrefsConfig`` wired into a running loop.
- ``segment_pairs`` / ``frame_pairs``: pair sources that cut trajectory segments (state vectors; stored frames).
- ``reward_model``: the reward ensemble as the loop's ``RewardModel``.
- ``atari``: the paper's Atari preprocessing as registered env ids.
- ``explore``: PEBBLE's unsupervised pre-training, the initial collection of ``initial_policy="explore"``.
- ``bpref``: the B-Pref envs (DeepMind Control via shimmy, Meta-World) as registered ids (``BPref/walker-walk-v0``).
"""

from textenv.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "agents.loop.control.config": ("PrefsConfig",),
    "agents.loop.control.presets": ("PREFS_PRESETS", "apply_preset"),
    "agents.loop.control.run": ("build_loop", "make_labeller", "run_prefs"),
})
