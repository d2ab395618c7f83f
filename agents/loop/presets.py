"""Presets that encode the protocol of Christiano et al. 2017, "Deep reinforcement learning from human preferences"
(arXiv:1706.03741), on current Gymnasium: ``christiano-mujoco`` and ``christiano-atari``.

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
* label rate proportional to 2e6 / (T + 2e6) after T env steps (A.1). In ``LoopConfig`` terms: ``label_schedule=
  "hyperbolic"`` with ``schedule_c = 2e6 / total_steps`` (the loop measures c as a fraction of the run).
* 25% of the comparisons from a randomly initialised policy at the start (A.1): ``initial_label_fraction = 0.25``,
  ``initial_policy = "random"``.
* the predictor: two hidden layers of 64 units with leaky ReLU, alpha 0.01 (A.1); rewards normalised to standard
  deviation 1 (A.1).
* 1/e of the labels held out for validation, L2 adapted to keep validation loss at 1.1-1.5x training loss (2.2.3).
* the 10% random-response noise of the preference model (2.2.3: P = 0.05 + 0.9 sigmoid(R_a - R_b)).
* the policy: the paper used TRPO (A.1), which SB3 lacks; PPO (its successor) stands in, with gamma 0.995 and
  lambda 0.97 as in A.1 and the entropy bonus 0.01 (0.001 on Swimmer) of A.1 as ``ent_coef`` (ours: the rest of
  PPO's settings are rl-baselines3-zoo's MuJoCo PPO settings).

``christiano-atari`` (Pong, BeamRider, Breakout, Enduro, Qbert, SpaceInvaders, Seaquest; ALE v5 via ale-py):

* standard Atari preprocessing (Mnih et al. 2015, as in A.2 "the same inputs as the policy"): 30 no-op starts, 4
  frame skip with max-pooling of the last two frames, grayscale, 84x84 (Gymnasium's ``AtariPreprocessing``), and 4
  stacked frames (``FrameStackObservation``). The env id becomes ``AtariPreprocessed/<Game>-v5`` (registered by
  ``agents/loop/atari.py``, so every part of the loop can ``gym.make`` it). v5's sticky actions (p = 0.25) are kept
  (ours; Machado et al. 2018's recommended protocol).
* the predictor: the paper's CNN (``rewardmodels.cnn.CNNRewardNet``, A.2), rewards normalised to standard deviation
  0.05 (A.2) via ``RewardEnsemble(reward_scale=0.05)``.
* segments of 25 steps (A.2: "25 timesteps (1.7 seconds at 15 fps with frame skipping)").
* 500 comparisons from the random initial policy, then a rate proportional to 5e6 / (T + 5e6) (A.2).
* 200 epochs of predictor training on those initial comparisons before the policy trains (A.2, "pretraining").
* a buffer of only the last 3,000 labels (A.2, "to ensure that the predictor gives enough weight to new labels").
* A2C (A.2: "A3C ... in synchronous form (A2C)": 16 workers, n = 5 steps, entropy bonus 0.01, learning rate 7e-4
  decayed linearly, gamma 0.99) or PPO (rl-baselines3-zoo's Atari PPO settings), from SB3, with the Nature CNN.

Use: ``rlhf-gym prefs --preset christiano-mujoco --env Hopper-v5 --labels 700 --steps 2000000`` (see
``agents/cli/prefs.py``), or ``apply_preset(name, env_id, overrides)`` from Python.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from agents.loop.atari import (  # noqa: F401 - re-exported: the preset's env helpers
    ATARI_ENVS,
    ATARI_NAMESPACE,
    AreaResizeAtariPreprocessing,
    _area_taps,
    area_resize,
    atari_env_id,
    make_atari_env,
)

logger = logging.getLogger(__name__)

MUJOCO_ENVS = ("Hopper-v5", "HalfCheetah-v5", "Walker2d-v5", "Swimmer-v5", "Ant-v5", "Reacher-v5",
               "InvertedPendulum-v5", "InvertedDoublePendulum-v5")
SEGMENT_SECONDS = 1.5  # A.1
MUJOCO_LABEL_C = 2e6  # A.1
ATARI_LABEL_C = 5e6  # A.2
ATARI_SEGMENT_LEN = 25  # A.2
ATARI_INITIAL_LABELS = 500  # A.2
ATARI_PRETRAIN_EPOCHS = 200  # A.2
ATARI_LABEL_BUFFER = 3_000  # A.2
ATARI_FIT_RATE = 0.1  # A.2: the predictor "processes 1 label per 10 RL timesteps"


class PresetError(ValueError):
    """An unknown preset name, or an env the preset does not cover."""


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



# -- the presets ----------------------------------------------------------------------------------------------------
@dataclass
class ChristianoPreset:
    """A preset applied to one env: the ``PrefsConfig`` of ``rlhf-gym prefs`` plus the protocol knobs it lacks.

    ``prefs`` carries what ``PrefsConfig`` already has (env, algo, budgets, segment length, ensemble size, selection,
    initial share, hyperparameters); the fields below carry the rest of the paper's protocol, which
    ``build_preset_loop`` wires in (label schedule, noise model, validation split, adaptive L2, net, reward scale,
    pretraining, label buffer).
    """

    name: str
    """``christiano-mujoco`` or ``christiano-atari``."""
    requested_env: str
    """The env id the user asked for (``ALE/Pong-v5``; ``prefs.env`` is the preprocessed id for Atari)."""
    prefs: Any
    """``agents.loop.prefs.PrefsConfig`` of the run."""
    schedule_c: float
    """Label-rate constant c of the rate c / (T + c), in env steps (2e6 MuJoCo A.1, 5e6 Atari A.2)."""
    initial_policy: str = "agent"
    """Who acts in the initial collection: the randomly initialised policy network (A.1, A.2)."""
    label_until: float = 1.0
    """Labels keep coming, at the decaying rate, until the end of the run (A.1, A.2)."""
    oversample: int = 10
    """Candidates per query for disagreement selection (2.2.4)."""
    net: str = "mlp"
    """Reward net: ``mlp`` (A.1) or ``cnn`` (A.2)."""
    net_kwargs: dict[str, Any] = field(default_factory=dict)
    """Constructor kwargs of the reward net."""
    reward_scale: float = 1.0
    """Standard deviation of the agent's reward (1 MuJoCo A.1, 0.05 Atari A.2)."""
    fit: dict[str, Any] = field(default_factory=dict)
    """``rewardmodels.ensemble.FitConfig`` fields (noise 0.1, val 1/e, adaptive L2 1.1-1.5: 2.2.3)."""
    pretrain_epochs: int | None = None
    """Epochs of the first reward fit, on the initial labels (Atari: 200, A.2)."""
    label_buffer: int | None = None
    """Fit on only the most recent labels (Atari: 3,000, A.2); None = all."""
    fit_rate: float | None = None
    """Labels processed by reward training per env step: each fit after the first runs ``fit_rate * new env steps /
    batch_size`` gradient steps (Atari: 0.1, A.2 "processes 1 label per 10 RL timesteps"); None = ``reward_epochs``
    epochs per fit."""
    experience_capacity: int = 20_000
    """Env steps of recent experience kept for cutting candidate segments (ours: bounds memory for frames)."""

    def loop_config(self):
        """The ``LoopConfig`` of the run: ``PrefsConfig.loop_config()`` plus the paper's label schedule.

        ``LoopConfig.schedule_c`` is c as a fraction of the labelling horizon (the training steps of the rounds
        that get labels), so the absolute c of the paper is divided by that horizon.
        """
        from dataclasses import replace

        base = replace(self.prefs.loop_config(), label_schedule="inverse_time", initial_policy=self.initial_policy,
                       label_until=self.label_until, oversample=self.oversample)
        horizon = base.steps_per_round * max(1, int(np.ceil(base.rounds * base.label_until)))
        return replace(base, schedule_c=self.schedule_c / horizon)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _mujoco(env_id: str) -> dict[str, Any]:
    if env_id not in MUJOCO_ENVS:
        logger.warning("christiano-mujoco covers %s; %s is used with the same protocol", ", ".join(MUJOCO_ENVS),
                       env_id)
    segment_len = mujoco_segment_len(env_id)
    return dict(
        env=env_id, algo="ppo", labels=700, steps=2_000_000, segment_len=segment_len, ensemble=3,
        selection="disagreement", initial_label_fraction=0.25, reward_epochs=20, reward_hidden=(64, 64),
        # PPO stands in for TRPO (A.1): SB3's PPO defaults are the PPO paper's MuJoCo settings; A.1's discounting
        # and entropy bonus (0.001 on Swimmer) for learning from the predictor.
        hyperparams=dict(n_envs=1, gamma=0.995, gae_lambda=0.97,
                         ent_coef=0.001 if env_id.startswith("Swimmer") else 0.01),
        _extra=dict(schedule_c=MUJOCO_LABEL_C, net="mlp", reward_scale=1.0),
    )


