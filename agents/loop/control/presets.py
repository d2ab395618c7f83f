"""The one preset registry of preference runs: named sets of ``PrefsConfig`` field values for an env.

``tuned``: the settings tuned per env (CartPole-v1, Pendulum-v1; any other env gets ``PrefsConfig``'s defaults). It
is what ``rlhf-gym prefs`` uses without ``--preset``. ``christiano-mujoco`` and ``christiano-atari``: the protocol of
Christiano et al. 2017, "Deep reinforcement learning from human preferences" (arXiv:1706.03741), on current Gymnasium.

Every value below is the paper's unless marked "ours"; "A.1" / "A.2" are its appendix sections (MuJoCo / Atari),
"2.2.x" its method sections.

``christiano-mujoco`` (Hopper, HalfCheetah, Walker2d, Swimmer, Ant, Reacher, InvertedPendulum, InvertedDoublePendulum;
Gymnasium v5):

* segments of 1.5 s of env time (A.1: "trajectory segments that last 1.5 seconds"): ``round(1.5 / env.dt)`` steps,
  at most the env's time limit (Reacher's episodes last 1 s). NOTE: on v5 dt this is 30-188 steps (Hopper and
  Walker2d: dt = 0.008 s, 188 steps), while A.1 says "15 to 60 timesteps"; the paper's envs must have used coarser
  steps. ``segment_len`` overrides it.
* an ensemble of 3 predictors, each on its own bootstrap of the labels (2.2.3: "an ensemble of predictors, each
  trained on |D| triples sampled from D with replacement"; three members as in the paper's ablation code).
* 10x candidate oversampling, queries chosen by ensemble disagreement (2.2.4).
* label rate proportional to 2e6 / (T + 2e6) after T env steps (A.1): ``label_schedule="inverse_time"`` with
  ``schedule_c_steps=2e6``.
* 25% of the comparisons from a randomly initialised policy at the start (A.1): ``initial_label_fraction = 0.25``,
  ``initial_policy = "agent"`` (the untrained policy network is that randomly initialised policy).
* the predictor: two hidden layers of 64 units with leaky ReLU, alpha 0.01 (A.1); rewards normalised to standard
  deviation 1 (A.1).
* 1/e of the labels held out for validation, L2 adapted to keep validation loss at 1.1-1.5x training loss (2.2.3).
* the 10% random-response noise of the preference model (2.2.3: P = 0.05 + 0.9 sigmoid(R_a - R_b)).
* the policy: the paper used TRPO (A.1), which SB3 lacks; PPO (its successor) stands in, with gamma 0.995 and
  lambda 0.97 as in A.1 and the entropy bonus 0.01 (0.001 on Swimmer) of A.1 as ``ent_coef`` (ours: the rest of
  PPO's settings are rl-baselines3-zoo's MuJoCo PPO settings). ``algo="sac"`` (ours) gives ``MUJOCO_SAC`` instead:
  on HalfCheetah at a 150k-step budget PPO learns to vibrate for the learned reward, SAC does not
  (benchmarks/RESULTS.md).

``christiano-atari`` (Pong, BeamRider, Breakout, Enduro, Qbert, SpaceInvaders, Seaquest; ALE v5 via ale-py):

* standard Atari preprocessing (Mnih et al. 2015, as in A.2 "the same inputs as the policy"): 30 no-op starts, 4
  frame skip with max-pooling of the last two frames, grayscale, 84x84 (Gymnasium's ``AtariPreprocessing``), and 4
  stacked frames (``FrameStackObservation``). The env id becomes ``AtariPreprocessed/<Game>-v5``
  (``PrefsConfig.atari_preprocessing``, registered by ``agents/loop/control/atari.py``, so every part of the loop can
  ``gym.make`` it). v5's sticky actions (p = 0.25) are kept
  (ours; Machado et al. 2018's recommended protocol).
* the predictor: the paper's CNN (``rewardmodels.cnn.CNNRewardNet``, A.2), rewards normalised to standard deviation
  0.05 (A.2) via ``RewardEnsemble(reward_scale=0.05)``.
* segments of 25 steps (A.2: "25 timesteps (1.7 seconds at 15 fps with frame skipping)").
* 500 comparisons from the random initial policy, then a rate proportional to 5e6 / (T + 5e6) (A.2).
* 200 epochs of predictor training on those initial comparisons before the policy trains (A.2, "pretraining").
* a buffer of only the last 3,000 labels (A.2, "to ensure that the predictor gives enough weight to new labels").
* A2C (A.2: "A3C ... in synchronous form (A2C)": 16 workers, n = 5 steps, entropy bonus 0.01, learning rate 7e-4
  decayed linearly, gamma 0.99) or PPO (rl-baselines3-zoo's Atari PPO settings), from SB3, with the Nature CNN.

Use: ``rlhf-gym prefs --preset christiano-mujoco --env Hopper-v5 --labels 700 --steps 2000000``, or
``PrefsConfig.from_preset(name, env_id, **overrides)`` from Python (``apply_preset`` gives the field values).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from agents.loop.control.atari import ATARI_ENVS, ATARI_NAMESPACE
from rewardmodels.schedules import CHRISTIANO_ATARI_C, CHRISTIANO_MUJOCO_C

logger = logging.getLogger(__name__)

MUJOCO_ENVS = ("Hopper-v5", "HalfCheetah-v5", "Walker2d-v5", "Swimmer-v5", "Ant-v5", "Reacher-v5",
               "InvertedPendulum-v5", "InvertedDoublePendulum-v5")
SEGMENT_SECONDS = 1.5  # A.1
ATARI_SEGMENT_LEN = 25  # A.2
ATARI_INITIAL_LABELS = 500  # A.2
ATARI_PRETRAIN_EPOCHS = 200  # A.2
ATARI_LABEL_BUFFER = 3_000  # A.2
ATARI_FIT_RATE = 0.1  # A.2: the predictor "processes 1 label per 10 RL timesteps"
PAPER_FIT = dict(noise=0.1, val_fraction=float(np.exp(-1.0)), adaptive_l2=True, l2_target=(1.1, 1.5))  # 2.2.3
#: Ours: ``--algo sac`` on ``christiano-mujoco``: PEBBLE's agent (Lee et al. 2021: SAC whose replay buffer is relabelled
#: after every reward fit); SB3's SAC defaults but 64 x 64 nets (2.2x the env steps per CPU second of 256 x 256 here)
#: and 1,000 random steps before learning.
MUJOCO_SAC: dict[str, Any] = dict(n_envs=1, learning_starts=1_000, policy_kwargs=dict(net_arch=[64, 64]))
#: rl-baselines3-zoo's Atari PPO settings (hyperparams/ppo.yml, atari), for ``--algo ppo`` on the Atari preset.
ATARI_PPO = dict(n_envs=8, n_steps=128, n_epochs=4, batch_size=256, learning_rate="lin_0.00025",
                 clip_range="lin_0.1", vf_coef=0.5, ent_coef=0.01)

#: Settings per env (``tuned`` preset): the budgets of the issue protocols and the SB3 algorithm that fits the env;
#: CartPole: rl-zoo's PPO (``agents.sb3.control``), 50-step segments (the pole falls within ~20 steps under a random
#: policy, so most early pairs differ in when they terminate); a reward fit stops after the first epoch in which the
#: members order every training pair right (``FitConfig.stop_accuracy``: PEBBLE's early stop, Lee et al. 2021, at
#: 1.0 rather than its 0.97, which lost seeds here), about half a run's CPU time. Everything else is the loop's
#: defaults, not chosen on any seed. Pass rates over seeds 0-9 at 1 and the default thread count: benchmarks/RESULTS.md.
TUNED_PER_ENV: dict[str, dict[str, Any]] = {
    "CartPole-v1": dict(algo="ppo", labels=150, steps=50_000, segment_len=50, rounds=24, initial_steps=2_000,
                        initial_label_fraction=0.4, reward_epochs=40, fit={"stop_accuracy": 1.0}),
    "Pendulum-v1": dict(algo="sac", labels=100, steps=20_000, segment_len=50, rounds=20, initial_steps=2_000,
                        initial_label_fraction=0.25, reward_epochs=40),
}


class PresetError(ValueError):
    """An unknown preset name, or an env the preset does not cover."""


@dataclass(frozen=True)
class Preset:
    """A named way to fill ``PrefsConfig`` for an env: ``values(env_id, overrides)`` returns every field it sets,
    ``overrides`` applied (budget-dependent values follow the overridden budgets)."""

    values: Callable[[str, dict[str, Any]], dict[str, Any]]
    help: str


def mujoco_segment_len(env_id: str, seconds: float = SEGMENT_SECONDS) -> int:
    """Steps in ``seconds`` of env time (``round(seconds / env.unwrapped.dt)``), capped at the env's time limit."""
    env = gym.make(env_id)
    try:
        dt = getattr(env.unwrapped, "dt", None)
        if not dt:
            raise PresetError(f"{env_id} has no dt (env time per step); pass segment_len explicitly")
        steps = max(1, int(round(seconds / float(dt))))
        limit = env.spec.max_episode_steps if env.spec is not None else None
    finally:
        env.close()
    return min(steps, limit) if limit else steps


