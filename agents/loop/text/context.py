"""What the text RLHF run hands its improvement step: the context (``TextRLHFContext``: settings, policy, frozen
reference, tokenizer, teacher, labelled pairs, learned reward, the run directory's log) and the held-out evaluation
(``Evaluation``)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from agents.llm.rollout import collect_rollout
from agents.rundir import RunDir
from textenv import TextGenVectorEnv
from textenv.kl import KLPenalty
from textenv.reward_functions import WeightedRewards

if TYPE_CHECKING:
    from agents.loop.text.config import TextRLHFConfig


class Evaluation(NamedTuple):
    prompts: list[str]
    responses: list[str]
    oracle_scores: np.ndarray  # (B,) the teacher's scores (0 without a teacher)
    kl_to_ref: np.ndarray  # (B,) sequence KL (sum of log pi - log pi_ref over the response)

    @property
    def oracle_score(self) -> float:
        return float(self.oracle_scores.mean())


@dataclasses.dataclass
class TextRLHFContext:
    """Everything an improvement step needs; it trains ``policy`` in place.

    The loop owns the run directory: an improvement step writes only through :meth:`log` (its steps counted from
    ``step_offset``, where the rounds before it ended) and the loggers it is handed; agents get no run directory.
    """

    config: TextRLHFConfig
    policy: torch.nn.Module
    ref_model: torch.nn.Module
    tokenizer: Any
    teacher: Any
    pairs: Any  # TextPreferencePairs labelled by the teacher
    reward_model: Any  # LMRewardModel, or None for DPO
    train_prompts: list[str]
    eval_rows: list[str]
    run_dir: RunDir
    device: torch.device
    max_prompt_tokens: int = 16  # the run's prompt budget in tokens (agents.loop.text.loop.prompt_budget)
    reward_fns: Any = None  # textenv.reward_functions.WeightedRewards of the run's reward functions, or None
    kl: KLPenalty = dataclasses.field(default_factory=lambda: KLPenalty(0.0))  # the run's env KL penalty: one object
    best_of: int = 1  # the policy as evaluated: n samples per prompt, the reward model's best kept (best-of-n)
    returns: Any = None  # on an environment: the EnvironmentReturns of every conversation played (a ReturnTeacher's)
    step_offset: int = 0
    improve_clock: float | None = None
    """``time.perf_counter()`` when the run's improvement began, less the rounds before this one: ``log`` adds
    ``time/improve_s``, the improvement wall-clock so far (the x axis of "time to a learned reward")."""

    def reward(self) -> Any:
        """The policy's reward: the learned reward model (normalised), plus the weighted reward functions."""
        if self.reward_fns is None:
            return self.reward_model
        if self.reward_model is None:
            return self.reward_fns
        fns = self.reward_fns
        return WeightedRewards([self.reward_model, *fns.functions], [1.0, *fns.weights], fns.columns)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Log ``metrics`` of the improvement step's ``step`` on the run's axis (``step_offset + step``), with
        ``time/improve_s`` when the context has an ``improve_clock``."""
        if self.improve_clock is not None:
            metrics = {**metrics, "time/improve_s": time.perf_counter() - self.improve_clock}
        self.run_dir.log(self.step_offset + int(step), metrics)

    @property
    def environment(self) -> str | None:
        """The run's environment that answers (multi-turn), or None."""
        return self.config.environment

    def make_env(self, num_envs: int, reward_fn: Any, kl: KLPenalty | None = None, prompts: list[str] | None = None,
                 reference: bool = True, environment_reward: float | None = None) -> TextGenVectorEnv:
        """A torch-backend TextGen vector env acting with ``policy``; its reward is ``reward_fn`` plus the KL
        penalty ``kl`` (None: none) against the frozen ``ref_model``, whose log-probs it reports with ``reference``
        (the KL is then measured even without a penalty). On an environment (multi-turn), the environment's rewards
        count with weight ``environment_reward`` (default: the run's)."""
        cfg = self.config
        kl = kl if kl is not None else KLPenalty(0.0)
        return TextGenVectorEnv(
            num_envs,
            model=self.policy,
            tokenizer=self.tokenizer,
            reward_fn=reward_fn,
            ref_model=self.ref_model if (reference or kl.active) else None,
            kl_coef=kl,
            max_new_tokens=cfg.max_new_tokens,
            max_prompt_tokens=self.max_prompt_tokens,
            temperature=cfg.temperature,
            device=self.device,
            array_backend="torch",
            **self.episode_source(prompts, environment_reward),
        )

    def episode_source(self, prompts: list[str] | None = None, environment_reward: float | None = None
                       ) -> dict[str, Any]:
        """Where a TextGen env of this run starts its episodes, as its keyword arguments: the prompts (default: the
        training prompts), or the run's environment with its turn settings and the weight of its rewards (default:
        the run's ``environment_reward``)."""
        cfg = self.config
        if cfg.environment is None:
            return {"prompts": prompts or self.train_prompts}
        weight = cfg.environment_reward if environment_reward is None else environment_reward
        return {"environment": cfg.environment, "max_turn_tokens": cfg.max_turn_tokens,
                "environment_reward_weight": weight}

    def _sample(self, draw: int = 0) -> Evaluation:
        """One completion per held-out row, from a fixed seed (common random numbers across calls; ``draw`` picks
        another fixed stream), scored by the teacher (zeros without one)."""
        env = getattr(self, "_eval_env", None)
        if env is None:  # the KL to the reference is measured, not penalised; the reward is the teacher's score
            if self.environment is not None:  # the gold of a conversation: the environment's return
                env = self._eval_env = self.make_env(len(self.eval_rows), None, environment_reward=1.0)
            else:
                judge = self.teacher.score if self.teacher is not None else None
                env = self._eval_env = self.make_env(len(self.eval_rows), judge, prompts=self.eval_rows)
        gen = torch.Generator(device=self.device).manual_seed(self.config.seed + 12345 + 7919 * draw)
        if self.environment is not None:  # the held-out tasks: environment seeds (eval_rows holds them)
            batch = collect_rollout(env, seed=self.config.seed, generator=gen,
                                    environment_seeds=[int(s) for s in self.eval_rows])
            if self.returns is not None:  # the teacher judges these conversations (win rates) by their returns
                self.returns.record(batch.prompts, batch.responses, batch.scores.cpu().numpy())
        else:
            batch = collect_rollout(env, prompts=self.eval_rows, seed=self.config.seed, generator=gen)
        return Evaluation(batch.prompts, batch.responses, batch.scores.cpu().numpy(), batch.kl_sum.cpu().numpy())

    def evaluate(self) -> Evaluation:
        """``eval_samples`` completions per held-out prompt of the policy as it is now, or with ``best_of = n`` of
        the best-of-n policy: n draws per row, the reward model's best kept; its KL to the initial policy is the
        analytic ``log n - (n - 1) / n`` (Stiennon et al. 2020, App. G.3)."""
        first = self._sample()
        if self.best_of == 1:
            return first
        draws = [first, *(self._sample(k) for k in range(1, self.best_of))]
        proxy = np.stack([self.proxy_scores(d.prompts, d.responses) for d in draws])  # (n, B)
        best = proxy.argmax(0)
        rows = range(len(first.prompts))
        kl = np.full(len(first.prompts), np.log(self.best_of) - (self.best_of - 1) / self.best_of)
        return Evaluation(first.prompts, [draws[best[i]].responses[i] for i in rows],
                          np.array([draws[best[i]].oracle_scores[i] for i in rows]), kl)

    def proxy_scores(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """(B,) the learned reward (the proxy of Gao et al. 2022: the run's reward model as it is now)."""
        return torch.as_tensor(self.reward_model(prompts, responses), dtype=torch.float64).cpu().numpy()

    def evaluate_and_log(self, step: int) -> Evaluation:
        """The held-out evaluation, logged: ``eval/kl_to_ref`` (and ``eval/sqrt_kl``, the x axis of the
        over-optimisation picture), the gold ``eval/oracle_score`` with a teacher, the proxy ``eval/proxy_score``
        with a learned reward model."""
        ev = self.evaluate()
        kl = float(ev.kl_to_ref.mean())
        metrics = {"eval/kl_to_ref": kl, "eval/sqrt_kl": float(np.sqrt(max(kl, 0.0)))}
        if self.teacher is not None:
            metrics["eval/oracle_score"] = ev.oracle_score
        if self.environment is not None:  # what the environment gave, whoever labelled (the oracle's if it did)
            metrics["eval/environment_return"] = ev.oracle_score
        if self.reward_model is not None and not self.config.algorithm.offline:
            metrics["eval/proxy_score"] = float(self.proxy_scores(ev.prompts, ev.responses).mean())
        self.log(step, metrics)
        return ev

    def learn_callback(self) -> Callable:
        """A ``learn()`` callback (``callback(agent, step, metrics)``) that logs the step's metrics and, every
        ``eval_every`` steps, the oracle score: how the loop hears from an agent it gave no run directory."""
        every = self.config.eval_every

        def callback(_agent, step: int, metrics: Mapping[str, float]) -> bool:
            self.log(step, metrics)
            if every and step % every == 0:
                self.evaluate_and_log(step)
            return True

        return callback
