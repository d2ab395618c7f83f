"""Any Stable-Baselines3 algorithm, chosen by name, as the agent of the preference loop.

``SB3Agent`` trains on the learned reward (a ``LearnedRewardVecEnv`` over Monitor-wrapped envs, so that SB3's episode
statistics stay on the TRUE return), relabels the replay buffer of off-policy algorithms after every reward-model
update (PEBBLE, Lee et al. 2021, arXiv:2106.05091), evaluates on the true reward, and saves/loads through SB3's own
``.save``/``.load`` (written to a temporary file, then renamed).

Hyperparameters are keyword arguments of the SB3 class; presets for a few envs come from rl-baselines3-zoo
(``hyperparams/<algo>.yml``). ``"lin_<x>"`` for ``learning_rate`` / ``clip_range`` means a linear decay from x to 0
over the WHOLE preference run (SB3's own schedules restart at every ``learn`` call, and the loop calls it once per
round).
"""

from __future__ import annotations

import difflib
import inspect
import logging
import os
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import stable_baselines3
from gymnasium import spaces
from stable_baselines3.common import torch_layers
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from rewardmodels.wrappers import LearnedRewardVecEnv, RewardFn, relabel_replay_buffer
from textenv.files import atomic_path

logger = logging.getLogger(__name__)

#: algorithm name -> (SB3 class name, action spaces it supports)
ALGORITHMS: dict[str, tuple[str, tuple[type[spaces.Space], ...]]] = {
    "ppo": ("PPO", (spaces.Discrete, spaces.Box, spaces.MultiDiscrete, spaces.MultiBinary)),
    "a2c": ("A2C", (spaces.Discrete, spaces.Box, spaces.MultiDiscrete, spaces.MultiBinary)),
    "sac": ("SAC", (spaces.Box,)),
    "dqn": ("DQN", (spaces.Discrete,)),
    "td3": ("TD3", (spaces.Box,)),
    "ddpg": ("DDPG", (spaces.Box,)),
}

#: Tuned SB3 hyperparameters, (algo, env id) -> SB3 kwargs (+ "n_envs"). Sources: rl-baselines3-zoo hyperparams/*.yml.
SB3_HYPERPARAMS: dict[tuple[str, str], dict[str, Any]] = {
    # rl-zoo ppo.yml CartPole-v1
    ("ppo", "CartPole-v1"): dict(
        n_envs=8, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20, ent_coef=0.0,
        learning_rate="lin_0.001", clip_range="lin_0.2",
    ),
    ("a2c", "CartPole-v1"): dict(n_envs=8, ent_coef=0.0),
    # rl-zoo dqn.yml CartPole-v1
    ("dqn", "CartPole-v1"): dict(
        learning_rate=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1000, gamma=0.99,
        target_update_interval=10, train_freq=256, gradient_steps=128, exploration_fraction=0.16,
        exploration_final_eps=0.04, policy_kwargs=dict(net_arch=[256, 256]),
    ),
    # rl-zoo sac.yml Pendulum-v1 is SB3's defaults with lr 1e-3; a smaller net learns as well here and runs faster.
    ("sac", "Pendulum-v1"): dict(learning_rate=1e-3, learning_starts=1000, policy_kwargs=dict(net_arch=[64, 64])),
    ("td3", "Pendulum-v1"): dict(
        learning_rate=1e-3, gamma=0.98, learning_starts=1000, policy_kwargs=dict(net_arch=[64, 64])
    ),
    ("ddpg", "Pendulum-v1"): dict(
        learning_rate=1e-3, gamma=0.98, learning_starts=1000, policy_kwargs=dict(net_arch=[64, 64])
    ),
}


class UnknownAlgorithmError(ValueError):
    """An algorithm name that is not one of ``ALGORITHMS``."""


class UnknownEnvError(ValueError):
    """An env id that Gymnasium's registry does not know."""


class UnknownHyperparameterError(ValueError):
    """A hyperparameter the SB3 algorithm's constructor does not take (a typo, or one of another algorithm)."""


class BadHyperparameterError(ValueError):
    """A hyperparameter value the SB3 algorithm's constructor refuses (e.g. ``n_steps: -1``)."""


class IncompatibleSpaceError(TypeError):
    """The algorithm cannot act in the env's action space (e.g. DQN on a Box, SAC on a Discrete space)."""


def check_algorithm(name: str) -> str:
    """Normalise an algorithm name (case-insensitive) or raise ``UnknownAlgorithmError`` listing the valid ones."""
    key = str(name).lower()
    if key not in ALGORITHMS:
        raise UnknownAlgorithmError(
            f"unknown algorithm {name!r}; choose one of: {', '.join(ALGORITHMS)} (Stable-Baselines3 algorithms)"
        )
    return key


