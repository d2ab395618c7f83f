"""A Stable-Baselines3 actor-critic policy backed by a Hugging Face causal LM.

With it, unmodified SB3 algorithms (``PPO``, ``A2C``) train a language model on ``TextGen-v0`` exactly as they train an
MLP on CartPole::

    env = gym.make("TextGen-v0")
    model = make_sb3_text_model("ppo", env, n_steps=64, batch_size=16)  # = PPO(CausalLMPolicy, env, ...)
    model.learn(2_000, callback=SyncTextEnvCallback())

- Actor: the LM's next-token distribution at the last position of the observation, ``softmax(logits / temperature)``.
- Critic: a linear value head on the LM's last hidden state at the same position (zero-initialised, so the first
  advantages are the returns; "The N Implementation Details of RLHF with PPO", Huang et al. 2024).
- Features: the env's left-padded ``input_ids`` / ``attention_mask``; position ids come from the mask, so the padding
  never shifts the positions the LM sees.

SB3 knows nothing of KV caches; the policy keeps its own (``agents.sb3.lm_forward``): in the rollout, each
observation extends the previous one by one token per env, so the policy decodes that token against a cache keyed by
the observation's token prefix instead of re-reading the whole context; in training, the minibatch's states that are
prefixes of one another (the states of one episode) share one forward. Both give what the plain forward gives (to
float rounding; ``kv_cache=False`` is that plain forward), and SB3's own rollout and training code is unchanged.

The policy must act with the very model object the env scores (``env.unwrapped.policy``): the env computes the KL
penalty with the acting policy's log-probabilities. ``make_sb3_text_model`` wires this (``policy_kwargs={"lm":
LMHandle(env.unwrapped.policy)}``; the handle keeps ``model.save()`` from pickling the LM). A model loaded with
``PPO.load`` has its own LM: build the env on ``loaded.policy.lm`` to keep training it.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch
from gymnasium import spaces
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import CategoricalDistribution
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import VecEnv
from torch import nn
from transformers import AutoModelForCausalLM

from agents.sb3.lm_forward import RolloutCache, full_forward, shared_prefix_forward
from textenv.default_lm import load_default_lm
from textenv.models import VocabularyMismatchError

OBS_KEYS = ("input_ids", "attention_mask")


class ObservationSpaceError(ValueError):
    """The observation space is not the token observation this policy reads."""


def _resolve_lm(lm: Any) -> nn.Module:
    if lm is None:
        return load_default_lm()[0]
    if isinstance(lm, str):
        return AutoModelForCausalLM.from_pretrained(lm)
    if isinstance(lm, nn.Module):
        return lm
    if isinstance(lm, LMHandle):
        return lm.resolve()
    raise TypeError(f"lm must be a Hugging Face causal LM, a model id / local path, or None; got {type(lm).__name__}")


def lm_vocab_size(lm: nn.Module) -> int:
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if head is not None and hasattr(head, "out_features"):
        return int(head.out_features)
    return int(lm.config.vocab_size)


def check_token_spaces(observation_space: spaces.Space, action_space: spaces.Space, vocab_size: int) -> int:
    """Validate the env's spaces against an LM of ``vocab_size`` tokens; return the observation length."""
    if not isinstance(observation_space, spaces.Dict) or any(k not in observation_space.spaces for k in OBS_KEYS):
        raise ObservationSpaceError(
            f"CausalLMPolicy reads a Dict observation with keys {OBS_KEYS} (the TextGen-v0 observation); got "
            f"{observation_space}. Use it on TextGen-v0, or wrap your env so it emits token ids and a mask."
        )
    shapes = {k: observation_space.spaces[k].shape for k in OBS_KEYS}
    if len(set(shapes.values())) != 1 or len(shapes["input_ids"] or ()) != 1:
        raise ObservationSpaceError(f"input_ids and attention_mask must be 1-D of equal length; got shapes {shapes}")
    if not isinstance(action_space, spaces.Discrete):
        raise ObservationSpaceError(f"CausalLMPolicy acts in Discrete(vocab_size); got action space {action_space}")
    if int(action_space.n) != vocab_size:
        raise VocabularyMismatchError(
            f"the policy's LM has {vocab_size} output tokens but the env's action space is Discrete({action_space.n}). "
            "Build the env with the same model/tokenizer as the policy (pass lm=env.unwrapped.policy)."
        )
    return int(shapes["input_ids"][0])


