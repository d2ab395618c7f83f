"""TextGenVectorEnv: N TextGen-v0 episodes in one batch on the model's device (the fast path)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from textenv.engine import EpisodeEndedError, Episodes, StepResult, sample_tokens
from textenv.env import EngineViews, TextGenSettings, build_engine, observation_space
from textenv.kl import KLPenalty
from textenv.models import REF_COPY

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
    As ``TextGenEnv``: ``-beta * (log pi - log pi_ref)`` of the taken token, plus ``reward_fn`` at the last step;
    ``beta`` is ``kl_coef`` (a number or a ``KLPenalty``; an adaptive one follows each batch of finished episodes).
    Rows in their NEXT_STEP reset step (see below) get 0.

    ## Starting State
    ``reset``: N prompts drawn with ``self.np_random`` (or ``options={"prompts": [N texts]}``). Autoreset draws
    from the same generator, row by row in index order. ``options={"reset_mask": (N,) bool array}`` resets only the
    masked rows (the others go on), as Gymnasium's ``SyncVectorEnv`` does.

    ## Episode End
    Per row: terminated on EOS, truncated after ``max_new_tokens``. What follows is Gymnasium's autoreset mode
    ``autoreset_mode`` (also ``metadata["autoreset_mode"]``; see https://farama.org/Vector-Autoreset-Mode), with
    ``SyncVectorEnv``'s behaviour (tested against it):

    * ``NEXT_STEP`` (default): the ``step`` after a row ended ignores that row's action and returns its new prompt
      as the observation, with reward 0 and ``terminated = truncated = False``.
    * ``SAME_STEP``: the row starts its new episode in the step that ended the old one: the observation is the new
      prompt; the old episode's last observation and info are in ``info["final_obs"]`` and ``info["final_info"]``.
    * ``DISABLED``: the row waits; stepping before ``reset(options={"reset_mask": ...})`` restarted it raises
      ``EpisodeEndedError``. TorchRL prefers this mode: ``GymWrapper(gym.make_vec("TextGen-v0", num_envs=N,
      autoreset_mode="Disabled"))`` (TorchRL refuses NEXT_STEP; its readers for SAME_STEP take neither the text in
      info nor ``Dict`` observations).

    A ``step`` that raises after accepting the actions (``reward_fn`` failed, e.g. a reward server's
    ``ConnectionError``; the model failed; Ctrl-C) ends every row's episode (the step's results never reached the
    caller): the exception propagates unchanged, with a note, and ``step`` / ``play`` / ``next_token_logits`` raise
    ``EpisodeEndedError``, naming it, until ``reset()``. No episode runs past ``max_new_tokens``. Invalid actions are
    refused before anything changes.

    ## Arguments
    ``num_envs`` (N), ``array_backend`` (``"numpy"``: NumPy arrays, for Gymnasium/SB3 tooling; ``"torch"``: device
    tensors, no host copies), ``autoreset_mode`` (an ``AutoresetMode``, its value ``"SameStep"`` or its name
    ``"same_step"``; default NEXT_STEP), and every argument of ``TextGenEnv`` (model, tokenizer, prompts, reward_fn,
    ref_model, kl_coef, max_new_tokens, max_prompt_tokens, temperature, device, prompt_field, use_cache,
    reward_weights, info_text).

    ## Info
    Gymnasium's vector info, as ``SyncVectorEnv`` over N ``TextGenEnv`` gives it: ``info[key]`` of length N with the
    bool mask ``info["_" + key]`` of the rows that reported it; numbers in arrays of their dtype (0 where masked),
    text in object arrays (None where masked). Rows that acted: ``policy_logprob`` and ``ref_logprob`` (float32;
    device tensors with the torch backend; unlike ``SyncVectorEnv``, present even when no row acted, all masked);
    also ``score`` (float64; at the step that ends the row's episode, 0.0 before: tell the end by ``terminated |
    truncated``) and ``kl_sum`` (float64, the KL summed over the episode so far; a device tensor with the torch
    backend) and, with ``info_text=True``, ``prompt`` and ``response`` (text; ``""`` before the end); with
    ``info_text=True``, rows that started an episode (``reset``, autoreset): ``prompt``. In SAME_STEP mode the
    ended rows' step info moves into ``final_info`` (and their observation into ``final_obs``, an object array of
    per-row dicts).

    ## Version History
    * v0: initial version (Gymnasium 1.x, NEXT_STEP autoreset); ``autoreset_mode`` (SAME_STEP, DISABLED),
      ``reset_mask`` and the reset rows' ``prompt`` in info added without changing NEXT_STEP trajectories; in
      rlhf-gym 0.3, as in ``TextGenEnv``, ``score`` and ``kl_sum`` are reported for every row that acted (before:
      the rows that ended) and the text keys only with ``info_text=True``.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}  # an instance holds its own mode

    def __init__(
        self,
        num_envs: int = 1,
        model: Any = None,
        tokenizer: Any = None,
        prompts: Any = None,
        reward_fn: Any = None,
        ref_model: Any = REF_COPY,
        kl_coef: float | KLPenalty = 0.05,
        max_new_tokens: int = 32,
        max_prompt_tokens: int = 32,
        temperature: float = 1.0,
        device: str | torch.device | None = None,
        prompt_field: str = "prompt",
        use_cache: bool = True,
        array_backend: str = "numpy",
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
        reward_weights: Any = None,
        info_text: bool = False,
        environment: Any = None,
        max_turn_tokens: int | None = None,
        end_of_turn: Any = None,
        environment_reward_weight: float = 1.0,
    ):
        if not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        if array_backend not in BACKENDS:
            raise ValueError(f"array_backend must be one of {BACKENDS}, got {array_backend!r}")
        self.autoreset_mode = parse_autoreset_mode(autoreset_mode)
        self.metadata = {**type(self).metadata, "autoreset_mode": self.autoreset_mode}
        self.num_envs = int(num_envs)
        self.array_backend = array_backend
        self.engine, self.prompt_source = build_engine(self.num_envs, TextGenSettings(
            model, tokenizer, prompts, reward_fn, ref_model, kl_coef, max_new_tokens, max_prompt_tokens, temperature,
            device, prompt_field, use_cache, reward_weights, info_text, environment, max_turn_tokens, end_of_turn,
            environment_reward_weight))
        self.info_text = info_text
        self.single_observation_space = observation_space(self.engine)
        self.single_action_space = spaces.Discrete(self.engine.vocab_size)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        # Rows whose episode ended and that have not started a new one: NEXT_STEP resets them at the next step,
        # DISABLED waits for reset(options={"reset_mask": ...}); SAME_STEP resets them at once (but after play()).
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
        """Start new episodes in every row, or with ``options={"reset_mask": (N,) bool array}`` in the masked rows
        only (the others go on). ``options={"prompts": [N texts]}`` chooses the prompts (one per row; with a mask,
        the masked rows' entries are used)."""
        super().reset(seed=seed)
        n = self.num_envs
        options = options or {}
        rows = np.arange(n)
        if options.get("reset_mask") is not None:
            if not self._started:
                raise EpisodeEndedError("reset(options={'reset_mask': ...}) resets some rows: call reset() first")
            rows = np.flatnonzero(_reset_mask(options["reset_mask"], n))
        chosen = {}
        for key in ("prompts", "environment_seeds"):
            if key in options:
                values = list(options[key])
                if len(values) != n:
                    raise ValueError(f"options[{key!r}] must hold num_envs={n} entries (one per row), got "
                                     f"{len(values)}")
                chosen[key] = [values[i] for i in rows]
        texts, ids = self._starts(rows, chosen.get("prompts"), chosen.get("environment_seeds"))
        self.engine.load_prompts(rows, ids, texts)
        self._autoreset[rows] = False
        self._started = True
        info: dict[str, Any] = {}
        if self.info_text:
            _put(info, "prompt", rows, texts, n)
        return self._obs(), info

    def step(self, actions: Any):
        if not self._started:
            raise EpisodeEndedError("step() called before reset(): call reset() first")
        n, rows = self.num_envs, np.flatnonzero(self._autoreset)
        if len(rows) and self.autoreset_mode == AutoresetMode.DISABLED:
            raise EpisodeEndedError(
                f"the episodes of rows {rows.tolist()} ended and autoreset_mode is DISABLED: start new ones with "
                "env.reset(options={'reset_mask': mask}) (mask: a bool array, True on the rows to reset) first"
            )
        texts, ids = self._starts(rows) if len(rows) else (None, None)
        # An exception after the actions were accepted (reward_fn, the model) ends every row's episode in the
        # engine: the next step() raises EpisodeEndedError there, naming it, until reset().
        res = self.engine.step(actions, rows, ids, texts)
        self._autoreset = res.terminated | res.truncated
        if len(res.ended) and self.autoreset_mode == AutoresetMode.SAME_STEP:
            info = self._reset_same_step(res)
        else:
            info = {**self._logprob_info(res, res.active), **self._episode_info(res, res.active)}
        if len(rows) and self.info_text:  # NEXT_STEP: these rows started new episodes instead of acting
            _put(info, "prompt", rows, texts, n)
        return (self._obs(), *self._step_arrays(res), info)

    def play(
        self, generator: torch.Generator | None = None, sample: Callable[..., torch.Tensor] = sample_tokens
    ) -> Episodes:
        """Play the episodes ``reset()`` started, every row to its end, in one call; return them as ``Episodes``
        (device tensors ``(N, T)`` of actions, mask, log-probs and per-step rewards; prompts, responses, scores).

        Equivalent to stepping with ``actions = sample(env.next_token_logits(), generator)`` until every row's episode
        has ended (same actions, rewards, log-probs and scores: tested), minus the per-token round trips through
        ``step()`` and the autoreset of rows that end early. This is how the native agents collect rollouts.
        Afterwards every row has ended and holds its final state: the next ``step()`` starts new episodes, as after
        the steps that end them in NEXT_STEP mode (in every mode but DISABLED, which needs a ``reset()`` first).
        """
        self.engine.ensure_usable()
        if not self._started or self._autoreset.any() or (self.engine.t != 0).any():
            raise EpisodeEndedError("play() plays episodes from their start: call reset() first")
        episodes = self.engine.play(sample, generator)
        self._autoreset[:] = True
        return episodes

    # ------------------------------------------------------------------------------------------------ internals

    # Gymnasium's vector info, as SyncVectorEnv over N TextGenEnv gives it: each key with a "_key" mask of the rows
    # that reported it; numbers in an array of their dtype (0 elsewhere), text in an object array (None elsewhere).

    def _logprob_info(self, res: StepResult, acted: np.ndarray) -> dict[str, Any]:
        """``policy_logprob`` (and ``ref_logprob``) of the rows ``acted`` (bool (N,)) marks; tensors with the torch
        backend."""
        info: dict[str, Any] = {}
        for key, values in (("policy_logprob", res.policy_logprob), ("ref_logprob", res.ref_logprob)):
            if values is None:
                continue
            if not np.array_equal(acted, res.active):  # the engine already zeroed the rows that did not act
                values = values.where(torch.as_tensor(acted, device=values.device), 0.0)
            info[key] = values if self.array_backend == "torch" else values.cpu().numpy()
            info["_" + key] = acted.copy()
        return info

    def _episode_info(self, res: StepResult, acted: np.ndarray) -> dict[str, Any]:
        """What ``TextGenEnv`` reports at every step, for the rows ``acted`` (bool (N,)) marks: ``score`` (at an
        episode's end; 0.0 before), ``kl_sum`` (over the episode so far; a device tensor with the torch backend)
        and, with ``info_text``, ``prompt`` and ``response`` ("" before the end). Present, all masked, when no
        row acted."""
        n, rows = self.num_envs, np.flatnonzero(acted)
        info: dict[str, Any] = {"score": np.zeros(n), "_score": acted.copy()}
        info["score"][res.ended] = res.scores
        info["score"][~acted] = 0.0
        kl = self.engine.kl_sum.double()
        if not acted.all():  # no host->device copy of the mask in the common case
            kl = kl.where(torch.as_tensor(acted, device=kl.device), 0.0)
        info["kl_sum"], info["_kl_sum"] = (kl if self.array_backend == "torch" else kl.cpu().numpy()), acted.copy()
        if self.multi_turn:
            info["turns"], info["_turns"] = np.where(acted, self.engine.conv.turns, 0), acted.copy()
            returns = np.where(acted, self.engine.conv.returns, 0.0)
            info["environment_return"], info["_environment_return"] = returns, acted.copy()
        if self.info_text and len(rows):
            responses = dict(zip(res.ended.tolist(), res.responses, strict=True))
            _put(info, "prompt", rows, [self.engine.prompt_text[r] for r in rows.tolist()], n)
            _put(info, "response", rows, [responses.get(r, "") for r in rows.tolist()], n)
        return info

    def _reset_same_step(self, res: StepResult) -> dict[str, Any]:
        """SAME_STEP autoreset, as ``SyncVectorEnv`` does it: the rows that ended report their last observation in
        ``info["final_obs"]`` and their step's info in ``info["final_info"]``, then start new episodes in this step
        (their observation is the new prompt; with ``info_text``, ``info["prompt"]`` names it). Returns the step's
        info."""
        n, ended, e = self.num_envs, res.ended, self.engine
        done = np.zeros(n, dtype=bool)
        done[ended] = True
        info = {**self._logprob_info(res, res.active & ~done), **self._episode_info(res, res.active & ~done)}
        obs = self._obs()  # the state the step reached (torch: tensors the engine replaces, never modifies)
        final_obs = [{k: v[r] for k, v in obs.items()} for r in ended.tolist()]
        _put(info, "final_obs", ended, final_obs, n)
        info["final_info"] = {**self._logprob_info(res, done), **self._episode_info(res, done)}
        info["_final_info"] = done
        texts, ids = self._starts(ended)
        e.load_prompts(ended, ids, texts)
        if self.info_text:
            _put(info, "prompt", ended, texts, n)
        self._autoreset[ended] = False
        return info

    def _step_arrays(self, res: StepResult) -> tuple[Any, Any, Any]:
        if self.array_backend == "torch":
            dev = self.engine.device
            # Device flags come from the engine when actions were tensors: no host->device copy per step.
            term = res.terminated_t if res.terminated_t is not None else torch.as_tensor(res.terminated, device=dev)
            trunc = res.truncated_t if res.truncated_t is not None else torch.as_tensor(res.truncated, device=dev)
            return res.reward, term, trunc
        return res.reward.cpu().numpy().astype(np.float64), res.terminated.copy(), res.truncated.copy()

    def _obs(self) -> dict[str, Any]:
        e = self.engine
        if self.array_backend == "torch":
            return {"input_ids": e.tokens, "attention_mask": e.mask}
        return {"input_ids": e.tokens.cpu().numpy().copy(), "attention_mask": e.mask.cpu().numpy().copy()}


def parse_autoreset_mode(mode: Any) -> AutoresetMode:
    """An ``AutoresetMode`` from the enum, its value (``"NextStep"``) or its name (``"next_step"``)."""
    if isinstance(mode, AutoresetMode):
        return mode
    if isinstance(mode, str):
        for m in AutoresetMode:
            if mode in (m.value, m.name) or mode.upper() == m.name:
                return m
    choices = ", ".join(f"AutoresetMode.{m.name} ({m.value!r})" for m in AutoresetMode)
    raise ValueError(f"autoreset_mode must be one of {choices}, got {mode!r}")


def _reset_mask(mask: Any, n: int) -> np.ndarray:
    """``options["reset_mask"]`` checked as ``SyncVectorEnv`` checks it: a bool array of shape (N,), not all False."""
    arr = mask.detach().cpu().numpy() if torch.is_tensor(mask) else np.asarray(mask)
    if arr.dtype != np.bool_:
        raise TypeError(f"options['reset_mask'] must be a bool array (True on the rows to reset), got {arr.dtype}")
    if arr.shape != (n,):
        raise ValueError(f"options['reset_mask'] must have shape ({n},) (one flag per row), got {arr.shape}")
    if not arr.any():
        raise ValueError("options['reset_mask'] has no True value: mark at least one row to reset")
    return arr


def _put(info: dict[str, Any], key: str, rows: np.ndarray, values: Any, n: int) -> None:
    """``info[key][rows] = values`` and ``info["_" + key][rows] = True`` in Gymnasium's vector-info layout, creating
    both as ``SyncVectorEnv`` does: numbers in an array of their dtype (0 elsewhere), anything else (text, dicts)
    in an object array (None elsewhere)."""
    if key not in info:
        sample = np.asarray(values)
        info[key] = np.zeros(n, dtype=sample.dtype) if sample.dtype.kind in "biuf" else np.full(n, None, dtype=object)
        info["_" + key] = np.zeros(n, dtype=bool)
    for r, v in zip(np.asarray(rows).tolist(), values, strict=True):
        info[key][r] = v
    info["_" + key][rows] = True
