"""The settings of a text RLHF run: ``TextRLHFConfig``, every field documented once, validated once.

It is a run config as ``PrefsConfig`` is (``agents.loop.config.RunConfig``: one ``load()`` of a run directory):
the fields are what a user sets, ``for_algo`` fills an algorithm's defaults from its registry line
(``agents.loop.text.algorithms``), and ``loop_config()`` gives the preference loop its budgets, derived from the
rounds, the label budget and the iterations. The CLI only maps flags onto these fields.

    cfg = TextRLHFConfig.for_algo("grpo", rounds=4, num_pairs=128)
    cfg = TextRLHFConfig.load("runs/text")                      # the settings a run directory was started with
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from agents.loop.config import RunConfig
from agents.loop.preference_loop import LoopConfig
from agents.loop.text.algorithms import TEXT_ALGORITHMS, TextAlgorithm
from agents.rundir import check_device
from textenv.checks import check, check_number
from textenv.kl import KLPenalty

__all__ = ["LABELLERS", "TextRLHFConfig"]

#: Who labels the pairs of a text run (``TextRLHFConfig.labeller``).
LABELLERS = ("teacher", "human", "mixed", "dataset")
_COUNTS = ("max_new_tokens", "rm_epochs", "rm_batch_size", "iterations", "num_envs",
           "eval_prompts", "eval_samples", "rounds", "oversample", "rm_ensemble")


@dataclasses.dataclass
class TextRLHFConfig(RunConfig):
    """Every setting of one text RLHF run (``rlhf-gym text``; module docstring)."""

    algo: str = "ppo"
    """Improvement step: a name of ``agents.loop.text.algorithms.TEXT_ALGORITHMS`` (ppo, grpo, rloo, dpo, kto,
    sb3-ppo, sb3-a2c, or one registered with ``register_text_algorithm``)."""
    seed: int = 0
    """Seed of sampling, labelling, reward-model training and policy optimisation."""
    device: str | None = None
    """Torch device; None = CUDA if available, else CPU."""
    max_new_tokens: int = 24
    """Response length limit (tokens); the default LM's reviews end with EOS well within 24."""
    max_prompt_tokens: int | None = None
    """Longest prompt (tokens); longer prompts are an error, never truncated. None: the longest of the run's prompts
    (training and held-out), which must fit the model's context with ``max_new_tokens``."""
    temperature: float = 1.0
    """Sampling temperature of rollouts, pairs and evaluation."""
    num_pairs: int = 256
    """Completion pairs labelled (the label budget); 0 = no reward model: the policy trains on ``reward_fns`` only."""
    teacher_beta: float = math.inf
    """Teacher rationality (B-Pref beta, in VADER units): inf = always prefers the higher score."""
    teacher_repetition_penalty: float = 0.0
    """A harder teacher: its score is VADER minus this times the share of repeated words (gushing by repetition
    loses; ``rewardmodels.text.teachers.SentimentTeacher``)."""
    rm_epochs: int = 3
    """Reward-model epochs over the labelled pairs."""
    rm_learning_rate: float = 3e-4
    """Reward-model learning rate."""
    rm_batch_size: int = 16
    """Reward-model pairs per step."""
    rm_val_fraction: float = 0.15
    """Share of labelled pairs held out to measure the reward model's accuracy."""
    iterations: int = 40
    """RL iterations (collect + update), or DPO / KTO epochs over the pairs."""
    learning_rate: float = 1e-4
    """Policy learning rate."""
    kl_coef: float = 0.05
    """The KL coefficient beta, put where the algorithm takes it (``TextAlgorithm.kl``): the env's per-token KL
    penalty ``-beta * (log pi - log pi_ref)`` for PPO, RLOO and SB3 (its initial value with ``kl_target``); the
    beta of GRPO's k3 loss term; the beta of DPO and KTO."""
    kl_target: float | None = None
    """Adapt the env's KL penalty towards this sequence KL (nats; Ziegler et al. 2019's controller,
    ``textenv.kl.KLPenalty``); None = a fixed beta. Only where the KL is the env's penalty (PPO, RLOO, SB3)."""
    kl_horizon: float = 10_000
    """Horizon of the adaptive KL controller, in episodes (the paper's 10,000)."""
    num_envs: int = 32
    """Env rows per RL iteration (GRPO/RLOO: prompts per step = num_envs / group_size)."""
    group_size: int = 8
    """Samples per prompt for GRPO/RLOO."""
    eval_prompts: int = 30
    """Held-out prompts for the oracle score (at most the size of the test split)."""
    eval_samples: int = 4
    """Completions sampled per held-out prompt at each evaluation."""
    eval_every: int = 5
    """Evaluate the oracle score every this many iterations (DPO: steps) for the curves; 0 = only before/after."""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Further fields of the algorithm's own config (e.g. ``{"ppo_epochs": 2}``, ``{"lora": LoraSettings(8)}``; SB3:
    its keyword arguments and ``n_envs``), over the registry's ``settings``."""
    # -- the loop (agents.loop.text.loop): rounds, who labels, and the user's own model and data -----------------
    rounds: int = 1
    """Improve -> label -> refit rounds after the initial labelling; 1 = the offline pipeline (every label on the
    initial policy's completions, then one improvement), more = the online loop (labels spread over rounds, asked
    on the current policy's completions)."""
    initial_label_fraction: float = 0.4
    """With ``rounds > 1``: the share of the labels spent on the initial policy before it trains."""
    label_schedule: str = "constant"
    """With ``rounds > 1``: how the other labels spread over rounds, ``constant`` or ``inverse_time``."""
    selection: str = "random"
    """Which candidate pairs to label: ``random`` or ``disagreement`` (reward ensemble variance; needs
    ``rm_ensemble >= 2``; Christiano et al. 2017, Sec. 2.2.4)."""
    oversample: int = 4
    """Candidate pairs sampled per label wanted when selecting by disagreement."""
    rm_ensemble: int = 1
    """Reward models in the ensemble (each on a bootstrap of the labels when > 1); the policy gets their mean."""
    labeller: str = "teacher"
    """Who labels: ``teacher`` (simulated), ``human`` (people in ``rlhf-gym label --run OUT``; the loop waits),
    ``mixed`` (``human_fraction`` of each batch to people, the rest to the teacher) or ``dataset`` (the pairs of
    ``preferences``, no completions sampled for labelling)."""
    human_fraction: float = 0.5
    """With ``labeller="mixed"``: the share of each batch of pairs that people label."""
    label_timeout: float | None = None
    """Seconds to wait for people per batch (None = as long as it takes); unlabelled pairs then count as skipped."""
    model: str | None = None
    """Policy: a Hugging Face causal LM id or local directory; None = the offline default LM."""
    tokenizer: str | None = None
    """Tokenizer id or directory; None = the model's own."""
    prompts: str | None = None
    """Prompt file (.txt, one per line; .jsonl with a prompt field) or dataset directory; None = the default LM's
    prompts (required with ``model``)."""
    preferences: str | None = None
    """Preference file (.jsonl: TRL standard, conversational or implicit-prompt; this toolkit's pairs) or dataset
    directory. With ``labeller="dataset"`` it is what is labelled; with any other labeller its pairs join the
    labels gathered online."""
    reward_fns: list[str] = dataclasses.field(default_factory=list)
    """Reward functions added to the learned reward, as ``module:function`` or ``path/to/file.py:function`` (TRL's
    convention: ``f(prompts=, completions=, **columns)`` with the prompt file's other columns, e.g. a reference
    answer; or this toolkit's ``f(prompts, responses)``); ``textenv.reward_functions``."""
    reward_weights: list[float] | None = None
    """One weight per reward function (default: all 1)."""
    sft_data: str | None = None
    """Demonstrations (TRL SFT formats, ``agents.llm.sft``) to fine-tune the model on first (the SFT stage, in
    ``OUT/sft/``); the RL stage then starts from the SFT model, which is also its reference. None = no SFT stage."""
    sft_epochs: int = 3
    """SFT passes over the demonstrations."""
    sft_learning_rate: float = 2e-5
    """SFT learning rate."""
    environment: str | None = None
    """An environment that answers (multi-turn episodes, ``textenv.conversation``): ``"gem:<id>"``,
    ``"textarena:<id>"``, ``"openenv:<url>"`` or ``"module:Class"`` (``textenv.environments``). Its first observations
    are the prompts (``prompts`` must be None); pairs are two conversations of the same task (environment seed); the
    teacher judges them by the environment's return, the gold of every evaluation; ``max_new_tokens`` is each
    episode's token budget. ``preferences`` may hold earlier conversation pairs (a run's ``pairs.jsonl``, or
    ``rlhf-gym label --export-text``): the conversations as the policy read them."""
    max_turn_tokens: int | None = None
    """With ``environment``: the policy's tokens per turn (None: the whole budget)."""
    environment_reward: float = 0.0
    """With ``environment``: the weight of the environment's rewards in the policy's reward. 0 (RLHF): the policy
    learns from the reward model only, the environment's rewards reach it through the teacher's labels; 1: both."""
    progress_bar: bool | None = None
    """Show a tqdm bar over the rounds; None = only when stderr is a terminal."""

    def __post_init__(self) -> None:
        check(self.algo in TEXT_ALGORITHMS,
              f"algo must be one of {', '.join(sorted(TEXT_ALGORITHMS))}, got {self.algo!r}")
        for name in _COUNTS:
            check_number(name, getattr(self, name), low=1, integer=True)
        check_number("seed", self.seed, low=0, high=2**32 - 1, integer=True)
        check_number("teacher_repetition_penalty", self.teacher_repetition_penalty, low=0)
        check_number("num_pairs", self.num_pairs, low=0, integer=True, hint="0 = no labels: reward functions or KTO "
                     "on unpaired examples train the policy")
        self.reward_functions()  # imports them: a misspelt module or name fails here, before the run
        check(self.num_pairs > 0 or bool(self.reward_fns) or self._unpaired_kto(), "num_pairs=0 (no labels) needs "
              "reward functions (--reward-fn), or KTO on unpaired examples (--algo kto --preferences FILE of "
              "prompt/completion/label)")
        check_number("sft_epochs", self.sft_epochs, low=1, integer=True)
        check_number("sft_learning_rate", self.sft_learning_rate, low=0, low_open=True)
        check_number("max_prompt_tokens", self.max_prompt_tokens, low=1, integer=True, none_ok=True,
                     hint="None = the longest prompt of the run")
        check_number("eval_every", self.eval_every, low=0, integer=True, hint="0 = only before and after")
        check_number("temperature", self.temperature, low=0, low_open=True)
        check_number("rm_val_fraction", self.rm_val_fraction, low=0, high=1, high_open=True)
        check(isinstance(self.teacher_beta, (int, float)) and not math.isnan(self.teacher_beta)
              and self.teacher_beta >= 0, f"teacher_beta must be >= 0 (inf = a perfect teacher), got "
              f"{self.teacher_beta!r}")
        for name in ("learning_rate", "rm_learning_rate"):
            check_number(name, getattr(self, name), low=0, low_open=True)
        self.check_labelling(LABELLERS)
        self.check_run()
        check(self.labeller != "dataset" or self.preferences is not None,
              "labeller='dataset' labels from a preference file: pass preferences=FILE (--preferences)")
        check(self.model is None or self.prompts is not None or self.environment is not None,
              "a model of your own needs prompts of your own: pass prompts=FILE (--prompts)")
        if self.environment is not None:
            self._check_environment()
        else:
            check(self.max_turn_tokens is None and self.environment_reward == 0, "max_turn_tokens and "
                  "environment_reward are settings of a run on an environment: pass environment=... too")
        check(self.iterations >= self.rounds, f"iterations={self.iterations} must be >= rounds={self.rounds} (each "
                                              "round improves the policy at least once); raise iterations")
        if self.selection == "disagreement":
            check(self.rm_ensemble >= 2 and not self.algorithm.offline,
                  "selection='disagreement' needs a reward ensemble: set rm_ensemble >= 2 (and an RL algo, not "
                  f"{self.algo}), or use selection='random'")
        check(self.kl_target is None or self.algorithm.kl is None,
              f"kl_target adapts the env's KL penalty; {self.algo} puts kl_coef in its loss ({self.algorithm.kl}): "
              "drop kl_target")
        if self.algorithm.kl is None:
            self.kl_penalty()  # validates kl_coef, kl_target, kl_horizon
        if self.sft_data is not None:
            self.sft_run_config()  # validates the SFT stage's settings
        self.agent_config()  # validates the algorithm's settings (its kl field, extra) where the algorithm defines them
        self.loop_config()  # validates the loop's settings (rounds, schedule, selection) where the loop defines them
        check_device(self.device)  # DeviceError (a RunError: one line, rc 2 in the CLI)

    def _check_environment(self) -> None:
        """The settings of a run on an environment that answers (``environment``)."""
        from textenv.environments.factory import make_environment_factory

        check(isinstance(self.environment, str) and bool(self.environment.strip()),
              f"environment must be a spec string (gem:<id>, textarena:<id>, openenv:<url>, module:Class), got "
              f"{self.environment!r}")
        make_environment_factory(self.environment)  # an unknown spec or a missing package fails here, before the run
        check(self.prompts is None, "an environment gives the prompts (its first observations): drop --prompts")
        check(not self.algorithm.offline, f"{self.algo} trains on the text of whole responses, which in a "
              "conversation holds the environment's turns too: use ppo, grpo, rloo, sb3-ppo, sb3-a2c or bon")
        check_number("max_turn_tokens", self.max_turn_tokens, low=1, integer=True, none_ok=True,
                     hint="the policy's tokens per turn; None = the whole budget")
        check_number("environment_reward", self.environment_reward, low=0,
                     hint="0 = the policy learns from the reward model only")

    def _unpaired_kto(self) -> bool:
        from rewardmodels.text.preferences import is_unpaired

        return self.algo == "kto" and self.preferences is not None and is_unpaired(self.preferences)

    def reward_functions(self) -> list:
        """The functions ``reward_fns`` names, imported (``RewardSpecError`` names what is wrong)."""
        from textenv.reward_functions import load_reward_function

        check(self.reward_weights is None or len(self.reward_weights) == len(self.reward_fns),
              f"{len(self.reward_weights or [])} reward weights for {len(self.reward_fns)} reward functions: give one "
              "weight per --reward-fn")
        return [load_reward_function(spec) for spec in self.reward_fns]

    def sft_run_config(self) -> Any:
        """The SFT stage's settings (``agents.loop.text.sft.SFTRunConfig``): the run's model, data and seed; its
        memory settings (LoRA, checkpointing) from ``extra``."""
        from agents.loop.text.sft import SFTRunConfig

        memory = {k: v for k, v in self.extra.items()
                  if k in ("lora", "gradient_checkpointing", "gradient_accumulation_steps", "bf16")}
        return SFTRunConfig(data=self.sft_data, model=self.model, tokenizer=self.tokenizer, epochs=self.sft_epochs,
                            learning_rate=self.sft_learning_rate, seed=self.seed, device=self.device, extra=memory)

    @property
    def algorithm(self) -> TextAlgorithm:
        """This run's registry entry."""
        return TEXT_ALGORITHMS[self.algo]

    @property
    def step_unit(self) -> str:
        """What one step of the loop's budget is: an RL iteration, or an epoch of DPO / KTO over the pairs."""
        return "epoch" if self.algorithm.offline else "iteration"

    def agent_config(self) -> Any:
        """The algorithm's own config for one improvement step of this run (built, hence validated): the registry's
        ``settings``, then the run's learning rate, iterations (DPO / KTO: epochs), seed, group shape and, where the
        algorithm takes it in its loss, ``kl_coef``, then ``extra``. For SB3, the keyword arguments (and ``n_envs``)."""
        algorithm = self.algorithm
        if algorithm.kind == "sb3":
            return _sb3_settings(algorithm, self.extra)
        if algorithm.kind == "bon":  # nothing trains
            check(not self.extra, f"best-of-n trains nothing: extra settings {sorted(self.extra)} do not apply")
            return None
        config_class = algorithm.agent_class().config_class
        names = {f.name for f in dataclasses.fields(config_class)}
        fields: dict[str, Any] = {"learning_rate": self.learning_rate, "seed": self.seed,
                                  "epochs" if algorithm.offline else "iterations": self.iterations}
        if "group_size" in names:
            check_number("group_size", self.group_size, low=1, integer=True)  # before the modulo below divides by it
            check(self.num_envs % self.group_size == 0,
                  f"num_envs={self.num_envs} must be a multiple of group_size={self.group_size}")
            fields.update(group_size=self.group_size, prompts_per_step=self.num_envs // self.group_size)
        if algorithm.kl is not None:
            fields[algorithm.kl] = self.kl_coef
        fields = {**algorithm.settings, **fields, **self.extra}
        unknown = sorted(set(fields) - names)
        check(not unknown, f"{', '.join(unknown)}: not a setting of {config_class.__name__} ({self.algo}); its "
                           f"settings: {', '.join(sorted(names))}", TypeError)
        try:
            return config_class(**fields)
        except ValueError as err:  # the value the user gave is kl_coef: say so
            if algorithm.kl is not None and str(err).startswith(algorithm.kl):
                raise ValueError(f"kl_coef (= {self.algo}'s {algorithm.kl}): {err}") from err
            raise

    def kl_penalty(self) -> KLPenalty:
        """The env's KL penalty of this run: ``kl_coef`` (adaptive towards ``kl_target``) where the algorithm takes
        the KL as the env's penalty, else none (its ``kl_coef`` goes to the loss: ``TextAlgorithm.kl``)."""
        if self.algorithm.kl is not None:
            return KLPenalty(0.0)
        return KLPenalty(self.kl_coef, self.kl_target, self.kl_horizon)

    def loop_config(self) -> LoopConfig:
        """The budgets of ``agents.loop.preference_loop.PreferenceLoop`` for this run. A step is one improvement
        iteration (``step_unit``) and the initial labelling counts as one; the labels of round r are used by the
        improvements of rounds r+1..R, so the last round asks for none."""
        online = self.rounds > 1
        return LoopConfig(
            labels=self.num_pairs, steps=self.iterations + 1, rounds=self.rounds, initial_steps=1,
            initial_policy="agent", initial_label_fraction=self.initial_label_fraction if online else 1.0,
            label_schedule=self.label_schedule, label_until=(self.rounds - 1) / self.rounds if online else 1.0,
            selection=self.selection, oversample=self.oversample, eval_episodes=1, round_eval_episodes=1,
            eval_every=0, seed=self.seed, progress_bar=self.progress_bar,  # the agent evaluates itself (eval_every)
        )

    @classmethod
    def for_algo(cls, algo: str, **overrides: Any) -> TextRLHFConfig:
        """The config with the registry's defaults of ``algo`` applied, then ``overrides``."""
        defaults = TEXT_ALGORITHMS[algo].defaults if algo in TEXT_ALGORITHMS else {}
        return cls(algo=algo, **{**defaults, **overrides})

    @classmethod
    def migrate(cls, values: dict[str, Any], saved: dict[str, Any]) -> dict[str, Any]:
        """``RunConfig.migrate``: JSON has no inf (``teacher_beta`` is stored as "inf")."""
        values["teacher_beta"] = float(values.get("teacher_beta", math.inf))
        return values


def _sb3_settings(algorithm: TextAlgorithm, extra: dict[str, Any]) -> dict[str, Any]:
    """The SB3 keyword arguments (and ``n_envs``) of an ``sb3`` algorithm: the registry's, then ``extra``; unknown
    names are refused here, before the run starts."""
    import inspect

    from agents.sb3.text_policy import SB3_TEXT_CLASSES

    settings = {**algorithm.settings, **extra}
    accepted = set(inspect.signature(SB3_TEXT_CLASSES[algorithm.agent]).parameters) - {"policy", "env", "self"}
    unknown = sorted(set(settings) - accepted - {"n_envs"})
    check(not unknown, f"{', '.join(unknown)}: not a keyword argument of SB3's {algorithm.agent.upper()} (nor n_envs)",
          TypeError)
    check_number("n_envs", settings.get("n_envs", 1), low=1, integer=True)
    return settings
