"""The improvement step of the text RLHF run: a learner per run, made once and kept across the loop's rounds, so
that Adam's moments, PPO's value head, an adaptive KL penalty and every random stream go on from round to round (a
2-round run on an unchanged reward is the uninterrupted run of the same iterations). ``make_learner(ctx)`` builds
the run's algorithm's learner (``agents.loop.text.algorithms``), one class per kind; ``learner.learn(k)`` trains
``ctx.policy`` in place for k iterations (DPO / KTO: epochs) on the reward the loop holds now, and returns extra
summary entries; ``state_dict`` / ``load_state_dict`` carry the learner through a checkpoint.

Where the run's ``kl_coef`` goes is decided here, once, from the registry line: into the env's reward
(``ctx.kl``, the run's ``KLPenalty``: PPO, RLOO, SB3, which read it back from their rollouts) or into the algorithm's
config field that its loss uses (GRPO's, DPO's and KTO's ``beta``; the env then measures the KL and does not
penalise it). Agents get no run directory: they report through the ``learn()`` callback and ``ctx.log``.

The SB3 learners (``sb3-ppo``, ``sb3-a2c``) train on the very env configuration the native agents use (same policy
object, frozen reference, learned reward, KL penalty, lengths and prompts), through unmodified SB3 and
``CausalLMPolicy``, so ``summary.json`` compares like with like. SB3 steps the rows of one batched
``TextGenVectorEnv`` through ``TextGenSB3VecEnv`` (one process: the env must share the policy's weights), and the
policy keeps its own KV cache (``agents.sb3.lm_forward``). The best-of-n learner (``bon``) trains nothing: each
iteration doubles n, and the policy it is evaluated as samples n completions per prompt and keeps the reward model's
best (``ctx.best_of``).
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import Logger, configure

from agents.loop.text.context import TextRLHFContext
from agents.sb3.text_policy import SyncTextEnvCallback, make_sb3_text_model
from agents.sb3.text_vec_env import TextGenSB3VecEnv
from textenv import TextGenVectorEnv

__all__ = ["make_learner", "make_text_vec_env"]


def make_learner(ctx: TextRLHFContext) -> Any:
    """The learner of the run's algorithm (module docstring)."""
    kinds = {"rl": RLLearner, "pairs": PairsLearner, "sb3": SB3Learner, "bon": BestOfNLearner}
    return kinds[ctx.config.algorithm.kind](ctx)


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return rng.bit_generator.state


class RLLearner:
    """An ``LMAgent`` on the vector env, rewarded by the learned reward (and the reward functions), plus the env's KL
    penalty if the algorithm takes its KL there. The env is kept; each round it gets the loop's current reward."""

    def __init__(self, ctx: TextRLHFContext):
        cfg = ctx.config
        self.ctx = ctx
        self.env = ctx.make_env(cfg.num_envs, ctx.reward(), ctx.kl)
        agent_class = cfg.algorithm.agent_class()
        takes_rm = "reward_model" in inspect.signature(agent_class).parameters
        self.agent = agent_class(self.env, cfg.agent_config(), **({"reward_model": ctx.reward_model} if takes_rm
                                                                  else {}))

    @property
    def step(self) -> int:
        return self.agent.iteration

    def learn(self, iterations: int) -> dict[str, Any]:
        self.env.engine.reward_fn = self.ctx.reward()  # the reward model the loop refitted since the last round
        tokens = self.agent.tokens_seen
        self.agent.learn(iterations, callback=self.ctx.learn_callback())
        return {"tokens_seen": self.agent.tokens_seen - tokens}

    def state_dict(self) -> dict[str, Any]:
        agent = self.agent
        state = {"optimizer": agent.optimizer.state_dict(), "iteration": agent.iteration,
                 "tokens_seen": agent.tokens_seen, "generator": agent.generator.get_state(),
                 "modules": {k: m.state_dict() for k, m in agent.extra_modules().items()},
                 "env_rng": _rng_state(self.env.np_random), "kl": self.ctx.kl.state_dict()}
        if hasattr(agent, "prompt_rng"):  # GRPO / RLOO: which prompts each group answers
            state["prompt_rng"] = _rng_state(agent.prompt_rng)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        agent = self.agent
        agent.optimizer.load_state_dict(state["optimizer"])
        for name, module in agent.extra_modules().items():
            module.load_state_dict(state["modules"][name])
        agent.iteration, agent.tokens_seen = int(state["iteration"]), int(state["tokens_seen"])
        agent.generator.set_state(state["generator"])
        self.env.np_random.bit_generator.state = state["env_rng"]
        self.ctx.kl.load_state_dict(state["kl"])
        if "prompt_rng" in state:
            agent.prompt_rng.bit_generator.state = state["prompt_rng"]