def _tuned(env_id: str, overrides: dict[str, Any]) -> dict[str, Any]:
    return {**TUNED_PER_ENV.get(env_id, {}), **overrides, "env": env_id}


def _paper_budgets(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Ours: ``initial_steps`` is the smaller of 20 segments' worth of steps (at least 5,000) and a tenth of
    ``steps``; ``rounds`` is one per 10,000 env steps, 5 to 50."""
    values.update(overrides)
    steps = int(values["steps"])
    values.setdefault("initial_steps", min(max(20 * values["segment_len"], 5_000), steps // 10))
    values.setdefault("rounds", int(np.clip(steps // 10_000, 5, 50)))
    return values


def _christiano_mujoco(env_id: str, overrides: dict[str, Any]) -> dict[str, Any]:
    if env_id.startswith("ALE/") or env_id.startswith(f"{ATARI_NAMESPACE}/"):
        raise PresetError(f"{env_id} is an Atari env: use --preset christiano-atari")
    if env_id not in MUJOCO_ENVS:
        logger.warning("christiano-mujoco covers %s; %s is used with the same protocol", ", ".join(MUJOCO_ENVS),
                       env_id)
    values = dict(
        env=env_id, preset="christiano-mujoco", algo="ppo", labels=700, steps=2_000_000, ensemble=3,
        segment_len=overrides.get("segment_len") or mujoco_segment_len(env_id),
        selection="disagreement", oversample=10, initial_label_fraction=0.25, initial_policy="agent",
        label_schedule="inverse_time", schedule_c_steps=CHRISTIANO_MUJOCO_C, label_until=1.0,
        reward_net="mlp", reward_hidden=(64, 64), reward_activation="leaky_relu", reward_scale=1.0,
        reward_epochs=20, fit=dict(PAPER_FIT),
        # PPO stands in for TRPO (A.1): SB3's PPO defaults are the PPO paper's MuJoCo settings; A.1's discounting
        # and entropy bonus (0.001 on Swimmer) for learning from the predictor.
        hyperparams=dict(n_envs=1, gamma=0.995, gae_lambda=0.97,
                         ent_coef=0.001 if env_id.startswith("Swimmer") else 0.01),
    )
    if overrides.get("algo") in ("sac", "td3", "ddpg") and "hyperparams" not in overrides:  # PPO's do not apply
        values["hyperparams"] = (dict(MUJOCO_SAC, policy_kwargs=dict(MUJOCO_SAC["policy_kwargs"]))
                                 if overrides["algo"] == "sac" else None)
    return _paper_budgets(values, overrides)


def _christiano_atari(env_id: str, overrides: dict[str, Any]) -> dict[str, Any]:
    if not (env_id.startswith("ALE/") or env_id.startswith(f"{ATARI_NAMESPACE}/")):
        raise PresetError(f"christiano-atari needs an ALE env such as {ATARI_ENVS[0]}, got {env_id!r}; "
                          "for MuJoCo envs use --preset christiano-mujoco")
    a2c = dict(n_envs=16, n_steps=5, ent_coef=0.01, learning_rate="lin_0.0007", gamma=0.99,
               policy_kwargs=dict(features_extractor_class="NatureCNN"))  # by name: config.json stays JSON
    values: dict[str, Any] = dict(
        env=env_id, atari_preprocessing=True, preset="christiano-atari", algo="a2c", labels=5_500,
        steps=50_000_000, segment_len=ATARI_SEGMENT_LEN, ensemble=3, selection="disagreement", oversample=10,
        initial_policy="agent", label_schedule="inverse_time", schedule_c_steps=CHRISTIANO_ATARI_C, label_until=1.0,
        reward_net="cnn", reward_net_kwargs=dict(channels=16, hidden=64, dropout=0.5, batch_norm=True,
                                                 use_action=False),
        reward_scale=0.05, reward_epochs=1, fit={**PAPER_FIT, "batch_size": 32, "normalizer_steps": 5_000},
        pretrain_epochs=ATARI_PRETRAIN_EPOCHS, label_buffer=ATARI_LABEL_BUFFER, fit_rate=ATARI_FIT_RATE,
        experience_capacity=50_000, hyperparams=a2c,
    )
    if overrides.get("algo") == "ppo" and "hyperparams" not in overrides:
        values["hyperparams"] = {**ATARI_PPO, "policy_kwargs": a2c["policy_kwargs"]}
    if "reward_epochs" in overrides:
        values["fit_rate"] = None  # an explicit epoch count replaces the paper's label-processing rate
    values = _paper_budgets(values, overrides)
    if "initial_label_fraction" not in overrides:  # 500 labels up front (A.2), all of them when fewer
        values["initial_label_fraction"] = min(ATARI_INITIAL_LABELS, values["labels"]) / values["labels"]
    return values


PREFS_PRESETS: dict[str, Preset] = {
    "tuned": Preset(_tuned, "settings tuned per env (CartPole-v1, Pendulum-v1); other envs: the defaults"),
    "christiano-mujoco": Preset(_christiano_mujoco, "Christiano et al. 2017's MuJoCo protocol (A.1)"),
    "christiano-atari": Preset(_christiano_atari, "Christiano et al. 2017's Atari protocol (A.2)"),
}


def apply_preset(name: str, env_id: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``PrefsConfig`` field values of preset ``name`` for ``env_id``, with ``overrides`` (``None`` values are
    ignored, so parsed-but-unset CLI options keep the preset's value)."""
    if name not in PREFS_PRESETS:
        raise PresetError(f"unknown preset {name!r}; choose one of {', '.join(PREFS_PRESETS)}")
    return PREFS_PRESETS[name].values(env_id, {k: v for k, v in (overrides or {}).items() if v is not None})


#: What people are told to judge in each task (``HumanLabeller(instructions=...)`` on the labelling page), in the
#: manner of the guides Christiano et al. 2017 gave their labellers (App. B: "Look at the clips and select the one in
#: which better things happen", with a priority order per task); paraphrased for Gymnasium's v5 tasks (ours).
TASK_INSTRUCTIONS: dict[str, str] = {
    "CartPole": "Keep the pole upright: the clip where it stays up longer is better; then, the cart nearer the middle.",
    "Pendulum": "Swing the pendulum up and hold it still upright: nearer the top, and steadier, is better.",
    "MountainCar": "Get the car up the right-hand hill: the clip that gets higher on the right is better.",
    "Acrobot": "Swing the free end of the two-link arm above the bar: higher is better.",
    "Hopper": "The robot should hop to the right: moving right is better (moving left is worse than standing); "
              "when tied, higher is better. It should not fall.",
    "Walker2d": "The robot should walk to the right, upright: further right is better; falling over is worst.",
    "HalfCheetah": "The robot should run to the right: faster to the right is better (left is worse than still).",
    "Swimmer": "The swimmer should move to the right: further right is better.",
    "Ant": "The ant should walk to the right without flipping over: further right is better.",
    "Reacher": "The arm's tip should reach the red target: nearer the target, with calm movements, is better.",
    "InvertedPendulum": "Keep the pole upright on the cart: the clip where it stays up longer is better.",
    "InvertedDoublePendulum": "Keep both poles upright on the cart: the clip where they stay up longer is better.",
}


def task_instructions(env_id: str) -> str:
    """The labellers' guide for ``env_id``: its task's (``TASK_INSTRUCTIONS``), else the paper's general rule."""
    name = env_id.split("/")[-1].split("-v")[0]
    general = "Look at the two clips and select the one in which better things happen; decide only on what you see."
    return TASK_INSTRUCTIONS.get(name, general)
