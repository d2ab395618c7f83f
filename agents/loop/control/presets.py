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

``pebble`` and ``surf``: PEBBLE (Lee, Smith & Abbeel 2021, arXiv:2106.05091) and SURF (Park et al. 2022,
arXiv:2203.10050) as B-Pref (Lee et al. 2021, arXiv:2111.03026) runs them on DeepMind Control and Meta-World
(``agents.loop.control.bpref`` registers ``BPref/walker-walk-v0`` etc.). Every value is from the official code:
``rll-research/BPref`` (``config/train_PEBBLE.yaml``, ``config/agent/sac.yaml``, ``reward_model.py`` and the
per-task ``scripts/<task>/<labels>/oracle/run_PEBBLE.sh``; "BPref" below) and ``alinlab/SURF`` (its README's commands,
``reward_model_semi_dataaug.py``):

* SAC (BPref ``agent/sac.yaml``): gamma 0.99, tau 0.005, initial temperature 0.1 (learned), target update every 2
  steps, 1,000 uniformly random steps first (``num_seed_steps``); per domain (the scripts): DMC actor/critic lr 5e-4,
  batch 1,024, two hidden layers of 1,024 (quadruped-walk: lr 1e-4); Meta-World lr 3e-4, batch 512, three layers of
  256. (These nets are large for a CPU: ``hyperparams`` overrides them; ``christiano_mujoco.py --table bpref``
  uses 64 x 64.)
* unsupervised pre-training (``initial_policy="explore"``, ``agents.loop.control.explore``): 9,000 steps after the
  1,000 random ones (``num_unsup_steps=9000``), k = 5 (``topK``); then the critic is reset.
* segments of 50 steps (``segment: 50``), an ensemble of 3 (``ensemble_size``), disagreement over 10x candidates
  (``feed_type=1``, ``large_batch: 10``); labels in batches (``reward_batch``: DMC 100, Meta-World 50), the first
  right after pre-training, then one every ``num_interact`` env steps (DMC 20,000, quadruped 30,000, Meta-World 5,000)
  until ``max_feedback`` (DMC 1,000, Meta-World 10,000): ``label_schedule="constant"``, one round per
  ``num_interact`` steps; a run too short for them all gets what that rate reaches in it (``labels`` overrides).
* the predictor: three hidden layers of 256, leaky ReLU, tanh output (``gen_net``); Adam lr 3e-4, minibatches of 128,
  up to 50 epochs per fit on DMC and 10 on Meta-World (``reward_update``), stopping once the training accuracy
  passes 0.97; no label noise, validation split or L2 (ours: rewards normalised to standard deviation 1, as every
  preset here).
* ``algo="ppo"``: B-Pref's PrefPPO (``scripts/walker_walk/*/run_PrefPPO.sh``): 32 envs of 500 steps, minibatches of
  64, lr 5e-5, no entropy bonus, clip 0.4, lambda 0.92, three layers of 256, 32,000 pre-training steps.
* ``surf`` adds (alinlab/SURF README): pseudo-labels at confidence 0.99 (``threshold_u``), 4 unlabelled pairs per
  labelled one in each minibatch (``mu``), loss weight 1 (``lambda_u``), unlabelled pairs drawn per label 100 on DMC
  and 10 on Meta-World (``inv_label_ratio``), and temporal crops of 45-55 of the 50 labelled steps out of 60 stored
  (``dataaug_window=5``, ``crop_range=5``).