def check_env_id(env_id: str) -> str:
    """Check that ``env_id`` is registered (``module:Id-v0`` imports the module first) or raise ``UnknownEnvError``."""
    try:
        gym.spec(env_id)
    except (gym.error.Error, ModuleNotFoundError, ImportError) as err:
        ids = sorted(gym.registry)
        close = difflib.get_close_matches(env_id, ids, n=5, cutoff=0.5)
        hint = f"did you mean: {', '.join(close)}? " if close else ""
        raise UnknownEnvError(
            f"unknown env id {env_id!r} ({err}). {hint}Registered ids include: {', '.join(ids[:12])}, ... "
            f"({len(ids)} in all; list them with `python -c \"import gymnasium; print(list(gymnasium.registry))\"`; "
            "an env from another package is addressed as `package.module:EnvId-v0`)"
        ) from None
    return env_id


#: Constructor arguments that ``SB3Agent`` sets itself (``--hyperparams`` may not).
_AGENT_SETS = ("policy", "env", "seed", "device", "verbose", "_init_setup_model")


def check_hyperparams(algo: str, hyperparams: Mapping[str, Any]) -> None:
    """Raise ``UnknownHyperparameterError`` unless every key is a constructor argument of ``algo``'s SB3 class (or
    ``n_envs``), naming the closest valid keys; before anything is built, so a typo never costs a run."""
    if not isinstance(hyperparams, Mapping):
        raise UnknownHyperparameterError(f"hyperparams must be a JSON object of {algo} constructor arguments, e.g. "
                                         f"'{{\"n_envs\": 4}}', got {type(hyperparams).__name__}: {hyperparams!r}")
    params = inspect.signature(algorithm_class(algo).__init__).parameters
    valid = sorted({"n_envs", *params} - {"self", *_AGENT_SETS})
    for key in hyperparams:
        if key in _AGENT_SETS:
            raise UnknownHyperparameterError(f"hyperparameter {key!r} is set by rlhf-gym itself; use --{key} or drop "
                                             "it from --hyperparams" if key in ("seed", "device") else
                                             f"hyperparameter {key!r} is set by rlhf-gym itself; drop it from "
                                             "--hyperparams")
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise UnknownHyperparameterError(f"unknown {algo} hyperparameter {key!r}; {hint}valid keys: "
                                             f"{', '.join(valid)}")


def algorithm_class(name: str) -> type[BaseAlgorithm]:
    return getattr(stable_baselines3, ALGORITHMS[check_algorithm(name)][0])


def check_action_space(algo: str, action_space: spaces.Space, env_id: str = "the env") -> None:
    allowed = ALGORITHMS[check_algorithm(algo)][1]
    if not isinstance(action_space, allowed):
        fits = [a for a, (_, ok) in ALGORITHMS.items() if isinstance(action_space, ok)]
        raise IncompatibleSpaceError(
            f"{algo} cannot act in {env_id}'s action space {action_space}; algorithms that can: {', '.join(fits)}"
        )


def default_hyperparams(algo: str, env_id: str) -> dict[str, Any]:
    """The preset for (algo, env id), or ``{}`` (SB3's defaults) when there is none."""
    return dict(SB3_HYPERPARAMS.get((check_algorithm(algo), env_id), {}))


def resolve_hyperparams(hyper: Mapping[str, Any]) -> dict[str, Any]:
    """``policy_kwargs.features_extractor_class`` may name an SB3 extractor (``"NatureCNN"``), so that configs and
    config.json stay JSON; this returns the kwargs with the class itself."""
    hyper = dict(hyper)
    pk = dict(hyper.get("policy_kwargs") or {})
    if isinstance(pk.get("features_extractor_class"), str):
        pk["features_extractor_class"] = getattr(torch_layers, pk["features_extractor_class"])
        hyper["policy_kwargs"] = pk
    return hyper


class Progress:
    """Fraction of the run's step budget still ahead (1 -> 0); the annealed hyperparameters read it."""

    def __init__(self, total_steps: int):
        self.total_steps = max(1, int(total_steps))
        self.remaining = 1.0

    def update(self, steps_done: int) -> None:
        self.remaining = max(0.0, 1.0 - steps_done / self.total_steps)


class Annealed:
    """``start * progress.remaining``: the rl-zoo ``lin_<start>`` schedule measured over the whole run."""

    def __init__(self, start: float, progress: Progress):
        self.start = float(start)
        self.progress = progress

    def __call__(self, _progress_remaining: float) -> float:
        return self.start * self.progress.remaining


def _linear_start(value: Any) -> float | None:
    if isinstance(value, str) and value.startswith("lin_"):
        return float(value[4:])
    return None


