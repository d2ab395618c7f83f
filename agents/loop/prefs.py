"""One preference-learning run on a Gymnasium env: the config behind ``rlhf-gym prefs`` and the function that runs it.

    from agents.loop.prefs import PrefsConfig, run_prefs
    summary = run_prefs(PrefsConfig.for_env("CartPole-v1", seed=1), "runs/cartpole")

``PrefsConfig.for_env`` starts from the tuned preset of the env (``ENV_PRESETS``) when there is one; every field can
be overridden. The default config is the embedded default run: CartPole-v1, PPO, 150 labels, 50k env steps.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from agents.loop.preference_loop import LoopCallback, LoopConfig, PreferenceLoop
from agents.loop.segment_pairs import EnsembleRewardModel, SegmentPairSource
from agents.sb3.control import SB3Agent, check_algorithm, check_env_id, default_hyperparams
from rewardmodels.ensemble import FitConfig, RewardEnsemble
from rewardmodels.teachers import PRESETS as TEACHER_PRESETS
from rewardmodels.teachers import make_teacher

logger = logging.getLogger(__name__)

LABELLERS = ("teacher", "human", "mixed")

#: Tuned settings per env (fields of PrefsConfig). CartPole: rl-zoo PPO, 50-step segments (the pole falls within
#: ~20 steps under a random policy, so most early pairs differ in when they terminate), 40% of the labels up front,
#: the rest front-loaded into the first 60% of the rounds: PPO then optimises a reward that no longer moves. Measured
#: on seeds 0-4 (benchmarks/RESULTS.md): labels until 80% of the rounds, 2 of 5 seeds reach 475; until 95%, 1 of 5;
#: until 60% with the steeper schedule, 4 of 5.
ENV_PRESETS: dict[str, dict[str, Any]] = {
    "CartPole-v1": dict(algo="ppo", labels=150, steps=50_000, segment_len=50, rounds=24, initial_steps=2_000,
                        initial_label_fraction=0.4, label_until=0.6, schedule_c=0.15, reward_epochs=40),
    "Pendulum-v1": dict(algo="sac", labels=200, steps=40_000, segment_len=50, rounds=20, initial_steps=2_000,
                        initial_label_fraction=0.25, reward_epochs=40),
}


@dataclass
class PrefsConfig:
    env: str = "CartPole-v1"
    """Any registered Gymnasium env id (``package.module:Id-v0`` imports the package)."""
    algo: str = "ppo"
    """Stable-Baselines3 algorithm: ppo, a2c, sac, dqn, td3, ddpg."""
    labels: int = 150
    """Preference-label budget."""
    steps: int = 50_000
    """Env-step budget (initial collection + training)."""
    seed: int = 0
    """Seeds the agent, the envs, the reward ensemble, the teacher and the loop."""
    teacher: str = "oracle"
    """Simulated teacher preset (B-Pref): oracle, noisy, myopic, mistake, skip, equal."""
    teacher_params: dict[str, float] = field(default_factory=dict)
    """Overrides of the teacher's fields: beta, gamma, eps, skip_threshold, equal_threshold."""
    labeller: str = "teacher"
    """Who labels: ``teacher`` (the simulated one above), ``human`` (people, in the web app: ``rlhf-gym label --run
    OUT``; the loop waits for them), or ``mixed`` (a ``human_fraction`` share of each batch to people, the rest to
    the teacher). Human labelling renders clips from the observations, so it needs a classic-control env."""
    human_fraction: float = 0.5
    """With ``labeller="mixed"``: the share of each batch of pairs that people label."""
    label_timeout: float | None = None
    """Seconds to wait for people per batch (None = as long as it takes); unlabelled pairs then count as skipped."""
    selection: str = "disagreement"
    """Query selection: random or disagreement (ensemble variance over oversampled candidates)."""
    ensemble: int = 3
    """Reward nets in the ensemble."""
    segment_len: int = 50
    """Steps per segment."""
    rounds: int = 24
    """Learn -> label -> fit rounds after the initial one."""
    initial_steps: int = 2_000
    """Env steps of the initial random-policy collection that the first labels are drawn from."""
    initial_label_fraction: float = 0.4
    """Share of the labels asked about the initial collection, before the agent trains."""
    label_schedule: str = "inverse_time"
    """How labels spread over the rounds: constant, or inverse_time (rate c/(t+c), Christiano et al. App. A)."""
    schedule_c: float = 0.3
    """c of the inverse-time schedule as a fraction of the labelling horizon (smaller = more front-loaded)."""
    label_until: float = 0.8
    """Fraction of the rounds that ask for labels (the last rounds only polish the policy)."""
    reward_epochs: int = 40
    """Passes over the labelled pairs per reward-model fit."""
    reward_hidden: tuple[int, ...] = (64, 64)
    """Hidden layers of each reward net."""
    eval_episodes: int = 20
    """Episodes of the final evaluation on the true reward."""
    eval_every: int = 4
    """Evaluate the policy (5 episodes, true reward) every this many rounds for the curves; 0 = only at the end."""
    device: str = "cpu"
    """Torch device of the agent and the reward model (tiny MLPs are fastest on CPU)."""
    hyperparams: dict[str, Any] | None = None
    """SB3 constructor kwargs (and n_envs); None = the tuned preset for (algo, env) or SB3's defaults."""
    progress_bar: bool | None = None
    """tqdm bar; None = only on a terminal."""

    def __post_init__(self) -> None:
        self.algo = check_algorithm(self.algo)  # UnknownAlgorithmError lists the valid names
        check_env_id(self.env)  # UnknownEnvError suggests close ids
        if self.teacher not in TEACHER_PRESETS:
            raise ValueError(f"unknown teacher {self.teacher!r}; choose one of {', '.join(TEACHER_PRESETS)}")
        if self.labeller not in LABELLERS:
            raise ValueError(f"unknown labeller {self.labeller!r}; choose one of {', '.join(LABELLERS)}")
        if not 0.0 <= self.human_fraction <= 1.0:
            raise ValueError(f"human_fraction must be in [0, 1], got {self.human_fraction}")
        if self.labeller != "teacher":
            from rewardmodels.feedback.human import check_renderable

            check_renderable(self.env)
        if self.label_timeout is not None and self.label_timeout <= 0:
            raise ValueError(f"label_timeout must be > 0 seconds or None (wait as long as it takes), got "
                             f"{self.label_timeout}")
        if self.selection not in ("random", "disagreement"):
            raise ValueError(f"selection must be 'random' or 'disagreement', got {self.selection!r}")
        for name in ("labels", "steps", "ensemble", "segment_len", "rounds", "reward_epochs", "eval_episodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.initial_steps < self.steps:
            raise ValueError(f"initial_steps must be in [0, steps={self.steps}), got {self.initial_steps}; "
                             "lower it or raise --steps")
        if self.segment_len > self.steps // 4:
            raise ValueError(f"segment_len={self.segment_len} is too long for a {self.steps}-step run; "
                             "use a segment length of at most steps / 4")
        self.reward_hidden = tuple(int(h) for h in self.reward_hidden)

    @classmethod
    def for_env(cls, env: str = "CartPole-v1", **overrides: Any) -> PrefsConfig:
        """The tuned preset of ``env`` (if any) with ``overrides`` (``None`` values mean "keep the preset")."""
        values = dict(ENV_PRESETS.get(env, {}))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(env=env, **values)

    def loop_config(self) -> LoopConfig:
        return LoopConfig(total_labels=self.labels, total_steps=self.steps, rounds=self.rounds,
                          initial_label_fraction=self.initial_label_fraction, initial_steps=self.initial_steps,
                          label_schedule=self.label_schedule, schedule_c=self.schedule_c,
                          label_until=self.label_until, selection=self.selection, eval_episodes=self.eval_episodes,
                          eval_every=self.eval_every, seed=self.seed, progress_bar=self.progress_bar)


def make_labeller(cfg: PrefsConfig, out: str | os.PathLike):
    """The simulated teacher, the people of the web app (``HumanLabeller`` on ``out``), or a mix, per ``cfg``."""
    teacher = make_teacher(cfg.teacher, seed=cfg.seed, **cfg.teacher_params)
    if cfg.labeller == "teacher":
        return teacher
    from rewardmodels.feedback.human import HumanLabeller, MixedLabeller, StateRenderer

    human = HumanLabeller(out, renderer=StateRenderer(cfg.env), timeout=cfg.label_timeout,
                          on_timeout="raise" if cfg.label_timeout is None else "nan", progress=cfg.progress_bar)
    if cfg.labeller == "human":
        return human
    return MixedLabeller(human, teacher, cfg.human_fraction, seed=cfg.seed)


def build_loop(cfg: PrefsConfig, out: str | os.PathLike,
               callbacks: list[LoopCallback] | tuple[LoopCallback, ...] = ()) -> PreferenceLoop:
    """Wire env, agent, reward ensemble, teacher and pair source into a ``PreferenceLoop`` writing to ``out``.
    Seeds torch first, so two loops built with the same config run identically."""
    torch.manual_seed(cfg.seed)
    loop_cfg = cfg.loop_config()
    source = SegmentPairSource(cfg.env, cfg.segment_len, seed=cfg.seed,
                               recent_steps=max(4 * cfg.segment_len, 2 * loop_cfg.steps_per_round))
    ensemble = RewardEnsemble.mlp(source.obs_space, source.act_space, n_members=cfg.ensemble, seed=cfg.seed,
                                  hidden=cfg.reward_hidden).to(cfg.device)
    reward_model = EnsembleRewardModel(ensemble, FitConfig(epochs=cfg.reward_epochs))
    hyper = default_hyperparams(cfg.algo, cfg.env) if cfg.hyperparams is None else dict(cfg.hyperparams)
    agent = SB3Agent(cfg.algo, cfg.env, ensemble.predict_reward, total_steps=cfg.steps, seed=cfg.seed,
                     device=cfg.device, hyperparams=hyper, wrap_venv=source.wrap)
    labeller = make_labeller(cfg, out)
    extra = {"prefs": dataclasses.asdict(cfg) | {"hyperparams": hyper},
             "title": f"{cfg.env} {cfg.algo} seed {cfg.seed}"}
    return PreferenceLoop(loop_cfg, agent, source, reward_model, labeller, out, callbacks=callbacks,
                          extra_config=extra)


def run_prefs(cfg: PrefsConfig, out: str | os.PathLike, resume: bool = False,
              callbacks: list[LoopCallback] | tuple[LoopCallback, ...] = ()) -> dict[str, Any]:
    """Run (or resume) the preference loop of ``cfg`` into run directory ``out``; returns summary.json's content."""
    loop = build_loop(cfg, out, callbacks)  # seeds torch
    try:
        return loop.run(resume=resume)
    finally:
        loop.agent.close()
