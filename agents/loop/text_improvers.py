"""The improvement steps of the text RLHF run (``rlhf-gym text --algo NAME``): ``IMPROVERS`` maps each name to a
function ``step(ctx: TextRLHFContext) -> dict`` that trains ``ctx.policy`` in place, may log to ``ctx.run_dir`` and
call ``ctx.evaluate_and_log(step)``, and returns extra summary entries. Add an algorithm by adding an entry.

The native agents (``agents.llm``) drive the KV-cached vector env. The SB3 steps (``sb3-ppo``, ``sb3-a2c``) train on
the very env configuration the native agents use (same policy object, frozen reference, learned reward, KL
coefficient, lengths and prompts), through unmodified SB3 and ``CausalLMPolicy``, so ``summary.json`` compares like
with like. SB3 steps single ``TextGenEnv`` copies in a ``DummyVecEnv`` (one process: the envs must share the policy's
weights) and re-runs the whole context through the LM at every step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import Logger, configure
from stable_baselines3.common.vec_env import DummyVecEnv

from agents.llm.dpo import DPOConfig, DPOTrainer
from agents.llm.grpo import GRPOAgent, GRPOConfig
from agents.llm.kto import KTOConfig, KTOTrainer
from agents.llm.ppo import PPOAgent, PPOConfig
from agents.llm.rloo import RLOOAgent, RLOOConfig
from agents.loop.text_context import TextRLHFContext
from agents.sb3.text_policy import SyncTextEnvCallback, make_sb3_text_model
from textenv import TextGenEnv


# -- native agents ----------------------------------------------------------------------------------------------
def _agent_config(cls, ctx: TextRLHFContext, **fields: Any):
    cfg = ctx.config
    return cls(
        **{
            "learning_rate": cfg.learning_rate,
            "kl_coef": cfg.kl_coef,
            "iterations": cfg.iterations,
            "seed": cfg.seed,
            **fields,
            **cfg.extra,
        }
    )


def improve_ppo(ctx: TextRLHFContext) -> dict:
    cfg = ctx.config
    env = ctx.make_env(cfg.num_envs, cfg.kl_coef, ctx.reward_model)
    agent = PPOAgent(env, _agent_config(PPOConfig, ctx), ctx.run_dir, reward_model=ctx.reward_model)
    agent.learn(callback=ctx.eval_callback())
    return {"tokens_seen": agent.tokens_seen}


def _improve_grouped(ctx: TextRLHFContext, agent_cls, config_cls) -> dict:
    cfg = ctx.config
    if cfg.num_envs % cfg.group_size:
        raise ValueError(f"num_envs={cfg.num_envs} must be a multiple of group_size={cfg.group_size}")
    env = ctx.make_env(cfg.num_envs, cfg.kl_coef, ctx.reward_model)
    config = _agent_config(config_cls, ctx, group_size=cfg.group_size, prompts_per_step=cfg.num_envs // cfg.group_size)
    agent = agent_cls(env, config, ctx.run_dir)
    agent.learn(callback=ctx.eval_callback())
    return {"tokens_seen": agent.tokens_seen}


def improve_grpo(ctx: TextRLHFContext) -> dict:
    return _improve_grouped(ctx, GRPOAgent, GRPOConfig)


def improve_rloo(ctx: TextRLHFContext) -> dict:
    return _improve_grouped(ctx, RLOOAgent, RLOOConfig)


def _improve_offline(ctx: TextRLHFContext, trainer_cls, config_cls, name: str) -> dict:
    """DPO / KTO directly on the labelled pairs (no reward model); ``kl_coef`` is their beta."""
    cfg = ctx.config
    fields = {"beta": cfg.kl_coef, "learning_rate": cfg.learning_rate, "epochs": cfg.iterations, "seed": cfg.seed,
              **cfg.extra}
    trainer = trainer_cls(ctx.policy, ctx.tokenizer, ctx.pairs, config_cls(**fields), ref_model=ctx.ref_model,
                          run_dir=ctx.run_dir)
    trainer.learn(callback=ctx.eval_callback())
    return {"final_step": trainer.step, f"{name}_steps": trainer.step, **trainer.evaluate()}


def improve_dpo(ctx: TextRLHFContext) -> dict:
    return _improve_offline(ctx, DPOTrainer, DPOConfig, "dpo")


def improve_kto(ctx: TextRLHFContext) -> dict:
    """KTO (Ethayarajh et al. 2024) on the pairs: each chosen response is a desirable example, each rejected one an
    undesirable example (as TRL's KTO reads preference data)."""
    return _improve_offline(ctx, KTOTrainer, KTOConfig, "kto")


# -- Stable-Baselines3 ------------------------------------------------------------------------------------------
# Settings of the SB3 runs; override any through TextRLHFConfig.extra (e.g. {"n_envs": 16, "n_steps": 32}).
SB3_DEFAULTS: dict[str, dict[str, Any]] = {
    "ppo": {"n_envs": 8, "n_steps": 64, "batch_size": 128, "n_epochs": 4, "ent_coef": 0.0},
    "a2c": {"n_envs": 8, "n_steps": 16, "ent_coef": 0.0},
}


class _PipelineLogging(BaseCallback):
    """Logs what the native agents log for the pipeline's curves: per rollout the mean episode score and KL
    (``env/score_mean``, ``env/kl_to_ref``), and every ``every`` rollouts the oracle score on held-out prompts."""

    def __init__(self, ctx: TextRLHFContext, every: int):
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


def make_text_vec_env(ctx: TextRLHFContext, n_envs: int) -> DummyVecEnv:
    """``n_envs`` single TextGen envs in a DummyVecEnv, all acting with ``ctx.policy`` against ``ctx.ref_model``."""
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


def _improve_sb3(ctx: TextRLHFContext, algo: str) -> dict[str, int]:
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


def _sb3_logger(ctx: TextRLHFContext) -> Logger:
    return configure(str(ctx.run_dir.path / "tb" / "sb3"), ["tensorboard"])


def improve_sb3_ppo(ctx: TextRLHFContext) -> dict[str, int]:
    return _improve_sb3(ctx, "ppo")


def improve_sb3_a2c(ctx: TextRLHFContext) -> dict[str, int]:
    return _improve_sb3(ctx, "a2c")


IMPROVERS: dict[str, Callable[[TextRLHFContext], dict]] = {
    "ppo": improve_ppo,
    "grpo": improve_grpo,
    "rloo": improve_rloo,
    "dpo": improve_dpo,
    "kto": improve_kto,
    "sb3-ppo": improve_sb3_ppo,
    "sb3-a2c": improve_sb3_a2c,
}