def _atari(env_id: str) -> dict[str, Any]:
    wrapped = atari_env_id(env_id)
    a2c = dict(n_envs=16, n_steps=5, ent_coef=0.01, learning_rate="lin_0.0007", gamma=0.99,
               policy_kwargs=dict(features_extractor_class="NatureCNN"))  # by name: config.json stays JSON
    return dict(
        env=wrapped, algo="a2c", labels=5_500, steps=50_000_000, segment_len=ATARI_SEGMENT_LEN, ensemble=3,
        selection="disagreement", initial_label_fraction=ATARI_INITIAL_LABELS / 5_500, reward_epochs=1,
        hyperparams=a2c,
        _extra=dict(schedule_c=ATARI_LABEL_C, net="cnn", reward_scale=0.05, pretrain_epochs=ATARI_PRETRAIN_EPOCHS,
                    label_buffer=ATARI_LABEL_BUFFER, experience_capacity=50_000, fit_rate=ATARI_FIT_RATE,
                    net_kwargs=dict(channels=16, hidden=64, dropout=0.5, batch_norm=True, use_action=False),
                    fit=dict(batch_size=32, normalizer_steps=5_000)),
    )


#: rl-baselines3-zoo's Atari PPO settings (hyperparams/ppo.yml, atari), for ``--algo ppo`` on the Atari preset.
ATARI_PPO = dict(n_envs=8, n_steps=128, n_epochs=4, batch_size=256, learning_rate="lin_0.00025",
                 clip_range="lin_0.1", vf_coef=0.5, ent_coef=0.01)

