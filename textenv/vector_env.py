"""TextGenVectorEnv: N TextGen-v0 episodes in one batch on the model's device (the fast path)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from textenv.engine import Episodes, sample_tokens
from textenv.env import EngineViews, EpisodeEndedError, build_engine, observation_space
from textenv.models import REF_COPY
from textenv.rewards import RewardFunctionError

BACKENDS = ("numpy", "torch")


class TextGenVectorEnv(EngineViews, VectorEnv):
    """
    ## Description
    ``num_envs`` independent TextGen-v0 episodes (see ``TextGenEnv`` for the MDP) advanced together: one batched,
    KV-cached forward per model per step, token state kept on the model's device. This is the fast path; the single
    env is the same engine with N=1.

    Native agents drive it with ``array_backend="torch"``::

        obs, info = env.reset(seed=0)
        while ...:
            logits = env.next_token_logits()                 # (N, V), temperature applied, cached
            actions = torch.distributions.Categorical(logits=logits).sample()
            obs, reward, terminated, truncated, info = env.step(actions)  # reuses the cached logits

    or play whole episodes in one call (the same MDP, token for token, without the per-token ``step`` round trips)::

        obs, info = env.reset(seed=0)
        episodes = env.play(generator)   # actions, log-probs, per-step rewards, scores, responses

    ## Action Space
    ``MultiDiscrete([V] * N)``: one token id per row; a NumPy array or an integer tensor of shape ``(N,)``.

    ## Observation Space
    ``Dict(input_ids=Box(0, V-1, (N, L), int64), attention_mask=Box(0, 1, (N, L), int64))``, LEFT-padded, rows
    right-aligned, ``L = max_prompt_tokens + max_new_tokens``. With ``array_backend="torch"`` the arrays are device
    tensors (treat them as read-only; the env never modifies a tensor it returned).

    ## Rewards
    As ``TextGenEnv``: ``-kl_coef * (log pi - log pi_ref)`` of the taken token, plus ``reward_fn`` at the last step.
    Rows in their reset step (see below) get 0.

    ## Starting State
    ``reset``: N prompts drawn with ``self.np_random`` (or ``options={"prompts": [N texts]}``). Autoreset draws
    from the same generator, row by row in index order.

    ## Episode End
    Per row: terminated on EOS, truncated after ``max_new_tokens``. Autoreset is Gymnasium's NEXT_STEP mode
    (``metadata["autoreset_mode"]``): the ``step`` after a row ended ignores that row's action and returns its new
    prompt as the observation, with reward 0 and ``terminated = truncated = False``.

    ## Arguments
    ``num_envs`` (N), ``array_backend`` (``"numpy"``: NumPy arrays, for Gymnasium/SB3 tooling; ``"torch"``: device
    tensors, no host copies), and every argument of ``TextGenEnv`` (model, tokenizer, prompts, reward_fn, ref_model,
    kl_coef, max_new_tokens, max_prompt_tokens, temperature, device, prompt_field, use_cache).

    ## Info
    Vector-info convention (``info[key]`` of length N with boolean ``info["_" + key]``): every step
    ``policy_logprob`` and ``ref_logprob`` (tensors with the torch backend; masked False for rows in their reset
    step); when rows end: ``prompt``, ``response``, ``score``, ``kl_sum`` (NumPy).

    ## Version History
    * v0: initial version (Gymnasium 1.x, NEXT_STEP autoreset).
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(
        self,
        num_envs: int = 1,
        model: Any = None,
        tokenizer: Any = None,
        prompts: Any = None,
        reward_fn: Any = None,
        ref_model: Any = REF_COPY,
        kl_coef: float = 0.05,
        max_new_tokens: int = 32,
        max_prompt_tokens: int = 32,
        temperature: float = 1.0,
        device: str | torch.device | None = None,
        prompt_field: str = "prompt",
        use_cache: bool = True,
        array_backend: str = "numpy",
    ):
        if not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        if array_backend not in BACKENDS:
            raise ValueError(f"array_backend must be one of {BACKENDS}, got {array_backend!r}")
        self.num_envs = int(num_envs)
        self.array_backend = array_backend
        self.engine, self.prompt_source = build_engine(
            self.num_envs, model, tokenizer, prompts, reward_fn, ref_model, kl_coef, max_new_tokens,
            max_prompt_tokens, temperature, device, prompt_field, use_cache,
        )  # fmt: skip
        self.single_observation_space = observation_space(self.engine)
        self.single_action_space = spaces.Discrete(self.engine.vocab_size)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._autoreset = np.zeros(self.num_envs, dtype=bool)
        self._started = False

    @property
    def device(self) -> torch.device:
        return self.engine.device

    def next_token_logits(self) -> torch.Tensor:
        """``(N, V)`` float32 policy logits at the current states, divided by the temperature (computed once per
        step, then cached; ``step`` reuses them). Rows in their pending reset step have meaningless logits."""
        return self.engine.next_token_logits()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        n = self.num_envs
        if options and "prompts" in options:
            texts = list(options["prompts"])
            if len(texts) != n:
                raise ValueError(f"options['prompts'] must hold num_envs={n} prompts, got {len(texts)}")
            ids = self.prompt_source.encode(texts)
        else:
            texts, ids = self._draw(n)
        self.engine.load_prompts(np.arange(n), ids, texts)
        self._autoreset[:] = False
        self._started = True
        return self._obs(), {"prompt": np.array(texts, dtype=object), "_prompt": np.ones(n, dtype=bool)}

    def step(self, actions: Any):
        if not self._started:
            raise EpisodeEndedError("step() called before reset(): call reset() first")
        rows = np.flatnonzero(self._autoreset)
        texts, ids = self._draw(len(rows)) if len(rows) else (None, None)
        try:
            res = self.engine.step(actions, rows, ids, texts)
        except RewardFunctionError:
            self._started = False  # episodes ended but could not be scored: a reset is needed
            raise
        self._autoreset = res.terminated | res.truncated
        n, torch_out = self.num_envs, self.array_backend == "torch"
        info: dict[str, Any] = {}
        info["policy_logprob"] = res.policy_logprob if torch_out else res.policy_logprob.cpu().numpy()
        info["_policy_logprob"] = res.active.copy()
        if res.ref_logprob is not None:
            info["ref_logprob"] = res.ref_logprob if torch_out else res.ref_logprob.cpu().numpy()
            info["_ref_logprob"] = res.active.copy()
        if len(res.ended):
            done = np.zeros(n, dtype=bool)
            done[res.ended] = True
            for key, values, fill in (
                ("prompt", res.prompts, None),
                ("response", res.responses, None),
                ("score", res.scores, 0.0),
                ("kl_sum", res.kl_sums, 0.0),
            ):
                arr = np.full(n, fill, dtype=object if fill is None else np.float64)
                arr[res.ended] = values
                info[key], info["_" + key] = arr, done.copy()
        if torch_out:
            dev = self.engine.device
            # Device flags come from the engine when actions were tensors: no host->device copy per step.
            term = res.terminated_t if res.terminated_t is not None else torch.as_tensor(res.terminated, device=dev)
            trunc = res.truncated_t if res.truncated_t is not None else torch.as_tensor(res.truncated, device=dev)
            return self._obs(), res.reward, term, trunc, info
        reward = res.reward.cpu().numpy().astype(np.float64)
        return self._obs(), reward, res.terminated.copy(), res.truncated.copy(), info

    def play(
        self, generator: torch.Generator | None = None, sample: Callable[..., torch.Tensor] = sample_tokens
    ) -> Episodes:
        """Play the episodes ``reset()`` started, every row to its end, in one call; return them as ``Episodes``
        (device tensors ``(N, T)`` of actions, mask, log-probs and per-step rewards; prompts, responses, scores).

        Equivalent to stepping with ``actions = sample(env.next_token_logits(), generator)`` until every row's episode
        has ended (same actions, rewards, log-probs and scores: tested), minus the per-token round trips through
        ``step()`` and the autoreset of rows that end early. This is how the native agents collect rollouts.
        Afterwards every row has ended: the next ``step()`` starts new episodes, as after the steps that end them.
        """
        if not self._started or self._autoreset.any() or (self.engine.t != 0).any():
            raise EpisodeEndedError("play() plays episodes from their start: call reset() first")
        try:
            episodes = self.engine.play(sample, generator)
        except RewardFunctionError:
            self._started = False
            raise
        self._autoreset[:] = True
        return episodes

    def _draw(self, k: int) -> tuple[list[str], list[list[int]]]:
        idx = self.prompt_source.sample(self.np_random, k)
        src = self.prompt_source
        return [src.prompts[i] for i in idx], [src.token_ids[i] for i in idx]

    def _obs(self) -> dict[str, Any]:
        e = self.engine
        if self.array_backend == "torch":
            return {"input_ids": e.tokens, "attention_mask": e.mask}
        return {"input_ids": e.tokens.cpu().numpy().copy(), "attention_mask": e.mask.cpu().numpy().copy()}
