"""The improvement step of a text RLHF round: ``improve(ctx)`` trains ``ctx.policy`` in place with the run's
algorithm (``agents.loop.text.algorithms``), one driver per kind, and returns extra summary entries.

Where the run's ``kl_coef`` goes is decided here, once, from the registry line: into the env's reward
(``TextRLHFConfig.kl_penalty()``: PPO, RLOO, SB3, which read it back from their rollouts) or into the algorithm's
config field that its loss uses (GRPO's, DPO's and KTO's ``beta``; the env then measures the KL and does not
penalise it). Agents get no run directory: they report through the ``learn()`` callback and ``ctx.log``.

The SB3 steps (``sb3-ppo``, ``sb3-a2c``) train on the very env configuration the native agents use (same policy
object, frozen reference, learned reward, KL penalty, lengths and prompts), through unmodified SB3 and
``CausalLMPolicy``, so ``summary.json`` compares like with like. SB3 steps the rows of one batched
``TextGenVectorEnv`` through ``TextGenSB3VecEnv`` (one process: the env must share the policy's weights), and the
policy keeps its own KV cache (``agents.sb3.lm_forward``).
"""

from __future__ import annotations

import inspect

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import Logger, configure

from agents.loop.text.context import TextRLHFContext
from agents.sb3.text_policy import SyncTextEnvCallback, make_sb3_text_model
from agents.sb3.text_vec_env import TextGenSB3VecEnv
from textenv import TextGenVectorEnv

__all__ = ["improve", "make_text_vec_env"]


def improve(ctx: TextRLHFContext) -> dict:
    """One improvement step of ``ctx.config.iterations`` iterations (DPO / KTO: epochs) with the run's algorithm."""
    kind = ctx.config.algorithm.kind
    return {"rl": _improve_rl, "pairs": _improve_pairs, "sb3": _improve_sb3}[kind](ctx)


def _improve_rl(ctx: TextRLHFContext) -> dict:
    """An ``LMAgent`` on the vector env, rewarded by the learned reward (plus the env's KL penalty, if the algorithm
    takes its KL there)."""
    cfg = ctx.config
    env = ctx.make_env(cfg.num_envs, ctx.reward_model, cfg.kl_penalty())
    agent_class = cfg.algorithm.agent_class()
    kwargs = {"reward_model": ctx.reward_model} if "reward_model" in inspect.signature(agent_class).parameters else {}
    agent = agent_class(env, cfg.agent_config(), **kwargs)
    agent.learn(callback=ctx.learn_callback())
    return {"tokens_seen": agent.tokens_seen}


def _improve_pairs(ctx: TextRLHFContext) -> dict:
    """An offline trainer (DPO, KTO) on the labelled pairs, no reward model. KTO reads each chosen response as a
    desirable example and each rejected one as an undesirable example (as TRL's KTO reads preference data)."""
    cfg = ctx.config
    trainer = cfg.algorithm.agent_class()(ctx.policy, ctx.tokenizer, ctx.pairs, cfg.agent_config(),
                                          ref_model=ctx.ref_model)
    trainer.learn(callback=ctx.learn_callback())
    return {"final_step": trainer.step, f"{trainer.algo}_steps": trainer.step, **trainer.evaluate()}


# -- Stable-Baselines3 ------------------------------------------------------------------------------------------
class _PipelineLogging(BaseCallback):
    """Logs what the native agents log for the pipeline's curves: per rollout the mean episode score and KL
    (``env/score_mean``, ``env/kl_to_ref``), and every ``every`` rollouts the oracle score on held-out prompts."""

    def __init__(self, ctx: TextRLHFContext, every: int):
        super().__init__()
        self.ctx, self.every, self.rollouts = ctx, every, 0
        self.scores: list[float] = []
        self.kls: list[float] = []

    def _on_step(self) -> bool:
        for info, done in zip(self.locals.get("infos", ()), self.locals.get("dones", ()), strict=False):
            if done:  # score and kl_sum are in every step's info, NaN before the end (TextGenEnv, ## Info)
                self.scores.append(float(info["score"]))
                self.kls.append(float(info["kl_sum"]))
        return True

    def _on_rollout_end(self) -> None:
        self.rollouts += 1
        if self.scores:
            metrics = {"env/score_mean": float(np.mean(self.scores)), "env/kl_to_ref": float(np.mean(self.kls))}
            self.ctx.log(self.rollouts, metrics)
            self.scores.clear()
            self.kls.clear()
        if self.every and self.rollouts % self.every == 0:
            self.ctx.evaluate_and_log(self.rollouts)


def make_text_vec_env(ctx: TextRLHFContext, n_envs: int) -> TextGenSB3VecEnv:
    """An SB3 VecEnv of ``n_envs`` rows of one batched TextGen vector env (``agents.sb3.text_vec_env``) acting with
    ``ctx.policy`` against ``ctx.ref_model``, with the run's KL penalty (an adaptive beta follows every episode)."""
    cfg = ctx.config
    venv = TextGenSB3VecEnv(TextGenVectorEnv(
        n_envs, model=ctx.policy, tokenizer=ctx.tokenizer, prompts=ctx.train_prompts, reward_fn=ctx.reward_model,
        ref_model=ctx.ref_model, kl_coef=cfg.kl_penalty(), max_new_tokens=cfg.max_new_tokens,
        max_prompt_tokens=cfg.max_prompt_tokens, temperature=cfg.temperature, device=ctx.device,
        autoreset_mode="SameStep",
    ))
    venv.seed(cfg.seed)
    return venv


def _improve_sb3(ctx: TextRLHFContext) -> dict[str, int]:
    cfg = ctx.config
    settings = dict(cfg.agent_config())
    n_envs = int(settings.pop("n_envs", 1))
    venv = make_text_vec_env(ctx, n_envs)
    model = make_sb3_text_model(
        cfg.algorithm.agent, venv, learning_rate=cfg.learning_rate, gamma=1.0, gae_lambda=0.95, seed=cfg.seed,
        **settings,
    )
    model.set_logger(_sb3_logger(ctx))
    # The native agents' budget in env steps (tokens): iterations of num_envs episodes of at most max_new_tokens.
    total = cfg.iterations * cfg.num_envs * cfg.max_new_tokens
    model.learn(total, callback=CallbackList([SyncTextEnvCallback(), _PipelineLogging(ctx, cfg.eval_every)]))
    return {"tokens_seen": int(model.num_timesteps), "sb3_n_envs": n_envs, "sb3_n_steps": int(model.n_steps)}


def _sb3_logger(ctx: TextRLHFContext) -> Logger:
    """SB3's own scalars, to TensorBoard under the run's ``tb/sb3`` (the logger the loop hands SB3)."""
    return configure(str(ctx.run_dir.path / "tb" / "sb3"), ["tensorboard"])
