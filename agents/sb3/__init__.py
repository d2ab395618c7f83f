"""Stable-Baselines3, unmodified, on a learned reward.

- ``control``: ``SB3Agent`` (any SB3 algorithm on a Gymnasium env whose reward is the learned one; off-policy
  replay buffers relabelled after each refit), the tuned hyperparameters, env and algorithm checks.
- ``text_policy``: ``CausalLMPolicy`` (the env's LM as SB3's actor, a value head as critic), ``LMHandle``,
  ``SyncTextEnvCallback``, ``make_sb3_text_model``: SB3 algorithms on ``TextGen-v0`` (the text RLHF run uses them
  as its ``sb3-ppo`` / ``sb3-a2c`` improvement steps: ``agents.loop.text.algorithms``); ``lm_forward``: the
  policy's KV cache and shared-prefix training forward; ``text_vec_env``: ``TextGenSB3VecEnv``, SB3's ``VecEnv``
  over one batched ``TextGenVectorEnv`` (the fast path for SB3 on text).
"""

from textenv.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "agents.sb3.control": ("IncompatibleSpaceError", "SB3Agent", "UnknownAlgorithmError", "UnknownEnvError",
                           "check_algorithm", "check_env_id", "default_hyperparams", "make_vec_env"),
    "agents.sb3.text_policy": ("CausalLMPolicy", "LMHandle", "ObservationSpaceError", "SyncTextEnvCallback",
                               "make_sb3_text_model", "mean_episode_score"),
    "agents.sb3.text_vec_env": ("TextGenSB3VecEnv",),
})