class _ProgressCallback(BaseCallback):
    """Keeps ``Progress`` on the run's budget during SB3's ``learn`` (SB3 would measure each call on its own)."""

    def __init__(self, progress: Progress):
        super().__init__()
        self.progress = progress

    def _on_step(self) -> bool:
        self.progress.update(self.num_timesteps)  # cumulative: the loop never resets SB3's counter
        return True


def make_vec_env(env_id: str, n_envs: int, seed: int, wrapper: Callable[[gym.Env], gym.Env] | None = None) -> VecEnv:
    """``n_envs`` Monitor-wrapped copies of ``env_id`` in a ``DummyVecEnv`` (cheap envs: no subprocess overhead)."""

    def factory(rank: int):
        def make() -> gym.Env:
            env = Monitor(gym.make(env_id))
            env.action_space.seed(seed + rank)
            return wrapper(env) if wrapper is not None else env

        return make

    venv = DummyVecEnv([factory(i) for i in range(n_envs)])
    venv.seed(seed)
    return venv


class SB3Agent:
    """A Stable-Baselines3 algorithm trained on a learned reward (the loop's ``Agent`` protocol).

    Args:
        algo: ``ppo``, ``a2c``, ``sac``, ``dqn``, ``td3`` or ``ddpg``.
        env_id: a registered Gymnasium id.
        reward_fn: the learned reward ``(obs (B,*), acts (B,*)) -> (B,)``; replace it with ``set_reward_fn``.
        total_steps: the run's env-step budget (what ``lin_`` schedules decay over).
        hyperparams: SB3 constructor kwargs (``n_envs`` too; an extractor may be named, see ``resolve_hyperparams``);
            ``None`` = ``default_hyperparams(algo, env_id)``.
        wrap_venv: applied to the (Monitor-wrapped, true-reward) vec env before the learned reward goes on top; the
            control collector uses it to record the agent's experience.
    """

    def __init__(
        self,
        algo: str,
        env_id: str,
        reward_fn: RewardFn,
        total_steps: int,
        seed: int = 0,
        device: str = "auto",
        hyperparams: Mapping[str, Any] | None = None,
        wrap_venv: Callable[[VecEnv], VecEnv] | None = None,
    ):
        self.algo = check_algorithm(algo)
        self.env_id = check_env_id(env_id)
        self.seed = seed
        self.device = device
        params = resolve_hyperparams(default_hyperparams(algo, env_id) if hyperparams is None else hyperparams)
        self.n_envs = int(params.pop("n_envs", 1))
        self.progress = Progress(total_steps)
        self._annealed = {k: _linear_start(params.pop(k)) for k in ("learning_rate", "clip_range")
                          if _linear_start(params.get(k)) is not None}
        self.hyperparams = params
        venv = make_vec_env(env_id, self.n_envs, seed)
        check_action_space(self.algo, venv.action_space, env_id)
        if wrap_venv is not None:
            venv = wrap_venv(venv)
        self.venv = LearnedRewardVecEnv(venv, reward_fn)
        try:
            self.model = algorithm_class(self.algo)("MlpPolicy", self.venv, seed=seed, device=device, verbose=0,
                                                    **params)
        except (AssertionError, ValueError, TypeError) as err:  # SB3 checks its arguments with asserts
            self.venv.close()
            raise BadHyperparameterError(f"{self.algo} refused its hyperparameters ({err}); fix the value in "
                                         f"--hyperparams (they were {params})") from err
        self._install_schedules()
        self.reward_fn = reward_fn

    @property
    def off_policy(self) -> bool:
        return isinstance(self.model, OffPolicyAlgorithm)

    @property
    def num_timesteps(self) -> int:
        return int(self.model.num_timesteps)

    def _install_schedules(self) -> None:
        # Set after construction/loading: SB3 pickles its own schedule objects, ours are rebuilt here every time.
        if "learning_rate" in self._annealed:
            self.model.lr_schedule = Annealed(self._annealed["learning_rate"], self.progress)
        if "clip_range" in self._annealed:
            self.model.clip_range = Annealed(self._annealed["clip_range"], self.progress)

    def set_reward_fn(self, reward_fn: RewardFn) -> int:
        """Use a new learned reward from now on; off-policy agents relabel their whole buffer (PEBBLE).

        Returns the number of replay-buffer transitions relabelled.
        """
        self.reward_fn = reward_fn
        self.venv.set_reward_fn(reward_fn)
        if self.off_policy and self.model.replay_buffer is not None:
            return relabel_replay_buffer(self.model.replay_buffer, reward_fn, self.model.action_space,
                                         scaled_actions=isinstance(self.model.action_space, spaces.Box))
        return 0

    @property
    def step_granularity(self) -> int:
        """SB3 learns in whole rollouts (on-policy) or whole ``train_freq`` collections: steps come in multiples."""
        if self.off_policy:
            freq = self.model.train_freq
            per_env = freq.frequency if freq.unit.value == "step" else 1
            return max(1, per_env) * self.n_envs
        return int(self.model.n_steps) * self.n_envs

    def learn(self, n_steps: int, max_steps: int | None = None) -> dict[str, float]:
        """Train on the current learned reward for about ``n_steps`` env steps, never more than ``max_steps``.

        SB3 collects whole rollouts, so ``n_steps`` is rounded to the nearest multiple of ``step_granularity``, and
        down where that would pass ``max_steps`` (a run never overshoots its budget). Returns namespaced metrics.
        """
        g = self.step_granularity
        n_steps = max(1, round(int(n_steps) / g)) * g
        if max_steps is not None:
            n_steps = min(n_steps, (int(max_steps) // g) * g)
        if n_steps <= 0:
            return {}
        self.model.learn(n_steps, reset_num_timesteps=False, callback=_ProgressCallback(self.progress),
                         progress_bar=False)
        metrics: dict[str, float] = {"agent/timesteps": float(self.num_timesteps)}
        episodes = list(self.model.ep_info_buffer or [])
        if episodes:  # Monitor sits under the learned reward, so these are TRUE returns
            metrics["agent/true_ep_return"] = float(np.mean([ep["r"] for ep in episodes]))
            metrics["agent/ep_len"] = float(np.mean([ep["l"] for ep in episodes]))
        return metrics

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        actions, _ = self.model.predict(obs, deterministic=deterministic)
        return actions

    def evaluate(self, n_episodes: int, seed: int = 10_000, deterministic: bool = True) -> np.ndarray:
        """True returns of ``n_episodes`` episodes of the current policy (no learned reward anywhere)."""
        venv = make_vec_env(self.env_id, min(n_episodes, 20), seed)  # one episode per env: fewest policy calls
        try:
            returns, _ = evaluate_policy(self.model, venv, n_eval_episodes=n_episodes, deterministic=deterministic,
                                         return_episode_rewards=True)
        finally:
            venv.close()
        return np.asarray(returns, dtype=np.float64)

    def save(self, directory: str | os.PathLike) -> None:
        """``agent.zip`` (SB3 ``.save``) and, for off-policy algorithms, ``replay_buffer.pkl``; each atomically."""
        directory = Path(directory)
        with atomic_path(directory / "agent.zip") as tmp:  # the temporary name keeps the suffix SB3 expects
            self.model.save(tmp)
        if self.off_policy:
            with atomic_path(directory / "replay_buffer.pkl") as tmp:
                self.model.save_replay_buffer(tmp)

    def load(self, directory: str | os.PathLike) -> None:
        """Restore what ``save`` wrote, onto this agent's envs (the learned reward stays this agent's)."""
        directory = Path(directory)
        cls = algorithm_class(self.algo)
        self.model = cls.load(directory / "agent.zip", env=self.venv, device=self.device)
        self._install_schedules()
        if self.off_policy and (directory / "replay_buffer.pkl").exists():
            self.model.load_replay_buffer(directory / "replay_buffer.pkl")

    def reset_critic(self) -> None:
        """Reinitialise the value estimates, keep the policy: PEBBLE's ``reset_critic`` after unsupervised
        pre-training (Lee et al. 2021; BPref ``train_PEBBLE.py``): SAC / TD3 / DDPG's critic and its target, DQN's
        Q-net and its target, PPO / A2C's value head (ours, by analogy). Their optimiser moments are cleared."""
        model = self.model
        if self.off_policy:
            critic = getattr(model, "critic", None) or model.q_net  # DQN has a Q-net, no critic
            target = getattr(model, "critic_target", None) or model.q_net_target
            _reinit(critic)
            target.load_state_dict(critic.state_dict())
            optimizer = getattr(critic, "optimizer", None) or model.policy.optimizer
            parts = [critic]
        else:  # the value branch of SB3's ActorCriticPolicy, with its own initialisation gains
            policy = model.policy
            parts = [policy.value_net, getattr(policy.mlp_extractor, "value_net", None)]
            parts = [p for p in parts if p is not None]
            if policy.ortho_init:
                policy.value_net.apply(partial(policy.init_weights, gain=1.0))
                for p in parts[1:]:
                    p.apply(partial(policy.init_weights, gain=float(np.sqrt(2))))
            else:
                for p in parts:
                    _reinit(p)
            optimizer = policy.optimizer
        for part in parts:
            for param in part.parameters():
                optimizer.state.pop(param, None)

    def close(self) -> None:
        self.venv.close()


def _reinit(module: Any) -> None:
    """PyTorch's default initialisation of every layer of ``module`` again."""
    for layer in module.modules():
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