class PairsLearner:
    """An offline trainer (DPO, KTO) on the labelled pairs so far, no reward model. A trainer reads its data (and the
    reference's log-probs) when it is made, so each round makes one on the pairs of now, handing it the optimiser
    state, the step count and the batch-order stream of the round before. KTO reads each chosen response as a
    desirable example and each rejected one as an undesirable example (as TRL's KTO reads preference data)."""

    def __init__(self, ctx: TextRLHFContext):
        self.ctx, self.step, self.carried = ctx, 0, None

    def learn(self, epochs: int) -> dict[str, Any]:
        cfg = self.ctx.config
        trainer = cfg.algorithm.agent_class()(self.ctx.policy, self.ctx.tokenizer, self.ctx.pairs, cfg.agent_config(),
                                              ref_model=self.ctx.ref_model)
        if self.carried is not None:
            trainer.optimizer.load_state_dict(self.carried["optimizer"])
            trainer.generator.set_state(self.carried["generator"])
        trainer.step = self.step
        trainer.learn(epochs, callback=self.ctx.learn_callback())
        self.step = trainer.step
        self.carried = {"optimizer": trainer.optimizer.state_dict(), "generator": trainer.generator.get_state()}
        return {f"{trainer.algo}_steps": trainer.step, **trainer.evaluate()}

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "carried": self.carried}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.carried = int(state["step"]), state["carried"]


class BestOfNLearner:
    """Best-of-n sampling as the cheap baseline of the over-optimisation picture (Gao et al. 2022): no training;
    iteration k evaluates the policy "sample n = 2^k completions, keep the reward model's best", whose KL to the
    initial policy is ``log n - (n - 1) / n`` (Stiennon et al. 2020, App. G.3; Gao et al. 2022, Sec. 2.2)."""

    def __init__(self, ctx: TextRLHFContext):
        self.ctx, self.step = ctx, 0

    def learn(self, iterations: int) -> dict[str, Any]:
        for _ in range(iterations):
            self.step += 1
            self.ctx.best_of = 2 ** self.step
            self.ctx.evaluate_and_log(self.step)
        return {"best_of": self.ctx.best_of}

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.ctx.best_of = 2 ** self.step


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
            if done:  # the finished episode's score and kl_sum (TextGenEnv, ## Info)
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
        n_envs, model=ctx.policy, tokenizer=ctx.tokenizer, **ctx.episode_source(), reward_fn=ctx.reward(),
        ref_model=ctx.ref_model, kl_coef=ctx.kl, max_new_tokens=cfg.max_new_tokens,
        max_prompt_tokens=ctx.max_prompt_tokens, temperature=cfg.temperature, device=ctx.device,
        autoreset_mode="SameStep",
    ))
    venv.seed(cfg.seed)
    return venv


class SB3Learner:
    """An SB3 algorithm (``make_sb3_text_model``) on ``make_text_vec_env``; the model and its env are kept, each
    round gets the loop's current reward and trains on for its budget (``reset_num_timesteps=False``)."""

    def __init__(self, ctx: TextRLHFContext):
        cfg = ctx.config
        settings = dict(cfg.agent_config())
        self.ctx, self.n_envs = ctx, int(settings.pop("n_envs", 1))
        self.venv = make_text_vec_env(ctx, self.n_envs)
        self.model = make_sb3_text_model(cfg.algorithm.agent, self.venv, learning_rate=cfg.learning_rate, gamma=1.0,
                                         gae_lambda=0.95, seed=cfg.seed, **settings)
        self.model.set_logger(_sb3_logger(ctx))
        self.logging = _PipelineLogging(ctx, cfg.eval_every)  # kept: its rollout count is the step axis

    @property
    def step(self) -> int:
        return self.logging.rollouts

    def learn(self, iterations: int) -> dict[str, Any]:
        cfg = self.ctx.config
        self.venv.engine.reward_fn = self.ctx.reward()  # the reward model the loop refitted since the last round
        # The native agents' budget in env steps (tokens): iterations of num_envs episodes of at most max_new_tokens.
        before = int(self.model.num_timesteps)
        self.model.learn(iterations * cfg.num_envs * cfg.max_new_tokens, reset_num_timesteps=False,
                         callback=CallbackList([SyncTextEnvCallback(), self.logging]))
        return {"tokens_seen": int(self.model.num_timesteps) - before, "sb3_n_envs": self.n_envs,
                "sb3_n_steps": int(self.model.n_steps)}

    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.model.policy.state_dict(), "optimizer": self.model.policy.optimizer.state_dict(),
                "num_timesteps": int(self.model.num_timesteps), "rollouts": self.logging.rollouts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.policy.load_state_dict(state["policy"])
        self.model.policy.optimizer.load_state_dict(state["optimizer"])
        self.model.num_timesteps, self.logging.rollouts = int(state["num_timesteps"]), int(state["rollouts"])


def _sb3_logger(ctx: TextRLHFContext) -> Logger:
    """SB3's own scalars, to TensorBoard under the run's ``tb/sb3`` (the logger the loop hands SB3)."""
    return configure(str(ctx.run_dir.path / "tb" / "sb3"), ["tensorboard"])
