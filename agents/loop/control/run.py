"""One preference-learning run on a Gymnasium env: ``PrefsConfig`` -> a wired ``PreferenceLoop`` -> summary.

    from agents.loop import PrefsConfig, run_prefs
    summary = run_prefs(PrefsConfig.for_env("CartPole-v1", seed=1), "runs/cartpole")
    summary = run_prefs(PrefsConfig.from_preset("christiano-mujoco", "Hopper-v5", steps=150_000), "runs/hopper")

``check_spaces`` refuses an env whose spaces the agent or the reward net cannot use, before anything is built.
``build_loop`` wires the env's SB3 agent, the reward ensemble, the labeller (teacher, people or both) and the pair
source (state segments, or frame windows for the CNN reward net) into a ``PreferenceLoop`` writing to the run
directory. The default config is the embedded default run: CartPole-v1, PPO, 150 labels, 50k env steps.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import torch

from agents.loop.control.config import PrefsConfig
from agents.loop.control.explore import StateEntropyExploration
from agents.loop.control.frame_pairs import ImageSegmentPairSource
from agents.loop.control.presets import task_instructions
from agents.loop.control.segment_pairs import SegmentPairSource, probe_spaces
from agents.loop.preference_loop import LoopCallback, PreferenceLoop
from agents.loop.reward_model import EnsembleRewardModel, UnlabelledPool
from agents.rundir import RunDir, RunDirError, lock_run_dir, prepare_out
from agents.sb3.control import SB3Agent, check_action_space, default_hyperparams
from rewardmodels.cnn import CNNRewardNet, image_layout
from rewardmodels.ensemble import FitConfig, RewardEnsemble
from rewardmodels.feedback.human import HumanLabeller, MixedLabeller, StateRenderer
from rewardmodels.feedback.label_store import LabelStoreError
from rewardmodels.nets import UnsupportedSpaceError, space_feature_dim
from rewardmodels.teachers import make_teacher

__all__ = ["PrefsConfig", "build_loop", "build_reward_ensemble", "check_spaces", "make_labeller", "run_prefs"]


def make_labeller(cfg: PrefsConfig, out: str | os.PathLike):
    """The simulated teacher, the people of the web app (``HumanLabeller`` on ``out``), or a mix, per ``cfg``."""
    teacher = make_teacher(cfg.teacher, seed=cfg.seed, **cfg.teacher_params)
    if cfg.labeller == "teacher":
        return teacher
    try:
        human = HumanLabeller(out, renderer=StateRenderer(cfg.env_id), timeout=cfg.label_timeout,
                              on_timeout="raise" if cfg.label_timeout is None else "nan", progress=cfg.progress_bar,
                              instructions=cfg.instructions or task_instructions(cfg.env))
    except LabelStoreError as err:  # a damaged labels.sqlite: one line naming it and what to do
        raise RunDirError(str(err)) from err
    if cfg.labeller == "human":
        return human
    return MixedLabeller(human, teacher, cfg.human_fraction, seed=cfg.seed)


class _RunInfo(LoopCallback):
    """summary.json also names the env asked for and the preset (the loop itself knows neither)."""

    def __init__(self, cfg: PrefsConfig):
        self.info = {"env": cfg.env, "algo": cfg.algo, "preset": cfg.preset}

    def on_end(self, loop: PreferenceLoop, summary: Mapping[str, Any]) -> None:
        loop.run_dir.write_summary({**summary, **self.info})


def build_loop(cfg: PrefsConfig, out: str | os.PathLike, callbacks: Sequence[LoopCallback] = ()) -> PreferenceLoop:
    """Wire env, agent, reward ensemble, labeller and pair source into a ``PreferenceLoop`` writing to ``out``.
    Seeds torch first, so two loops built with the same config run identically."""
    torch.manual_seed(cfg.seed)
    hyper = default_hyperparams(cfg.algo, cfg.env_id) if cfg.hyperparams is None else dict(cfg.hyperparams)
    cfg = dataclasses.replace(cfg, hyperparams=hyper)  # config.json records the hyperparameters used
    recent = min(max(4 * cfg.segment_len, 2 * cfg.steps_per_round), cfg.experience_capacity)
    source_class = ImageSegmentPairSource if cfg.reward_net == "cnn" else SegmentPairSource
    context = {"context": cfg.segment_context} if cfg.segment_context else {}
    source = source_class(cfg.env_id, cfg.segment_len, seed=cfg.seed, recent_steps=recent,
                          capacity=cfg.experience_capacity, **context)
    ensemble = build_reward_ensemble(cfg, source.obs_space, source.act_space).to(cfg.device)
    pool = (UnlabelledPool(source.candidates, cfg.unlabelled_per_label, cfg.unlabelled_capacity, seed=cfg.seed)
            if cfg.unlabelled_per_label else None)
    reward_model = EnsembleRewardModel(ensemble, ensemble.fit_config, cfg.pretrain_epochs, cfg.label_buffer,
                                       cfg.fit_rate, lambda: source.env_steps, unlabelled=pool)
    explorer = StateEntropyExploration(source.experience, cfg.explore_k) if cfg.initial_policy == "explore" else None
    agent = SB3Agent(cfg.algo, cfg.env_id, ensemble.predict_reward, total_steps=cfg.steps, seed=cfg.seed,
                     device=cfg.device, hyperparams=hyper, wrap_venv=source.wrap)
    title = " ".join(str(x) for x in (cfg.preset, cfg.env, cfg.algo, f"seed {cfg.seed}") if x)
    run_dir = RunDir(out, report_to=cfg.report_to)
    return PreferenceLoop(cfg, agent, source, reward_model, make_labeller(cfg, out), run_dir,
                          callbacks=[*callbacks, _RunInfo(cfg)], title=title, explorer=explorer)


def run_prefs(cfg: PrefsConfig, out: str | os.PathLike, resume: bool = False,
              callbacks: Sequence[LoopCallback] = ()) -> dict[str, Any]:
    """Run (or resume) the preference loop of ``cfg`` into run directory ``out``; returns summary.json's content.

    A fresh run (not ``resume``) refuses a directory that holds an earlier run's files (``agents.rundir.RunDirError``):
    they are never appended to (``agents.rundir.prepare_out(out, overwrite=True)`` moves them aside first). The run
    holds ``out``'s lock (``agents.rundir.lock_run_dir``): another process running in it raises ``RunDirBusy``."""
    with lock_run_dir(out):  # RunDirBusy if another process runs in ``out``
        prepare_out(out, resume=resume)
        loop = build_loop(cfg, out, callbacks)  # seeds torch
        try:
            summary = loop.run(resume=resume)
        finally:
            loop.agent.close()
    return {**summary, "env": cfg.env, "algo": cfg.algo, "preset": cfg.preset}


