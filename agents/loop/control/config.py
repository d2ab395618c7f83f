"""The settings of a preference run on a Gymnasium env, in one place.

``agents.loop.preference_loop.LoopConfig`` holds what the loop itself needs (budgets, rounds, the label schedule,
query selection, evaluation), whatever the world. ``PrefsConfig`` is ``LoopConfig`` plus everything a control run
wires (env, SB3 algorithm, teacher or people, reward ensemble, pair source): the one object behind ``rlhf-gym
prefs``, its presets (``agents.loop.control.presets``) and ``run_prefs``. Each field is documented once, here; the
CLI only maps flags onto these fields.

    cfg = PrefsConfig.from_preset("christiano-mujoco", "Hopper-v5", labels=700, steps=1_000_000)
    cfg = PrefsConfig.for_env("CartPole-v1", seed=3)            # the env's tuned settings, else the defaults below
    cfg = PrefsConfig.load("runs/cartpole")                     # the settings a run directory was started with
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import agents.loop.control.bpref  # noqa: F401 - registers the B-Pref ids (BPref/walker-walk-v0, ...)
from agents.loop.config import RunConfig
from agents.loop.control.atari import atari_env_id
from agents.loop.control.presets import apply_preset
from agents.loop.preference_loop import LoopConfig
from agents.rundir import check_device
from agents.sb3.control import check_algorithm, check_env_id, check_hyperparams
from rewardmodels.feedback.human import check_renderable
from rewardmodels.teachers import TEACHER_PRESETS, make_teacher
from textenv.checks import check, check_number

logger = logging.getLogger(__name__)

LABELLERS = ("teacher", "human", "mixed")
REWARD_NETS = ("mlp", "cnn")


@dataclass
class PrefsConfig(LoopConfig, RunConfig):
    """Every setting of one preference run on a Gymnasium env (``rlhf-gym prefs``; module docstring)."""

    env: str = "CartPole-v1"
    """Any registered Gymnasium env id (``package.module:Id-v0`` imports the package)."""
    algo: str = "ppo"
    """Stable-Baselines3 algorithm: ppo, a2c, sac, dqn, td3, ddpg."""
    preset: str | None = None
    """The preset these settings started from (``agents.loop.control.presets.PREFS_PRESETS``), recorded for the run
    directory."""
    atari_preprocessing: bool = False
    """Run the agent on the paper's preprocessed frames of the ALE env ``env`` (``agents.loop.control.atari``)."""
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
    segment_len: int = 50
    """Steps per segment."""
    experience_capacity: int = 20_000
    """Env steps of recent experience kept for cutting candidate segments (bounds memory, and checkpoints)."""
    ensemble: int = 3
    """Reward nets in the ensemble."""
    reward_net: str = "mlp"
    """Reward net: ``mlp`` over (observation, action) (A.1) or ``cnn`` over stacked frames (A.2)."""
    reward_hidden: tuple[int, ...] = (64, 64)
    """Hidden layers of each MLP reward net."""
    reward_activation: str = "leaky_relu"
    """Activation of the MLP reward nets (the paper's leaky ReLU, alpha 0.01, A.1; or relu, tanh)."""
    reward_net_kwargs: dict[str, Any] = field(default_factory=dict)
    """Further constructor kwargs of the reward net (e.g. the CNN's channels, dropout, batch norm)."""
    reward_scale: float = 1.0
    """Standard deviation of the reward the agent sees (1 MuJoCo A.1, 0.05 Atari A.2)."""
    reward_epochs: int = 40
    """Passes over the labelled pairs per reward-model fit."""
    fit: dict[str, Any] = field(default_factory=dict)
    """Other ``rewardmodels.ensemble.FitConfig`` fields (the paper's: noise 0.1, validation 1/e, adaptive L2; SURF's
    ``pseudo_threshold``, ``pseudo_weight``, ``pseudo_ratio``, ``crop``)."""
    explore_k: int = 5
    """With ``initial_policy="explore"``: the k of PEBBLE's k-nearest-neighbour state entropy (PEBBLE: 5;
    ``agents.loop.control.explore``)."""
    unlabelled_per_label: int = 0
    """Unlabelled segment pairs drawn from recent experience per new label, for SURF's pseudo-labels (SURF: 10 on
    Meta-World, 100 on DMC; ``agents.loop.reward_model.UnlabelledPool``); 0 = none."""
    unlabelled_capacity: int = 4_096
    """The most recent unlabelled pairs kept for pseudo-labelling (ours; bounds memory and checkpoints)."""
    segment_context: int = 0
    """Steps cut, unlabelled, before and after each segment, into which SURF's temporal crops may reach (SURF: 5;
    ``rewardmodels.surf``); the labeller sees only the ``segment_len`` steps between."""
    pretrain_epochs: int | None = None
    """Epochs of the first reward fit, on the initial labels (Atari: 200, A.2); None = ``reward_epochs``."""
    label_buffer: int | None = None
    """Fit on only the most recent labels (Atari: 3,000, A.2); None = all."""
    fit_rate: float | None = None
    """Labels processed by reward training per env step: each fit after the first runs ``fit_rate * new env steps /
    batch_size`` gradient steps (Atari: 0.1, A.2); None = ``reward_epochs`` epochs per fit."""
    device: str = "cpu"
    """Torch device of the agent and the reward model (tiny MLPs are fastest on CPU)."""
    hyperparams: dict[str, Any] | None = None
    """SB3 constructor kwargs (and n_envs); None = the tuned ones for (algo, env), else SB3's defaults. An SB3
    features extractor may be named by its class name (``"NatureCNN"``), so that config.json stays JSON."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.algo = check_algorithm(self.algo)  # UnknownAlgorithmError lists the valid names
        if self.atari_preprocessing:
            atari_env_id(self.env)  # NotAnAtariEnvError for anything but ALE ids; registers the preprocessed id
        check_env_id(self.env_id)  # UnknownEnvError suggests close ids
        self.check_run()
        check(self.teacher in TEACHER_PRESETS,
              f"unknown teacher {self.teacher!r}; choose one of {', '.join(TEACHER_PRESETS)}")
        try:  # the teacher's own checks, now rather than when the loop is built (return_scale: any, to check)
            make_teacher(self.teacher, return_scale=1.0, **self.teacher_params)
        except TypeError as err:
            raise ValueError(f"teacher_params: {err}; the teacher's settings are beta, gamma, eps, skip_threshold, "
                             "equal_threshold") from err
        self.check_labelling(LABELLERS)
        if self.labeller != "teacher":
            check_renderable(self.env_id)
        check(self.reward_net in REWARD_NETS,
              f"reward_net must be one of {', '.join(REWARD_NETS)}, got {self.reward_net!r}")
        check_number("labels", self.labels, low=1, integer=True, hint="a control run learns its reward from labels")
        for name in ("ensemble", "segment_len", "reward_epochs", "experience_capacity"):
            check_number(name, getattr(self, name), low=1, integer=True)
        check(self.segment_len <= self.steps // 4, f"segment_len={self.segment_len} is too long for a "
              f"{self.steps}-step run; use a segment length of at most steps / 4")
        check_number("reward_scale", self.reward_scale, low=0, low_open=True)
        self._check_pebble_surf()
        self.reward_hidden = tuple(int(h) for h in self.reward_hidden)
        check_device(self.device)  # DeviceError: --device cuda on a machine without CUDA
        if self.hyperparams is not None:
            check_hyperparams(self.algo, self.hyperparams)  # UnknownHyperparameterError names the key

    def _check_pebble_surf(self) -> None:
        for name in ("explore_k", "unlabelled_capacity"):
            check_number(name, getattr(self, name), low=1, integer=True)
        for name in ("unlabelled_per_label", "segment_context"):
            check_number(name, getattr(self, name), low=0, integer=True)
        check(self.reward_net == "mlp" or not (self.initial_policy == "explore" or self.segment_context
                                                or self.unlabelled_per_label),
              "PEBBLE's exploration and SURF's unlabelled pairs and crops work on state vectors: initial_policy="
              "'explore', segment_context and unlabelled_per_label are for reward_net='mlp'")
        check(self.fit.get("pseudo_threshold") is None or self.unlabelled_per_label > 0,
              "fit.pseudo_threshold (SURF's pseudo-labels) needs unlabelled pairs: set unlabelled_per_label >= 1 "
              "(SURF: 10 or 100)")

    @property
    def env_id(self) -> str:
        """The env the agent runs on: ``env``, or its preprocessed-frames id with ``atari_preprocessing``."""
        return atari_env_id(self.env) if self.atari_preprocessing else self.env

    @classmethod
    def from_preset(cls, name: str | None, env: str = "CartPole-v1", **overrides: Any) -> PrefsConfig:
        """The preset ``name`` (``agents.loop.control.presets.PREFS_PRESETS``; None = ``tuned``) applied to ``env``,
        with ``overrides`` (``None`` values mean "keep the preset's", so parsed-but-unset CLI flags change nothing)."""
        return cls(**apply_preset(name or "tuned", env, {k: v for k, v in overrides.items() if v is not None}))

    @classmethod
    def for_env(cls, env: str = "CartPole-v1", **overrides: Any) -> PrefsConfig:
        """The env's tuned settings (the ``tuned`` preset), if any, with ``overrides``."""
        return cls.from_preset("tuned", env, **overrides)

    @classmethod
    def migrate(cls, values: dict[str, Any], saved: dict[str, Any]) -> dict[str, Any]:
        """``RunConfig.migrate``: rlhf-gym 0.1's preset runs, "inf" teacher parameters, lists for tuples."""
        if isinstance(saved.get("preset"), dict):  # written by rlhf-gym 0.1's preset runs
            values = _from_v01_preset(values, saved["preset"])
        values["teacher_params"] = {k: (math.inf if v == "inf" else v)  # JSON has no inf: stored as a string
                                    for k, v in values.get("teacher_params", {}).items()}
        values["reward_hidden"] = tuple(values.get("reward_hidden", (64, 64)))
        values["fit"] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.get("fit", {}).items()}
        return values


def _from_v01_preset(prefs: dict[str, Any], preset: dict[str, Any]) -> dict[str, Any]:
    """A 0.1 preset run's ``prefs`` + ``preset`` sections as ``PrefsConfig`` fields."""
    values = {**prefs, "preset": preset["name"], "env": preset["requested_env"],
              "atari_preprocessing": preset["name"] == "christiano-atari", "schedule_c_steps": preset["schedule_c"],
              "reward_net": preset["net"], "reward_net_kwargs": preset.get("net_kwargs", {})}
    for key in ("initial_policy", "label_until", "oversample", "reward_scale", "fit", "pretrain_epochs",
                "label_buffer", "fit_rate", "experience_capacity"):
        if key in preset:
            values[key] = preset[key]
    return values