A preset name may add the PEBBLE or SURF method to another protocol: ``christiano-mujoco+pebble+surf`` is the MuJoCo
protocol with PEBBLE's pre-training (10,000 steps, at most a tenth of the run) and SURF's pseudo-labels (10 unlabelled
pairs per label, Meta-World's ratio) and crops (their context capped so that a window still fits in an episode);
everything else stays the base protocol's.

Use: ``rlhf-gym prefs --preset christiano-mujoco --env Hopper-v5 --labels 700 --steps 2000000``, or
``PrefsConfig.from_preset(name, env_id, **overrides)`` from Python (``apply_preset`` gives the field values).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from agents.loop.control.atari import ATARI_ENVS, ATARI_NAMESPACE
from agents.loop.control.bpref import METAWORLD_TASKS
from rewardmodels.published import PEBBLE_K, SURF_CONTEXT, SURF_CROP, SURF_RATIO, SURF_THRESHOLD, SURF_WEIGHT
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


# -- PEBBLE and SURF (module docstring) ----------------------------------------------------------------------------
PEBBLE_SEGMENT_LEN = 50
PEBBLE_INITIAL_STEPS = 10_000  # num_seed_steps 1,000 + num_unsup_steps 9,000
PREFPPO_INITIAL_STEPS = 32_000  # PrefPPO --unsuper-step
PEBBLE_FIT = dict(lr=3e-4, batch_size=128, stop_accuracy=0.97)
#: BPref's scripts per domain: SAC lr / batch / hidden layers, steps, max_feedback, reward_batch, num_interact,
#: reward_update; SURF's inv_label_ratio.
PEBBLE_DOMAINS: dict[str, dict[str, Any]] = {
    "dmc": dict(lr=5e-4, batch=1_024, net=[1_024, 1_024], steps=500_000, labels=1_000, label_batch=100,
                interact=20_000, reward_epochs=50, per_label=100, episode=1_000),
    "quadruped": dict(lr=1e-4, batch=1_024, net=[1_024, 1_024], steps=1_000_000, labels=1_000, label_batch=100,
                      interact=30_000, reward_epochs=50, per_label=100, episode=1_000),
    "metaworld": dict(lr=3e-4, batch=512, net=[256, 256, 256], steps=1_000_000, labels=10_000, label_batch=50,
                      interact=5_000, reward_epochs=10, per_label=10, episode=500),
}
PREFPPO = dict(n_envs=32, n_steps=500, batch_size=64, learning_rate=5e-5, ent_coef=0.0, clip_range=0.4,
               gae_lambda=0.92, policy_kwargs=dict(net_arch=[256, 256, 256]))
SURF_FIT = dict(pseudo_threshold=SURF_THRESHOLD, pseudo_ratio=SURF_RATIO, pseudo_weight=SURF_WEIGHT, crop=SURF_CROP)


def pebble_domain(env_id: str) -> str:
    """Which of ``PEBBLE_DOMAINS`` an env's settings come from (DMC's for any env that is not Meta-World)."""
    if any(task in env_id for task in METAWORLD_TASKS) or env_id.startswith("Meta-World"):
        return "metaworld"
    return "quadruped" if "quadruped" in env_id else "dmc"


def _pebble_sac(domain: dict[str, Any], steps: int) -> dict[str, Any]:
    return dict(n_envs=1, learning_rate=domain["lr"], batch_size=domain["batch"], buffer_size=max(steps, 1_000),
                learning_starts=1_000, tau=0.005, gamma=0.99, ent_coef="auto_0.1", target_update_interval=2,
                policy_kwargs=dict(net_arch=list(domain["net"])))


def _pebble_labels(values: dict[str, Any], domain: dict[str, Any], overrides: dict[str, Any]) -> None:
    """PEBBLE's label protocol: one round per ``num_interact`` steps, a batch of labels after pre-training and one per
    round until ``max_feedback`` (or the run's end)."""
    steps, initial = values["steps"], values["initial_steps"]
    values.setdefault("rounds", max(1, (steps - initial) // domain["interact"]))
    batch = domain["label_batch"]
    values.setdefault("labels", min(domain["labels"], batch * (values["rounds"] + 1)))
    values.setdefault("initial_label_fraction", min(1.0, batch / values["labels"]))
    later_batches = max(1, math.ceil(values["labels"] / batch) - 1)
    values.setdefault("label_until", min(1.0, later_batches / values["rounds"]))


def _pebble(env_id: str, overrides: dict[str, Any]) -> dict[str, Any]:
    domain = PEBBLE_DOMAINS[pebble_domain(env_id)]
    values: dict[str, Any] = dict(overrides)
    values.update(env=env_id, preset=overrides.get("preset", "pebble"))
    values.setdefault("algo", "sac")
    values.setdefault("steps", domain["steps"])
    ppo = values["algo"] == "ppo"
    budget = PREFPPO_INITIAL_STEPS if ppo else PEBBLE_INITIAL_STEPS
    values.setdefault("initial_steps", min(budget, values["steps"] // 10))  # ours: at most a tenth of a short run
    _pebble_labels(values, domain, overrides)
    for key, value in dict(
        segment_len=PEBBLE_SEGMENT_LEN, initial_policy="explore", explore_k=PEBBLE_K, label_schedule="constant",
        ensemble=3, selection="disagreement", oversample=10, reward_net="mlp", reward_hidden=(256, 256, 256),
        reward_activation="leaky_relu", reward_net_kwargs={"output_activation": "tanh"}, reward_scale=1.0,
        reward_epochs=domain["reward_epochs"], fit=dict(PEBBLE_FIT), experience_capacity=100 * domain["episode"],
    ).items():
        values.setdefault(key, value)
    if "hyperparams" not in values:
        values["hyperparams"] = (_pebble_sac(domain, values["steps"]) if values["algo"] == "sac" else
                                 dict(PREFPPO, policy_kwargs=dict(PREFPPO["policy_kwargs"])) if ppo else None)
    return values


def _surf(env_id: str, overrides: dict[str, Any]) -> dict[str, Any]:
    values = _pebble(env_id, {"preset": "surf", **overrides})
    values.setdefault("unlabelled_per_label", PEBBLE_DOMAINS[pebble_domain(env_id)]["per_label"])
    values.setdefault("segment_context", SURF_CONTEXT)
    values["fit"] = {**SURF_FIT, **values["fit"]} if "fit" in overrides else {**values["fit"], **SURF_FIT}
    return values


def _episode_limit(env_id: str) -> int | None:
    try:
        return gym.spec(env_id).max_episode_steps
    except gym.error.Error:
        return None


def _with_method(method: str, values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``values`` of a base preset with PEBBLE's pre-training or SURF's reward learning added (module docstring);
    ``overrides`` still win."""
    if method == "pebble":
        values["initial_policy"] = "explore"
        values["explore_k"] = PEBBLE_K
        values["initial_steps"] = min(PEBBLE_INITIAL_STEPS, int(values["steps"]) // 10)
        values.setdefault("initial_label_fraction", 0.25)
    else:  # surf
        limit = _episode_limit(values["env"])
        room = SURF_CONTEXT if limit is None else max(0, (limit - int(values.get("segment_len", 50))) // 2)
        values["segment_context"] = min(SURF_CONTEXT, room)  # a window must still fit in an episode
        values["unlabelled_per_label"] = PEBBLE_DOMAINS["metaworld"]["per_label"]
        values["fit"] = {**values.get("fit", {}), **SURF_FIT}
    values.update({k: v for k, v in overrides.items() if k != "fit"})
    if "fit" in overrides:
        values["fit"] = {**values["fit"], **overrides["fit"]}
    return values


PREFS_PRESETS: dict[str, Preset] = {
    "tuned": Preset(_tuned, "settings tuned per env (CartPole-v1, Pendulum-v1); other envs: the defaults"),
    "christiano-mujoco": Preset(_christiano_mujoco, "Christiano et al. 2017's MuJoCo protocol (A.1)"),
    "christiano-atari": Preset(_christiano_atari, "Christiano et al. 2017's Atari protocol (A.2)"),
    "pebble": Preset(_pebble, "PEBBLE (Lee et al. 2021) on B-Pref: SAC, unsupervised pre-training, relabelling"),
    "surf": Preset(_surf, "SURF (Park et al. 2022): PEBBLE plus pseudo-labels and temporal crops"),
}
#: Methods a preset name can add to another: ``christiano-mujoco+pebble+surf``.
PRESET_METHODS = ("pebble", "surf")


def apply_preset(name: str, env_id: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``PrefsConfig`` field values of preset ``name`` for ``env_id``, with ``overrides`` (``None`` values are
    ignored, so parsed-but-unset CLI options keep the preset's value). ``base+pebble+surf`` adds those methods to
    the base preset (module docstring)."""
    base, *methods = str(name).split("+")
    if base not in PREFS_PRESETS or any(m not in PRESET_METHODS for m in methods):
        raise PresetError(f"unknown preset {name!r}; choose one of {', '.join(PREFS_PRESETS)}, optionally followed "
                          f"by {' / '.join('+' + m for m in PRESET_METHODS)} (e.g. christiano-mujoco+pebble+surf)")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    values = PREFS_PRESETS[base].values(env_id, overrides)
    for method in methods:
        values = _with_method(method, values, overrides)
    if methods:
        values["preset"] = name
    return values


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