def check_spaces(cfg: PrefsConfig) -> None:
    """Refuse an env whose spaces the run cannot use, before anything is built or written: an action space
    ``cfg.algo`` cannot act in (``IncompatibleSpaceError``), or a space the reward net cannot encode
    (``UnsupportedSpaceError``: a Tuple or Dict space such as Blackjack's for the MLP, a vector for the CNN). Makes
    the env once, to read its spaces."""
    try:
        obs_space, act_space = probe_spaces(cfg.env_id, cfg.seed)
    except (gym.error.Error, ImportError) as err:  # a missing dependency (mujoco, ale-py), a bad render mode
        raise ValueError(f"cannot make {cfg.env_id} here: {err}") from err
    check_action_space(cfg.algo, act_space, cfg.env)
    try:
        if cfg.reward_net == "cnn":
            image_layout(obs_space)
        else:
            space_feature_dim(obs_space)
            if cfg.reward_net_kwargs.get("use_action", True):
                space_feature_dim(act_space)
    except UnsupportedSpaceError as err:
        raise UnsupportedSpaceError(f"{cfg.env}: {err}") from err


def build_reward_ensemble(cfg: PrefsConfig, obs_space: gym.Space, act_space: gym.Space) -> RewardEnsemble:
    """The ``RewardEnsemble`` of ``cfg``: MLPs over (observation, action) (A.1) or the paper's CNN (A.2)."""
    fit = FitConfig(epochs=cfg.reward_epochs, **cfg.fit)
    if cfg.reward_net == "mlp":
        return RewardEnsemble.mlp(obs_space, act_space, n_members=cfg.ensemble, seed=cfg.seed,
                                  hidden=cfg.reward_hidden, activation=cfg.reward_activation,
                                  reward_scale=cfg.reward_scale, fit_config=fit, **cfg.reward_net_kwargs)
    ens = RewardEnsemble.from_factory(lambda: CNNRewardNet(obs_space, act_space, **cfg.reward_net_kwargs),
                                      n_members=cfg.ensemble, seed=cfg.seed, reward_scale=cfg.reward_scale,
                                      fit_config=fit)
    ens.net_config = {"class": "CNNRewardNet", "kwargs": dict(cfg.reward_net_kwargs)}
    return ens
