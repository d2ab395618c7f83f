"""What the text RLHF run hands its improvement step: the settings (``TextRLHFConfig``), the context
(``TextRLHFContext``: policy, frozen reference, tokenizer, teacher, labelled pairs, learned reward, run directory) and
the held-out evaluation (``Evaluation``)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from agents.llm.base import _check
from agents.llm.rollout import collect_rollout
from agents.loop.preference_loop import LoopConfig
from agents.rundir import RunDir, check_device
from textenv import TextGenVectorEnv

# Per-algorithm defaults of the demo on the default LM (tuned so that each finishes in a few minutes on 2 CPU cores).
ALGO_DEFAULTS: dict[str, dict[str, Any]] = {
    "ppo": {"iterations": 30, "learning_rate": 1e-4, "kl_coef": 0.05, "num_envs": 32},
    "grpo": {"iterations": 40, "learning_rate": 2e-4, "kl_coef": 0.04, "num_envs": 32, "group_size": 8},
    "rloo": {"iterations": 40, "learning_rate": 2e-4, "kl_coef": 0.05, "num_envs": 32, "group_size": 4},
    "dpo": {"iterations": 2, "learning_rate": 1e-4, "kl_coef": 0.1, "num_pairs": 512, "eval_every": 10},
    "kto": {"iterations": 2, "learning_rate": 1e-4, "kl_coef": 0.1, "num_pairs": 512, "eval_every": 10},
    # SB3 runs get the native PPO budget in tokens (iterations * num_envs * max_new_tokens; see text_improvers.py).
    "sb3-ppo": {"iterations": 40, "learning_rate": 1e-4, "kl_coef": 0.05, "num_envs": 32},
    "sb3-a2c": {"iterations": 40, "learning_rate": 1e-4, "kl_coef": 0.05, "num_envs": 32},
}

#: Algorithms that learn from the labelled pairs directly, with no reward model (Rafailov et al. 2023; Ethayarajh
#: et al. 2024).
OFFLINE_ALGOS = ("dpo", "kto")

#: Who labels the pairs of a text run (``TextRLHFConfig.labeller``).
LABELLERS = ("teacher", "human", "mixed", "dataset")


@dataclasses.dataclass
class TextRLHFConfig:
    """Settings of the end-to-end text RLHF pipeline (``TextRLHFConfig.for_algo`` fills per-algorithm defaults)."""

    algo: str = "ppo"
    """Improvement step: ppo, grpo, rloo, dpo, kto, sb3-ppo or sb3-a2c (``agents.loop.text_improvers``)."""
    seed: int = 0
    """Seed of sampling, labelling, reward-model training and policy optimisation."""
    device: str | None = None
    """Torch device; None = CUDA if available, else CPU."""
    max_new_tokens: int = 24
    """Response length limit (tokens); the default LM's reviews end with EOS well within 24."""
    max_prompt_tokens: int = 16
    """Longest prompt (tokens); longer prompts are an error, never truncated."""
    temperature: float = 1.0
    """Sampling temperature of rollouts, pairs and evaluation."""
    num_pairs: int = 256
    """Completion pairs labelled by the teacher (the label budget)."""
    teacher_beta: float = math.inf
    """Teacher rationality (B-Pref beta, in VADER units): inf = always prefers the higher score."""
    rm_epochs: int = 3
    """Reward-model epochs over the labelled pairs."""
    rm_learning_rate: float = 3e-4
    """Reward-model learning rate."""
    rm_batch_size: int = 16
    """Reward-model pairs per step."""
    rm_val_fraction: float = 0.15
    """Share of labelled pairs held out to measure the reward model's accuracy."""
    iterations: int = 40
    """RL iterations (collect + update), or DPO / KTO epochs over the pairs."""
    learning_rate: float = 1e-4
    """Policy learning rate."""
    kl_coef: float = 0.05
    """KL coefficient beta (PPO/RLOO: in the reward; GRPO: in the loss; DPO, KTO: their beta)."""
    num_envs: int = 32
    """Env rows per RL iteration (GRPO/RLOO: prompts per step = num_envs / group_size)."""
    group_size: int = 8
    """Samples per prompt for GRPO/RLOO."""
    eval_prompts: int = 30
    """Held-out prompts for the oracle score (at most the size of the test split)."""
    eval_samples: int = 4
    """Completions sampled per held-out prompt at each evaluation."""
    eval_every: int = 5
    """Evaluate the oracle score every this many iterations (DPO: steps) for the curves; 0 = only before/after."""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Additional agent-config fields, passed through to the algorithm's config (e.g. ``{"ppo_epochs": 2}``)."""
    # -- the loop (agents.loop.text_loop): rounds, who labels, and the user's own model and data -----------------
    rounds: int = 1
    """Improve -> label -> refit rounds after the initial labelling; 1 = the offline pipeline (every label on the
    initial policy's completions, then one improvement), more = the online loop (labels spread over rounds, asked
    on the current policy's completions)."""
    initial_label_fraction: float = 0.4
    """With ``rounds > 1``: the share of the labels spent on the initial policy before it trains."""
    label_schedule: str = "constant"
    """With ``rounds > 1``: how the other labels spread over rounds, ``constant`` or ``inverse_time``."""
    selection: str = "random"
    """Which candidate pairs to label: ``random`` or ``disagreement`` (reward ensemble variance; needs
    ``rm_ensemble >= 2``; Christiano et al. 2017, Sec. 2.2.4)."""
    oversample: int = 4
    """Candidate pairs sampled per label wanted when selecting by disagreement."""
    rm_ensemble: int = 1
    """Reward models in the ensemble (each on a bootstrap of the labels when > 1); the policy gets their mean."""
    labeller: str = "teacher"
    """Who labels: ``teacher`` (simulated), ``human`` (people in ``rlhf-gym label --run OUT``; the loop waits),
    ``mixed`` (``human_fraction`` of each batch to people, the rest to the teacher) or ``dataset`` (the pairs of
    ``preferences``, no completions sampled for labelling)."""
    human_fraction: float = 0.5
    """With ``labeller="mixed"``: the share of each batch of pairs that people label."""
    label_timeout: float | None = None
    """Seconds to wait for people per batch (None = as long as it takes); unlabelled pairs then count as skipped."""
    model: str | None = None
    """Policy: a Hugging Face causal LM id or local directory; None = the offline default LM."""
    tokenizer: str | None = None
    """Tokenizer id or directory; None = the model's own."""
    prompts: str | None = None
    """Prompt file (.txt, one per line; .jsonl with a prompt field) or dataset directory; None = the default LM's
    prompts (required with ``model``)."""
    preferences: str | None = None
    """Preference file (.jsonl: TRL standard, conversational or implicit-prompt; this toolkit's pairs) or dataset
    directory. With ``labeller="dataset"`` it is what is labelled; with any other labeller its pairs join the
    labels gathered online."""
    progress_bar: bool | None = None
    """Show a tqdm bar over the rounds; None = only when stderr is a terminal."""

    def __post_init__(self) -> None:
        _check(self.algo in ALGO_DEFAULTS, f"algo must be one of {sorted(ALGO_DEFAULTS)}, got {self.algo!r}")
        for name in (
            "max_new_tokens",
            "max_prompt_tokens",
            "num_pairs",
            "rm_epochs",
            "rm_batch_size",
            "iterations",
            "num_envs",
            "eval_prompts",
            "eval_samples",
        ):
            _check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        _check(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        _check(0 <= self.rm_val_fraction < 1, f"rm_val_fraction must be in [0, 1), got {self.rm_val_fraction}")
        _check(self.eval_every >= 0, f"eval_every must be >= 0, got {self.eval_every}")
        _check(self.teacher_beta >= 0, f"teacher_beta must be >= 0, got {self.teacher_beta}")
        self._check_numbers()
        self._check_loop()

    def _check_numbers(self) -> None:
        for name in ("learning_rate", "rm_learning_rate"):
            value = getattr(self, name)
            _check(math.isfinite(value) and value > 0, f"{name} must be a finite number > 0, got {value}")
        _check(math.isfinite(self.kl_coef) and self.kl_coef >= 0,
               f"kl_coef must be a finite number >= 0, got {self.kl_coef}")
        if self.algo in OFFLINE_ALGOS:
            _check(self.kl_coef > 0, f"kl_coef is {self.algo}'s beta and must be > 0, got {self.kl_coef}")
        check_device(self.device)  # DeviceError (a RunError: one line, rc 2 in the CLI)

    def _check_loop(self) -> None:
        _check(self.rounds >= 1, f"rounds must be >= 1, got {self.rounds}")
        _check(self.iterations >= self.rounds, f"iterations={self.iterations} must be >= rounds={self.rounds} (each "
                                               "round improves the policy at least once); raise iterations")
        _check(0.0 <= self.initial_label_fraction <= 1.0,
               f"initial_label_fraction must be in [0, 1], got {self.initial_label_fraction}")
        _check(self.label_schedule in ("constant", "inverse_time"),
               f"label_schedule must be 'constant' or 'inverse_time', got {self.label_schedule!r}")
        _check(self.selection in ("random", "disagreement"),
               f"selection must be 'random' or 'disagreement', got {self.selection!r}")
        _check(self.oversample >= 1 and self.rm_ensemble >= 1, "oversample and rm_ensemble must be >= 1")
        if self.selection == "disagreement":
            _check(self.rm_ensemble >= 2 and self.algo not in OFFLINE_ALGOS,
                   "selection='disagreement' needs a reward ensemble: set rm_ensemble >= 2 (and an RL algo, not "
                   f"{self.algo}), or use selection='random'")
        _check(self.labeller in LABELLERS, f"labeller must be one of {', '.join(LABELLERS)}, got {self.labeller!r}")
        _check(0.0 <= self.human_fraction <= 1.0, f"human_fraction must be in [0, 1], got {self.human_fraction}")
        _check(self.label_timeout is None or self.label_timeout > 0,
               f"label_timeout must be > 0 seconds or None, got {self.label_timeout}")
        _check(self.labeller != "dataset" or self.preferences is not None,
               "labeller='dataset' labels from a preference file: pass preferences=FILE (--preferences)")
        _check(self.model is None or self.prompts is not None,
               "a model of your own needs prompts of your own: pass prompts=FILE (--prompts)")

    @property
    def step_unit(self) -> str:
        """What one step of the loop's budget is: an RL iteration, or an epoch of DPO / KTO over the pairs."""
        return "epoch" if self.algo in OFFLINE_ALGOS else "iteration"

    def loop_config(self) -> LoopConfig:
        """The budgets of ``agents.loop.preference_loop.PreferenceLoop`` for this run. A step is one improvement
        iteration (``step_unit``) and the initial labelling counts as one; the labels of round r are used by the
        improvements of rounds r+1..R, so the last round asks for none."""
        online = self.rounds > 1
        return LoopConfig(
            labels=self.num_pairs, steps=self.iterations + 1, rounds=self.rounds, initial_steps=1,
            initial_policy="agent", initial_label_fraction=self.initial_label_fraction if online else 1.0,
            label_schedule=self.label_schedule, label_until=(self.rounds - 1) / self.rounds if online else 1.0,
            selection=self.selection, oversample=self.oversample, eval_episodes=1, round_eval_episodes=1,
            eval_every=1 if online else 0, seed=self.seed, progress_bar=self.progress_bar,
        )

    @classmethod
    def for_algo(cls, algo: str, **overrides: Any) -> TextRLHFConfig:
        """The config with ``ALGO_DEFAULTS[algo]`` applied, then ``overrides``."""
        return cls(algo=algo, **{**ALGO_DEFAULTS.get(algo, {}), **overrides})

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> TextRLHFConfig:
        """The settings ``run_dir`` was started with (its ``config.json``), to resume it."""
        path = Path(run_dir) / "config.json"
        try:
            values = dict(json.loads(path.read_text(encoding="utf-8"))["config"])
            names = {f.name for f in dataclasses.fields(cls)}
            values = {k: v for k, v in values.items() if k in names and k != "progress_bar"}
            values["teacher_beta"] = float(values.get("teacher_beta", math.inf))  # JSON has no inf: "inf"
            return cls(**values)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path} cannot be read as a text run's settings ({err}); start a new run instead") \
                from err