class CausalLMExtractor(BaseFeaturesExtractor):
    """Holds the LM and turns a token observation into (next-token logits, last hidden state): with ``kv_cache``,
    through the rollout KV cache (no gradients) or the shared-prefix forward (gradients), else the plain forward
    (``agents.sb3.lm_forward``)."""

    def __init__(self, observation_space: spaces.Dict, lm: Any = None, kv_cache: bool = True):
        model = _resolve_lm(lm)
        hidden = int(getattr(model.config, "hidden_size", None) or model.config.n_embd)
        super().__init__(observation_space, features_dim=hidden)
        self.lm = model
        self.kv_cache = bool(kv_cache)
        self.rollout_cache = RolloutCache()

    def forward(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        # SB3's rollout buffer stores Dict observations as float32: ids < 2**24 convert back exactly.
        input_ids = obs["input_ids"].long()  # (B, L)
        mask = obs["attention_mask"].long()  # (B, L)
        if not self.kv_cache:
            return full_forward(self.lm, input_ids, mask)  # (B, V), (B, H)
        if torch.is_grad_enabled():  # SB3's train(): evaluate_actions on a minibatch
            return shared_prefix_forward(self.lm, input_ids, mask)
        return self.rollout_cache.forward(self.lm, input_ids, mask)  # collect_rollouts, predict


class CausalLMPolicy(ActorCriticPolicy):
    """SB3 actor-critic policy whose actor is a causal LM's next-token distribution.

    Args (as ``policy_kwargs``):
        lm: the causal LM (object), a model id / local path, or ``None`` for the offline default LM.
        temperature: divides the logits; use the env's ``temperature`` so that both compute the same log-probs.
        kv_cache: the rollout KV cache and the shared-prefix training forward (module docstring); False runs the
            whole observation through the LM for every state (the reference they are tested against).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule,
        lm: Any = None,
        temperature: float = 1.0,
        kv_cache: bool = True,
        **kwargs: Any,
    ):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        model = _resolve_lm(lm)
        check_token_spaces(observation_space, action_space, lm_vocab_size(model))
        kwargs.pop("net_arch", None)
        kwargs.pop("features_extractor_class", None)
        kwargs.pop("features_extractor_kwargs", None)
        kwargs.setdefault("ortho_init", False)  # keep the pretrained weights
        self._lm_arg = lm if isinstance(lm, str) else None
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch=[],
            features_extractor_class=CausalLMExtractor,
            features_extractor_kwargs={"lm": model, "kv_cache": kv_cache},
            share_features_extractor=True,
            **kwargs,
        )

    @property
    def lm(self) -> nn.Module:
        return self.features_extractor.lm

    def _build(self, lr_schedule) -> None:
        self.action_dist = CategoricalDistribution(int(self.action_space.n))
        self.value_net = nn.Linear(self.features_dim, 1)
        nn.init.zeros_(self.value_net.weight)
        nn.init.zeros_(self.value_net.bias)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        for key in ("net_arch", "features_extractor_class", "features_extractor_kwargs", "activation_fn"):
            data.pop(key, None)
        # A model given by name is saved by name; a model object by class + config (weights: the state dict).
        data["lm"] = self._lm_arg if self._lm_arg is not None else LMHandle(self.lm)
        data["temperature"] = self.temperature
        data["kv_cache"] = self.features_extractor.kv_cache
        return data

    def _heads(self, obs: dict[str, torch.Tensor]) -> tuple[CategoricalDistribution, torch.Tensor]:
        logits, hidden = self.features_extractor(obs)
        dist = self.action_dist.proba_distribution(action_logits=logits / self.temperature)
        return dist, self.value_net(hidden)

    def forward(self, obs, deterministic: bool = False):
        dist, values = self._heads(obs)
        actions = dist.get_actions(deterministic=deterministic)
        return actions, values, dist.log_prob(actions)

    def evaluate_actions(self, obs, actions: torch.Tensor):
        dist, values = self._heads(obs)
        return values, dist.log_prob(actions), dist.entropy()

    def get_distribution(self, obs) -> CategoricalDistribution:
        return self._heads(obs)[0]

    def predict_values(self, obs) -> torch.Tensor:
        return self._heads(obs)[1]

    def _predict(self, observation, deterministic: bool = False) -> torch.Tensor:
        return self.get_distribution(observation).get_actions(deterministic=deterministic)


class LMHandle:
    """Passes an LM object through SB3's ``policy_kwargs``, which SB3 pickles on ``save()``.

    In the process it resolves to the very object (so the policy and the env share weights); pickled, it keeps only
    the model class and config, and the weights come back from SB3's saved state dict.
    """

    def __init__(self, lm: nn.Module):
        self._lm: nn.Module | None = lm
        self.cls, self.config = type(lm), lm.config

    def __getstate__(self) -> dict[str, Any]:
        return {"cls": self.cls, "config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._lm, self.cls, self.config = None, state["cls"], state["config"]

    def resolve(self) -> nn.Module:
        if self._lm is None:
            self._lm = self.cls(self.config)
        return self._lm


def _engines(vec_env) -> list:
    """The TextGen engines behind an SB3 VecEnv of TextGen-v0 envs (in this process, with the same weights): a
    ``TextGenSB3VecEnv``'s one engine, or each env's of a DummyVecEnv."""
    inner = getattr(vec_env, "unwrapped", vec_env)
    if getattr(inner, "engine", None) is not None:
        return [inner.engine]
    engines = []
    for env in getattr(inner, "envs", []):
        engine = getattr(env.unwrapped, "engine", None)
        if engine is not None:
            engines.append(engine)
    return engines


class SyncTextEnvCallback(BaseCallback):
    """Tells TextGen envs that the policy changed.

    SB3 updates the weights between rollouts while episodes are mid-way; the env's KV caches were computed by the old
    weights, so the env recomputes them (``engine.refresh()``) at the start of each rollout. Without it the KL penalty
    of the remaining tokens would mix old and new weights.
    """

    def _on_rollout_start(self) -> None:
        for engine in _engines(self.training_env):
            engine.refresh()

    def _on_step(self) -> bool:
        return True


#: The SB3 algorithms that train ``CausalLMPolicy`` on text (on-policy: the env samples with the policy itself).
SB3_TEXT_CLASSES: dict[str, type[OnPolicyAlgorithm]] = {"ppo": PPO, "a2c": A2C}
SB3_TEXT_ALGOS = tuple(SB3_TEXT_CLASSES)


def make_sb3_text_model(
    algo: str, env: gym.Env | VecEnv, temperature: float | None = None, **algo_kwargs: Any
) -> OnPolicyAlgorithm:
    """``PPO`` / ``A2C`` from SB3 with a ``CausalLMPolicy`` that shares the env's acting LM.

    ``env`` is a TextGen-v0 env (or an SB3 VecEnv of them in this process). Keyword arguments go to the algorithm
    (``n_steps``, ``batch_size``, ``learning_rate``, ...). Returns the SB3 model; call ``model.learn(n, callback=
    SyncTextEnvCallback())`` so the env's KV caches follow the updated weights.
    """
    name = algo.lower()
    if name not in SB3_TEXT_ALGOS:
        raise ValueError(f"unknown SB3 algorithm {algo!r} for text envs; choose one of {SB3_TEXT_ALGOS}")
    inner = env.envs[0].unwrapped if hasattr(env, "envs") else env.unwrapped
    engine = inner.engine
    temp = engine.temperature if temperature is None else temperature
    if temperature is not None and abs(temperature - engine.temperature) > 1e-12:
        raise ValueError(
            f"temperature {temperature} differs from the env's {engine.temperature}: the env's KL penalty would then "
            "use other log-probabilities than the policy acts with. Leave it unset to use the env's."
        )
    policy_kwargs = dict(algo_kwargs.pop("policy_kwargs", None) or {})
    policy_kwargs.setdefault("lm", LMHandle(inner.policy))
    policy_kwargs.setdefault("temperature", temp)
    cls = SB3_TEXT_CLASSES[name]
    return cls(CausalLMPolicy, env, policy_kwargs=policy_kwargs, device=engine.device, **algo_kwargs)


def mean_episode_score(model, env, episodes: int, seed: int = 0) -> float:
    """Mean ``reward_fn`` score (``info["score"]``, the KL term excluded) of ``episodes`` episodes of a single
    ``TextGenEnv`` sampled by the SB3 ``model`` (``deterministic=False``); episode ``i`` resets with ``seed + i``."""
    scores = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done = False
        while not done:
            action, _ = model.predict(obs, deterministic=False)
            obs, _, terminated, truncated, info = env.step(int(action))
            done = terminated or truncated
        scores.append(info["score"])
    return float(sum(scores) / len(scores))
