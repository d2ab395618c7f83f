"""SB3 algorithms as improvement steps of the text RLHF pipeline (``rlhf-gym text --algo sb3-ppo|sb3-a2c``).

They train on the very env configuration the native agents use (same policy object, frozen reference, learned reward,
KL coefficient, lengths and prompts), through unmodified SB3 and ``CausalLMPolicy``, so ``summary.json`` compares like
with like. SB3 steps single ``TextGenEnv`` copies in a ``DummyVecEnv`` (one process: the envs must share the policy's
weights) and re-runs the whole context through the LM at every step; the native agents are the KV-cached fast path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, CallbackList

from agents.sb3.text_policy import SyncTextEnvCallback, make_sb3_text_model

# Settings of the SB3 runs; override any through TextRLHFConfig.extra (e.g. {"n_envs": 16, "n_steps": 32}).
SB3_DEFAULTS: dict[str, dict[str, Any]] = {
    "ppo": {"n_envs": 8, "n_steps": 64, "batch_size": 128, "n_epochs": 4, "ent_coef": 0.0},
    "a2c": {"n_envs": 8, "n_steps": 16, "ent_coef": 0.0},
}


class _PipelineLogging(BaseCallback):
    """Logs what the native agents log for the pipeline's curves: per rollout the mean episode score and KL
    (``env/score_mean``, ``env/kl_to_ref``), and every ``every`` rollouts the oracle score on held-out prompts."""

    def __init__(self, ctx: Any, every: int):
        super().__init__()
        self.ctx, self.every, self.rollouts = ctx, every, 0
        self.scores: list[float] = []
        self.kls: list[float] = []

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", ()):
            if "score" in info:
                self.scores.append(float(info["score"]))
                self.kls.append(float(info["kl_sum"]))
        return True

    def _on_rollout_end(self) -> None:
        self.rollouts += 1
        if self.scores:
            metrics = {"env/score_mean": float(np.mean(self.scores)), "env/kl_to_ref": float(np.mean(self.kls))}
            self.ctx.run_dir.log(self.rollouts, metrics)
            self.scores.clear()
            self.kls.clear()
        if self.every and self.rollouts % self.every == 0:
            self.ctx.evaluate_and_log(self.rollouts)


def make_text_vec_env(ctx: Any, n_envs: int):
    """``n_envs`` single TextGen envs in a DummyVecEnv, all acting with ``ctx.policy`` against ``ctx.ref_model``."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    from textenv import TextGenEnv

    cfg = ctx.config

    def make() -> TextGenEnv:
        return TextGenEnv(
            model=ctx.policy, tokenizer=ctx.tokenizer, prompts=ctx.train_prompts, reward_fn=ctx.reward_model,
            ref_model=ctx.ref_model, kl_coef=cfg.kl_coef, max_new_tokens=cfg.max_new_tokens,
            max_prompt_tokens=cfg.max_prompt_tokens, temperature=cfg.temperature, device=ctx.device,
        )

    venv = DummyVecEnv([make for _ in range(n_envs)])
    venv.seed(cfg.seed)
    return venv


def _improve_sb3(ctx: Any, algo: str) -> dict:
    cfg = ctx.config
    settings = {**SB3_DEFAULTS[algo], **cfg.extra}
    n_envs = int(settings.pop("n_envs"))
    venv = make_text_vec_env(ctx, n_envs)
    model = make_sb3_text_model(
        algo, venv, learning_rate=cfg.learning_rate, gamma=1.0, gae_lambda=0.95, seed=cfg.seed, **settings
    )
    model.set_logger(_sb3_logger(ctx))
    # The native agents' budget in env steps (tokens): iterations of num_envs episodes of at most max_new_tokens.
    total = cfg.iterations * cfg.num_envs * cfg.max_new_tokens
    model.learn(total, callback=CallbackList([SyncTextEnvCallback(), _PipelineLogging(ctx, cfg.eval_every)]))
    return {"tokens_seen": int(model.num_timesteps), "sb3_n_envs": n_envs, "sb3_n_steps": int(model.n_steps)}


def _sb3_logger(ctx: Any):
    from stable_baselines3.common.logger import configure

    return configure(str(ctx.run_dir.path / "tb" / "sb3"), ["tensorboard"])


def improve_sb3_ppo(ctx: Any) -> dict:
    return _improve_sb3(ctx, "ppo")


def improve_sb3_a2c(ctx: Any) -> dict:
    return _improve_sb3(ctx, "a2c")