PRESETS = {"christiano-mujoco": _mujoco, "christiano-atari": _atari}
_PAPER_FIT = dict(noise=0.1, val_fraction=float(np.exp(-1.0)), adaptive_l2=True, l2_target=(1.1, 1.5))


def apply_preset(name: str, env_id: str, config_overrides: dict[str, Any] | None = None) -> ChristianoPreset:
    """The preset ``name`` for ``env_id``, with ``config_overrides`` (``PrefsConfig`` fields; None values are
    ignored, so parsed-but-unset CLI options keep the preset's value).

    Budget-dependent values follow the budget: with ``labels`` overridden, the Atari preset still spends 500 of them
    up front (A.2; all of them when fewer); ``initial_steps`` (ours) is the smaller of 20 segments' worth of steps
    (at least 5,000) and a tenth of ``steps``; ``rounds`` (ours) is one per 10,000 env steps, 5 to 50.
    """
    from agents.loop.prefs import PrefsConfig

    if name not in PRESETS:
        raise PresetError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    if name == "christiano-atari" and not (env_id.startswith("ALE/") or env_id.startswith(f"{ATARI_NAMESPACE}/")):
        raise PresetError(f"christiano-atari needs an ALE env such as {ATARI_ENVS[0]}, got {env_id!r}; "
                          "for MuJoCo envs use --preset christiano-mujoco")
    if name == "christiano-mujoco" and env_id.startswith("ALE/"):
        raise PresetError(f"{env_id} is an Atari env: use --preset christiano-atari")
    values = PRESETS[name](env_id)
    extra = values.pop("_extra")
    overrides = {k: v for k, v in (config_overrides or {}).items() if v is not None}
    if overrides.get("algo") == "ppo" and name == "christiano-atari" and "hyperparams" not in overrides:
        values["hyperparams"] = {**ATARI_PPO, "policy_kwargs": values["hyperparams"]["policy_kwargs"]}
    values.update(overrides)
    if name == "christiano-atari" and "initial_label_fraction" not in overrides:
        values["initial_label_fraction"] = min(ATARI_INITIAL_LABELS, values["labels"]) / values["labels"]
    steps = int(values["steps"])
    values.setdefault("initial_steps", min(max(20 * values["segment_len"], 5_000), steps // 10))
    values.setdefault("rounds", int(np.clip(steps // 10_000, 5, 50)))
    fit = {**_PAPER_FIT, **extra.pop("fit", {})}
    if "reward_epochs" in overrides:
        extra["fit_rate"] = None  # an explicit epoch count replaces the paper's label-processing rate
    prefs = PrefsConfig(**values)
    return ChristianoPreset(name=name, requested_env=env_id, prefs=prefs, fit=fit, **extra)


# -- wiring ---------------------------------------------------------------------------------------------------------
def _resolve_hyperparams(hyper: dict[str, Any]) -> dict[str, Any]:
    """``policy_kwargs.features_extractor_class`` may name an SB3 extractor ("NatureCNN"): JSON-safe configs."""
    hyper = dict(hyper)
    pk = dict(hyper.get("policy_kwargs") or {})
    if isinstance(pk.get("features_extractor_class"), str):
        from stable_baselines3.common import torch_layers

        pk["features_extractor_class"] = getattr(torch_layers, pk["features_extractor_class"])
        hyper["policy_kwargs"] = pk
    return hyper


def _paper_reward_model_class():
    from agents.loop.segment_pairs import EnsembleRewardModel

    class PaperRewardModel(EnsembleRewardModel):
        """``EnsembleRewardModel`` with A.2's pretraining (first fit: ``pretrain_epochs``), label buffer (fit on
        the last ``label_buffer`` labels only) and training rate (``fit_rate`` labels per env step)."""

        def __init__(self, ensemble, fit_config, pretrain_epochs: int | None, label_buffer: int | None,
                     fit_rate: float | None = None, env_steps=None):
            super().__init__(ensemble, fit_config)
            self.pretrain_epochs, self.label_buffer = pretrain_epochs, label_buffer
            self.fit_rate, self.env_steps = fit_rate, env_steps
            self._steps_at_fit: int | None = None

        def fit(self, dataset):
            from dataclasses import replace

            if self.label_buffer is not None and len(dataset) > self.label_buffer:
                dataset = dataset.subset(slice(len(dataset) - self.label_buffer, None))
            cfg = self.fit_config
            now = int(self.env_steps()) if self.env_steps is not None else None
            if self.pretrain_epochs and int(self.ensemble.fit_count) == 0:  # survives resume: fit_count is saved
                cfg = replace(cfg, epochs=self.pretrain_epochs, steps=None)
            elif self.fit_rate and now is not None and self._steps_at_fit is not None:
                steps = round((now - self._steps_at_fit) * self.fit_rate / cfg.batch_size)
                cfg = replace(cfg, steps=max(1, steps))
            self._steps_at_fit = now
            return self.ensemble.fit(dataset, cfg)

    return PaperRewardModel


def build_reward_ensemble(preset: ChristianoPreset, obs_space: gym.Space, act_space: gym.Space):
    """The preset's ``RewardEnsemble``: 2x64 leaky-ReLU MLPs (A.1) or the paper's CNN (A.2)."""
    from rewardmodels.ensemble import FitConfig, RewardEnsemble

    cfg = preset.prefs
    fit = FitConfig(epochs=cfg.reward_epochs, **preset.fit)
    if preset.net == "mlp":
        return RewardEnsemble.mlp(obs_space, act_space, n_members=cfg.ensemble, seed=cfg.seed,
                                  hidden=cfg.reward_hidden, activation="leaky_relu", reward_scale=preset.reward_scale,
                                  fit_config=fit, **preset.net_kwargs)
    from rewardmodels.cnn import CNNRewardNet

    ens = RewardEnsemble.from_factory(lambda: CNNRewardNet(obs_space, act_space, **preset.net_kwargs),
                                      n_members=cfg.ensemble, seed=cfg.seed, reward_scale=preset.reward_scale,
                                      fit_config=fit)
    ens.net_config = {"class": "CNNRewardNet", "kwargs": dict(preset.net_kwargs)}
    return ens


def build_preset_loop(preset: ChristianoPreset, out, callbacks=()):
    """Wire the preset's env, SB3 agent, reward ensemble, teacher and pair source into a ``PreferenceLoop``."""
    from agents.loop.preference_loop import LoopCallback, PreferenceLoop
    from agents.loop.segment_pairs import SegmentPairSource
    from agents.sb3.control import SB3Agent
    from rewardmodels.teachers import make_teacher

    class _Summary(LoopCallback):  # summary.json also names the preset and the env asked for
        def on_end(self, loop, summary):
            loop.run_dir.write_summary({**summary, "preset": preset.name, "env": preset.requested_env})

    cfg = preset.prefs
    loop_cfg = preset.loop_config()
    recent = min(max(4 * cfg.segment_len, 2 * loop_cfg.steps_per_round), preset.experience_capacity)
    if preset.net == "cnn":  # frames stored once; pairs are windows into them (rewardmodels.image_segments)
        from agents.loop.frame_pairs import ImageSegmentPairSource as Source
    else:
        Source = SegmentPairSource  # noqa: N806
    source = Source(cfg.env, cfg.segment_len, seed=cfg.seed, recent_steps=recent, capacity=preset.experience_capacity)
    ensemble = build_reward_ensemble(preset, source.obs_space, source.act_space).to(cfg.device)
    reward_model = _paper_reward_model_class()(ensemble, ensemble.fit_config, preset.pretrain_epochs,
                                               preset.label_buffer, preset.fit_rate, lambda: source.env_steps)
    hyper = _resolve_hyperparams(cfg.hyperparams or {})
    agent = SB3Agent(cfg.algo, cfg.env, ensemble.predict_reward, total_steps=cfg.steps, seed=cfg.seed,
                     device=cfg.device, hyperparams=hyper, wrap_venv=source.wrap)
    teacher = make_teacher(cfg.teacher, seed=cfg.seed, **cfg.teacher_params)
    extra = {"prefs": asdict(cfg), "preset": {k: v for k, v in preset.to_json().items() if k != "prefs"},
             "title": f"{preset.name} {preset.requested_env} {cfg.algo} seed {cfg.seed}"}
    return PreferenceLoop(loop_cfg, agent, source, reward_model, teacher, out,
                          callbacks=[*callbacks, _Summary()], extra_config=extra)


def run_preset(preset: ChristianoPreset, out, resume: bool = False, callbacks=()) -> dict[str, Any]:
    """Run (or resume) a preset into run directory ``out``; returns summary.json's content."""
    import torch

    torch.manual_seed(preset.prefs.seed)
    loop = build_preset_loop(preset, out, callbacks)
    try:
        summary = loop.run(resume=resume)
    finally:
        loop.agent.close()
    return {**summary, "preset": preset.name, "env": preset.requested_env}


def load_preset(out) -> ChristianoPreset:
    """The preset of the run in ``out`` (from its config.json), to resume it with its saved settings."""
    import json
    import math
    from pathlib import Path

    from agents.loop.prefs import PrefsConfig

    saved = json.loads((Path(out) / "config.json").read_text(encoding="utf-8"))
    if "preset" not in saved:
        raise PresetError(f"{out} was not started from a preset; resume it without --preset")
    prefs = dict(saved["prefs"])
    prefs.pop("progress_bar", None)
    prefs["teacher_params"] = {k: (math.inf if v == "inf" else v) for k, v in prefs.get("teacher_params", {}).items()}
    prefs["reward_hidden"] = tuple(prefs.get("reward_hidden", (64, 64)))
    meta = dict(saved["preset"])
    if meta["name"] == "christiano-atari":
        atari_env_id(meta["requested_env"])  # register the preprocessed id in this process
    meta["fit"] = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["fit"].items()}
    return ChristianoPreset(prefs=PrefsConfig(**prefs), **meta)


# -- CLI hook -------------------------------------------------------------------------------------------------------
_CLI_OVERRIDES = ("algo", "labels", "steps", "seed", "teacher", "selection", "ensemble", "segment_len", "rounds",
                  "initial_steps", "initial_label_fraction", "reward_epochs", "eval_episodes", "eval_every", "device",
                  "hyperparams")
_TEACHER_ARGS = {"teacher_beta": "beta", "teacher_gamma": "gamma", "teacher_eps": "eps",
                 "teacher_skip": "skip_threshold", "teacher_equal": "equal_threshold"}


def add_preset_argument(parser) -> None:
    """Add ``--preset`` to the ``rlhf-gym prefs`` parser (no-op when it is already there)."""
    if any("--preset" in a.option_strings for a in parser._actions):
        return
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="the protocol of Christiano et al. 2017 for MuJoCo or Atari envs (agents/loop/presets.py); "
                             "other options override its values")


def run_cli(args) -> int:
    """``rlhf-gym prefs --preset NAME --env ID ...``: run (or ``--resume``) a preset; prints the summary."""
    import json
    import sys
    from pathlib import Path

    out = Path(args.out) if getattr(args, "out", None) else None
    try:
        if getattr(args, "resume", False):
            if out is None or not (out / "checkpoints" / "latest.json").exists():
                raise PresetError(f"--resume: {out} has no checkpoint to resume from; drop --resume to start anew")
            preset = load_preset(out)
        else:
            overrides = {n: getattr(args, n, None) for n in _CLI_OVERRIDES}
            teacher = {f: getattr(args, a) for a, f in _TEACHER_ARGS.items() if getattr(args, a, None) is not None}
            if teacher:
                overrides["teacher_params"] = teacher
            if getattr(args, "no_progress", False):
                overrides["progress_bar"] = False
            preset = apply_preset(args.preset, args.env, overrides)
            safe_env = preset.requested_env.replace("/", "_").replace(":", "_")
            out = out or Path("runs") / f"{preset.name}-{safe_env}-seed{preset.prefs.seed}"
            if (out / "checkpoints" / "latest.json").exists():
                raise PresetError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    except (ValueError, TypeError) as err:  # PresetError, UnknownEnvError, PrefsConfig validation
        print(f"rlhf-gym prefs: error: {err}", file=sys.stderr)
        return 2
    summary = run_preset(preset, out, resume=bool(getattr(args, "resume", False)))
    keys = ("true_return_mean", "true_return_std", "labels_used", "env_steps", "wall_s", "preset", "env")
    print(json.dumps({k: summary[k] for k in keys if k in summary}, indent=2))
    print(f"run directory: {out} (summary.json, curves.png, tensorboard --logdir {out / 'tb'})")
    return 0