class Evaluation(NamedTuple):
    prompts: list[str]
    responses: list[str]
    oracle_scores: np.ndarray  # (B,)
    kl_to_ref: np.ndarray  # (B,) sequence KL (sum of log pi - log pi_ref over the response)

    @property
    def oracle_score(self) -> float:
        return float(self.oracle_scores.mean())


@dataclasses.dataclass
class TextRLHFContext:
    """Everything an improvement step needs; it trains ``policy`` in place."""

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

    def make_env(self, num_envs: int, kl_coef: float, reward_fn: Any, prompts: list[str] | None = None):
        """A torch-backend TextGen vector env acting with ``policy`` against the frozen ``ref_model``."""
        cfg = self.config
        return TextGenVectorEnv(
            num_envs,
            model=self.policy,
            tokenizer=self.tokenizer,
            prompts=prompts or self.train_prompts,
            reward_fn=reward_fn,
            ref_model=self.ref_model,
            kl_coef=kl_coef,
            max_new_tokens=cfg.max_new_tokens,
            max_prompt_tokens=cfg.max_prompt_tokens,
            temperature=cfg.temperature,
            device=self.device,
            array_backend="torch",
        )

    def evaluate(self) -> Evaluation:
        """Sample ``eval_samples`` completions per held-out prompt (fixed seed: common random numbers across calls)."""
        env = getattr(self, "_eval_env", None)
        if env is None:  # kl_coef only makes the env compute reference log-probs; its reward is not used
            env = self._eval_env = self.make_env(len(self.eval_rows), 1.0, self.teacher.score, self.eval_rows)
        gen = torch.Generator(device=self.device).manual_seed(self.config.seed + 12345)
        batch = collect_rollout(env, prompts=self.eval_rows, seed=self.config.seed, generator=gen)
        return Evaluation(batch.prompts, batch.responses, batch.scores.cpu().numpy(), batch.kl_sum.cpu().numpy())

    def evaluate_and_log(self, step: int) -> Evaluation:
        ev = self.evaluate()
        self.run_dir.log(step, {"eval/oracle_score": ev.oracle_score, "eval/kl_to_ref": float(ev.kl_to_ref.mean())})
        return ev

    def eval_callback(self) -> Callable:
        """A ``learn()`` callback that logs the oracle score every ``eval_every`` iterations."""
        every = self.config.eval_every

        def callback(_agent, step: int, _metrics) -> bool:
            if every and step % every == 0:
                self.evaluate_and_log(step)
            return True

        return callback


class NormalizedReward:
    """``(r(x, y) - mean) / std`` of a reward function, with mean and std measured on the initial policy's samples.

    "Reward normalisation": the learned reward's offset and scale are arbitrary (Bradley-Terry sees only differences),
    so it is normalised to mean 0, std 1 on reference-policy responses before RL, which keeps the KL coefficient
    meaningful (The N Implementation Details of RLHF with PPO, Huang et al. 2024; Ziegler et al. 2019).
    """

    def __init__(self, reward_fn: Any, prompts: list[str], responses: list[str]):
        scores = torch.as_tensor(reward_fn(prompts, responses), dtype=torch.float64).cpu()
        self.reward_fn, self.mean, self.std = reward_fn, float(scores.mean()), float(scores.std().clamp(min=1e-6))

    @classmethod
    def with_stats(cls, reward_fn: Any, mean: float, std: float) -> NormalizedReward:
        """The normalised reward with known statistics (a reloaded checkpoint's)."""
        self = cls.__new__(cls)
        self.reward_fn, self.mean, self.std = reward_fn, float(mean), float(std)
        return self

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        scores = torch.as_tensor(self.reward_fn(prompts, responses)).float()
        return (scores - self.mean) / self.std
