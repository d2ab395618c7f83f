"""TextGen-v0: LLM text generation as a token-level MDP (single-episode env; the batched twin is in vector_env.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from textenv.checks import check, check_number
from textenv.conversation import Conversations, TurnFormat
from textenv.default_lm import default_prompts
from textenv.engine import ActionTypeError, EpisodeEndedError, GenerationEngine
from textenv.environments.factory import make_environment_factory
from textenv.kl import KLPenalty
from textenv.models import REF_COPY, load_policy, load_reference, resolve_device
from textenv.prompts import PromptSource, prompt_columns, read_prompts
from textenv.reward_functions import WeightedRewards, is_trl_style


@dataclasses.dataclass
class TextGenSettings:
    """The arguments both TextGen envs share (``TextGenEnv``'s docstring, ## Arguments), as :func:`build_engine`
    reads them."""

    model: Any = None
    tokenizer: Any = None
    prompts: Any = None
    reward_fn: Any = None
    ref_model: Any = REF_COPY
    kl_coef: float | KLPenalty = 0.05
    max_new_tokens: int = 32
    max_prompt_tokens: int = 32
    temperature: float = 1.0
    device: str | torch.device | None = None
    prompt_field: str = "prompt"
    use_cache: bool = True
    reward_weights: Any = None
    info_text: bool = False
    environment: Any = None
    max_turn_tokens: int | None = None
    end_of_turn: Any = None
    environment_reward_weight: float = 1.0


def build_engine(num_rows: int, settings: TextGenSettings) -> tuple[GenerationEngine, PromptSource | None]:
    """Validate the env arguments (raising errors that say what to change) and build the shared engine."""
    s = settings
    kl = s.kl_coef if isinstance(s.kl_coef, KLPenalty) else KLPenalty(s.kl_coef)  # validates a plain number
    check_number("temperature", s.temperature, low=0, low_open=True, hint="1.0 = the model's own distribution")
    for name in ("max_new_tokens", "max_prompt_tokens"):
        check_number(name, getattr(s, name), low=1, integer=True)
    if s.max_turn_tokens is not None:
        check_number("max_turn_tokens", s.max_turn_tokens, low=1, integer=True,
                     hint="the policy's tokens per turn; None: the whole budget, max_new_tokens")
    check(s.environment is None or s.prompts is None, "an environment gives each episode's prompt (its first "
          "observation): pass prompts=None with environment=...")
    check_number("environment_reward_weight", s.environment_reward_weight,
                 hint="the environment's rewards in the policy's reward; 0 records them without giving them")
    check(s.environment is not None or (s.max_turn_tokens is None and s.end_of_turn is None),
          "max_turn_tokens and end_of_turn are settings of multi-turn episodes: pass environment=... too")
    check(isinstance(s.info_text, bool), f"info_text must be True or False, got {s.info_text!r}", TypeError)
    functions = list(s.reward_fn) if isinstance(s.reward_fn, (list, tuple)) else [s.reward_fn]
    check(s.reward_fn is None or all(callable(f) for f in functions),
          f"reward_fn must be callable as reward_fn(prompts, responses) (or TRL's f(prompts=, completions=, "
          f"**columns)), or a list of such; got {type(s.reward_fn).__name__}", TypeError)
    policy, tokenizer = load_policy(s.model, s.tokenizer, s.device)
    dev = resolve_device(s.device, policy)
    # The default copy is made only when the reward needs it; a reference given explicitly is always used (a
    # penalty of 0 then measures the KL without penalising it).
    wanted = kl.active or not (isinstance(s.ref_model, str) and s.ref_model == REF_COPY)
    ref = load_reference(s.ref_model, policy, dev) if wanted else None
    conversations, source = None, None
    if s.environment is not None:  # multi-turn: the environments give the prompts (textenv.conversation)
        factory = make_environment_factory(s.environment)  # a class, factory, instance or "gem:<id>"-style string
        conversations = Conversations(factory, num_rows, TurnFormat(tokenizer, s.end_of_turn), s.max_prompt_tokens)
    else:
        source = PromptSource(read_prompts(default_prompts() if s.prompts is None else s.prompts, s.prompt_field),
                              tokenizer, s.max_prompt_tokens)
    reward_fn = _reward_fn(s, functions, source)
    engine = GenerationEngine(policy, tokenizer, ref, reward_fn, num_rows, kl, s.max_new_tokens,
                              s.max_prompt_tokens, s.temperature, dev, use_cache=s.use_cache,
                              conversations=conversations, max_turn_tokens=s.max_turn_tokens,
                              environment_reward_weight=s.environment_reward_weight)
    return engine, source


def _reward_fn(s: TextGenSettings, functions: list, source: PromptSource) -> Any:
    """``reward_fn`` as the engine calls it: one function of the toolkit's protocol as it is; several, weights, or a
    TRL-style function (``f(prompts=, completions=, **columns)``) as ``WeightedRewards`` with each prompt's other
    columns (``textenv.reward_functions``)."""
    if s.reward_fn is None or (len(functions) == 1 and s.reward_weights is None and not is_trl_style(functions[0])):
        return s.reward_fn
    columns = prompt_columns(s.prompts, s.prompt_field) if s.prompts is not None else []
    by_text: dict[str, dict] = {}
    for text, cols in zip(source.prompts if source is not None else [], columns, strict=False):
        check(by_text.setdefault(text, cols) == cols, f"the prompt {text[:60]!r} appears twice with different "
              "columns: a reward function could not tell which row a completion answers; make the prompts unique")
    return WeightedRewards(functions, s.reward_weights, by_text)


def observation_space(engine: GenerationEngine) -> spaces.Dict:
    L, V = engine.L, engine.vocab_size
    return spaces.Dict(
        {
            "input_ids": spaces.Box(0, V - 1, shape=(L,), dtype=np.int64),
            "attention_mask": spaces.Box(0, 1, shape=(L,), dtype=np.int64),
        }
    )


class EngineViews:
    """What ``TextGenEnv`` and ``TextGenVectorEnv`` share: views of the engine that :func:`build_engine` made from
    the env arguments (the same object behind both; only the number of rows differs)."""

    engine: GenerationEngine

    @property
    def policy(self) -> torch.nn.Module:
        """The causal LM that acts (agents train this object)."""
        return self.engine.policy

    @property
    def ref_model(self) -> torch.nn.Module | None:
        return self.engine.ref_model

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def refresh(self) -> None:
        """Recompute the KV caches on the next forward: call after updating the policy weights mid-episode."""
        self.engine.refresh()

    @property
    def multi_turn(self) -> bool:
        """True when an environment answers the policy's turns (``environment=...``)."""
        return self.engine.conv is not None

    def _starts(self, rows: Sequence[int], prompts: Sequence[str] | None = None,
                seeds: Sequence[int] | None = None) -> tuple[list[str], list[list[int]]]:
        """The first turns of new episodes in ``rows``: ``(texts, token ids)``. Single-turn: ``prompts``, else drawn
        from the prompt source with ``self.np_random``. Multi-turn: the rows' environments reset with ``seeds``,
        else seeds drawn from ``self.np_random`` (so a seeded env replays the same tasks)."""
        conv = self.engine.conv
        if conv is None:
            check(seeds is None, "environment seeds choose the tasks of an environment that answers: this env has "
                  "none (pass environment=...), or choose prompts instead")
            if prompts is not None:
                return list(prompts), self.prompt_source.encode(list(prompts))
            idx = self.prompt_source.sample(self.np_random, len(rows))
            src = self.prompt_source
            return [src.prompts[i] for i in idx], [src.token_ids[i] for i in idx]
        check(prompts is None, "with an environment the prompts are its first observations: choose its tasks with "
              "environment seeds (options={'environment_seed': s}, vector env: {'environment_seeds': [...]})")
        if seeds is None:
            seeds = self.np_random.integers(2**31, size=len(rows)).tolist()
        for x in seeds:
            check(isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= 0,
                  f"environment seeds are integers >= 0, got {x!r}", TypeError)
        return conv.start(list(rows), [int(x) for x in seeds])


class TextGenEnv(EngineViews, gym.Env):
    """
    ## Description
    Text generation as the token-level MDP of RLHF (Ziegler et al. 2019, "Fine-Tuning Language Models from Human
    Preferences"; Ramamurthy et al. 2023, RL4LMs). The state is a prompt followed by the tokens generated so far; an
    action appends one token. The policy is ``env.policy``, a Hugging Face causal LM: native agents sample actions
    from ``env.next_token_logits()`` (computed once per step with a KV cache and reused by ``step`` for the KL
    reward, so they pay no second forward pass); any other algorithm (e.g. Stable-Baselines3) just calls
    ``step(action)`` and the env computes the same logits itself, giving the same reward.

    This class is the N=1, no-autoreset case of the batched engine used by ``TextGenVectorEnv`` (the fast path).
    The env keeps KV caches of the policy: after changing ``env.policy``'s weights in the middle of an episode, call
    ``env.refresh()`` (or start new episodes) so that the next logits come from the new weights.

    ## Action Space
    ``Discrete(V)``: a token id; V is the width of the model's logits. Out-of-range ids raise
    ``InvalidActionError``; non-integer actions (floats, bools, strings) raise ``ActionTypeError``.

    ## Observation Space
    ``Dict(input_ids=Box(0, V-1, (L,), int64), attention_mask=Box(0, 1, (L,), int64))`` with
    ``L = max_prompt_tokens + max_new_tokens``. LEFT-padded: the state (prompt + generated tokens) is right-aligned,
    masked positions hold the pad id (the tokenizer's pad, else EOS). Each step shifts the window left by one
    column and appends the action in the last column.

    ## Rewards
    ``r_t = -beta * (log pi(a_t|s_t) - log pi_ref(a_t|s_t))`` with both log-probs taken from the
    temperature-scaled log-softmax; at the last step ``reward_fn([prompt], [response])[0]`` is added. ``beta`` is
    ``kl_coef``: a number, or a ``textenv.kl.KLPenalty`` whose beta adapts towards a target KL after every finished
    episode (Ziegler et al. 2019); this reward is the KL penalty's one definition, and agents train on it as the env
    returns it. With ``ref_model=None``, or ``kl_coef=0`` and the default ``ref_model``, there is no reference
    (KL term 0, no reference forward); with ``kl_coef=0`` and a reference given, the KL is measured (``info``) but
    not penalised. With ``reward_fn=None`` the score is 0.

    ## Starting State
    A prompt drawn uniformly from ``prompts`` with ``self.np_random`` (or ``options={"prompt": text}``), tokenized
    with the tokenizer's special tokens.

    ## Episode End
    Terminated when the action is the tokenizer's EOS; truncated after ``max_new_tokens`` actions. Calling ``step``
    after the end (or before ``reset``) raises ``EpisodeEndedError``.

    A ``step`` that raises after accepting its action (``reward_fn`` failed, e.g. a reward server's
    ``ConnectionError`` or a ``RewardFunctionError`` for bad scores; the model failed; Ctrl-C) ends the episode,
    unscored: the exception propagates unchanged (with a note saying to reset) and every later ``step`` raises
    ``EpisodeEndedError``, naming it, until ``reset``. So an episode never holds more than ``max_new_tokens``
    generated tokens and no response is scored twice. Invalid actions are refused before anything changes
    (``InvalidActionError``): the episode goes on.

    ## Arguments
    * ``model``: HF model id, local path or causal-LM object; ``None`` = the offline default LM.
    * ``tokenizer``: tokenizer object, id or path (required with a model object).
    * ``prompts``: list of strings, a ``.txt`` (one per line) / ``.jsonl`` path, or a ``datasets.Dataset``;
      ``None`` = the default LM's prompts. ``prompt_field``: the JSONL key / dataset column (default ``"prompt"``).
    * ``reward_fn``: ``reward_fn(prompts, responses) -> (B,)`` floats (see ``textenv.rewards``), TRL's
      ``f(prompts=, completions=, **columns)`` (it gets the other columns of each prompt's row in a .jsonl / dataset
      prompt source), a list of either (added up, with ``reward_weights``: one weight each), or ``None``.
    * ``ref_model``: ``"copy"`` (default: a frozen copy of the initial policy, made only if the penalty is on), a
      model / id / path (frozen: eval mode, no grads), or ``None``.
    * ``kl_coef`` (0.05, or a ``KLPenalty``), ``max_new_tokens`` (32), ``max_prompt_tokens`` (32; longer prompts raise
      ``PromptTooLongError``, never truncated), ``temperature`` (1.0), ``device`` (default: the model's).
    * ``use_cache`` (True): KV-cached decoding; False recomputes the full forward each step (a reference path).
    * ``render_mode``: ``None`` or ``"ansi"``.
    * ``info_text`` (False): also put the text in ``info`` (``prompt``, ``response``; see ## Info).

    ## Info
    Every key at every step, so that vectorised wrappers and TorchRL's info readers (which fix the keys when they
    first read an info) see the same keys throughout:

    * ``policy_logprob`` and (with a reference) ``ref_logprob``: log-probabilities of the taken token
      (``np.float32``).
    * ``score`` (reward_fn's score of the response; 0.0 before the step that ends the episode, terminated or
      truncated: use those flags to tell) and ``kl_sum`` (sum of ``log pi - log pi_ref`` over the episode so far,
      0.0 without a reference), both ``np.float64``. (Not NaN before the end: Gymnasium's ``check_env`` compares
      infos by value, and NaN != NaN.)
    * With ``info_text=True`` only: ``prompt`` (the episode's prompt, every step) and ``response`` (``""`` before
      the end; at it the decoded response without the final EOS), ``str``; ``reset`` returns ``{"prompt": text}``
      (else ``{}``). Text is off by default because TorchRL's vectorised entry point,
      ``torchrl.envs.GymEnv("textenv:TextGen-v0", num_envs=N)``, reads every info key as a tensor and refuses
      strings. Without it, ``env.render()`` (``render_mode="ansi"``) shows the prompt and the response so far.

    ## Version History
    * v0: initial version (Gymnasium 1.x). Changed in rlhf-gym 0.3 (issue 25): ``score`` and ``kl_sum`` are in
      ``info`` at every step (0.0 and the KL so far before the end; before, they appeared at the end only), and
      the text keys (``prompt``, ``response``, the reset info's ``prompt``) only with ``info_text=True``, so that
      ``GymEnv("textenv:TextGen-v0", num_envs=N)`` passes TorchRL's ``check_env_specs``. Trajectories, rewards
      and the numeric values at an episode's end are unchanged.
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self,
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
        render_mode: str | None = None,
        reward_weights: Any = None,
        info_text: bool = False,
        environment: Any = None,
        max_turn_tokens: int | None = None,
        end_of_turn: Any = None,
        environment_reward_weight: float = 1.0,
    ):
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.render_mode = render_mode
        self.engine, self.prompt_source = build_engine(1, TextGenSettings(
            model, tokenizer, prompts, reward_fn, ref_model, kl_coef, max_new_tokens, max_prompt_tokens, temperature,
            device, prompt_field, use_cache, reward_weights, info_text, environment, max_turn_tokens, end_of_turn,
            environment_reward_weight))
        self.info_text = info_text
        self.observation_space = observation_space(self.engine)
        self.action_space = spaces.Discrete(self.engine.vocab_size)
        self._ended = True

    def next_token_logits(self) -> torch.Tensor:
        """``(V,)`` float32 policy logits at the current state, divided by the temperature, on the model's device."""
        return self.engine.next_token_logits()[0]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        prompts = [options["prompt"]] if "prompt" in options else None
        seeds = [options["environment_seed"]] if "environment_seed" in options else None
        texts, ids = self._starts([0], prompts, seeds)
        self.engine.load_prompts(np.zeros(1, dtype=np.int64), ids, texts)
        self._ended = False
        return self._obs(), ({"prompt": texts[0]} if self.info_text else {})

    def step(self, action: Any):
        if self._ended:
            raise EpisodeEndedError(
                "step() called before reset() or after the episode ended (terminated/truncated): call reset() first"
            )
        # An exception after the action was accepted (reward_fn, the model) ends the episode in the engine: the
        # next step() raises EpisodeEndedError there, naming it.
        res = self.engine.step(_as_single_action(action))
        # NumPy scalars, as Gymnasium's vector envs batch them and TorchRL's info readers expect (they need .dtype);
        # every key at every step (## Info).
        info: dict[str, Any] = {"policy_logprob": res.policy_logprob.cpu().numpy()[0]}
        if res.ref_logprob is not None:
            info["ref_logprob"] = res.ref_logprob.cpu().numpy()[0]
        ended = bool(len(res.ended))
        info["score"] = np.float64(res.scores[0] if ended else 0.0)
        info["kl_sum"] = np.float64(res.kl_sums[0] if ended else self.engine.kl_sum[0].item())
        if self.multi_turn:
            info["turns"] = np.int64(self.engine.conv.turns[0])
            info["environment_return"] = np.float64(self.engine.conv.returns[0])
        if self.info_text:
            info.update(prompt=self.engine.prompt_text[0], response=res.responses[0] if ended else "")
        self._ended = ended
        return self._obs(), float(res.reward[0]), bool(res.terminated[0]), bool(res.truncated[0]), info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        e = self.engine
        if self.multi_turn:
            lines = [f"{m['role']}: {m['content']}" for m in e.conv.messages[0]]
            if e.turn_t[0]:
                turn = e.tokens[0, e.L - int(e.turn_t[0]) :].tolist()
                lines.append(f"assistant: {e.tokenizer.decode(turn, skip_special_tokens=True)}")
            return "\n".join(lines)
        resp = e.tokens[0, e.L - int(e.t[0]) :].tolist() if e.t[0] else []
        return f"{e.prompt_text[0]} | {e.tokenizer.decode(resp, skip_special_tokens=True)}"

    def _obs(self) -> dict[str, np.ndarray]:
        return {
            "input_ids": self.engine.tokens[0].cpu().numpy().copy(),
            "attention_mask": self.engine.mask[0].cpu().numpy().copy(),
        }


def _as_single_action(action: Any) -> np.ndarray | torch.Tensor:
    """A scalar action as a (1,) array/tensor; non-integers raise ``ActionTypeError``."""
    if torch.is_tensor(action):
        if action.numel() != 1:
            raise ActionTypeError(f"a single env takes one token id, got a tensor of shape {tuple(action.shape)}")
        return action.reshape(1)
    if isinstance(action, (bool, np.bool_)) or not isinstance(action, (int, np.integer, np.ndarray)):
        raise ActionTypeError(f"the action must be an integer token id, got {type(action).__name__} {action!r}")
    arr = np.asarray(action)
    if arr.size != 1:
        raise ActionTypeError(f"a single env takes one token id, got an array of shape {arr.shape}")
    return arr.reshape(1)
