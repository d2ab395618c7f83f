"""The online preference loop of Christiano et al. 2017 (arXiv:1706.03741), for any env and any agent.

One round (read top to bottom in ``PreferenceLoop.run``)::

    agent.learn(steps)                    improve the policy on the current learned reward (its experience is kept)
    source.candidates(k * oversample)     cut candidate pairs (segments | completions) from recent experience
    reward_model.select(...)              keep k: at random, or where the ensemble disagrees most (paper Sec. 2.2.4)
    source.label(labeller, pairs)         ask the labeller (simulated teacher | person | dataset)
    reward_model.fit(dataset)             Bradley-Terry on every label so far
    agent.set_reward_fn(...)              new reward for the agent (off-policy agents relabel their buffer: PEBBLE)

Round 0 labels pairs from an initial collection (a random policy, the untrained agent, or the agent learning on an
intrinsic reward first: PEBBLE's unsupervised pre-training, an ``Explorer``), so that the agent never trains on an
unfitted reward. Labels follow a schedule over env steps (``constant`` or the paper's c/(t+c) rate), front
loaded: early labels shape the reward the agent learns most from.

Nothing here knows about control envs: the four parts are protocols (``Agent``, ``PairSource``, ``RewardModel``,
``Labeller``). For control envs, ``agents.loop.control.run.build_loop`` plugs in Stable-Baselines3 (``agents.sb3``), the
segment pair sources (``segment_pairs``, ``frame_pairs``) and the reward ensemble (``reward_model``); a text env with
an LLM agent plugs in by implementing the same four.

Logged every round (``RunDir.log`` with the env steps as the step: TensorBoard, metrics.jsonl, console):
``eval/true_return`` (the policy on the TRUE reward), ``agent/true_ep_return`` (training episodes, true reward),
``reward_model/accuracy`` (fit on all labels), ``reward_model/heldout_accuracy`` (the new labels, before the model
is fitted on them), ``reward_model/true_agreement`` (unlabelled candidates, against the true returns),
``labels/used``, ``env/steps``, ``time/wall_s``; ``curves.png`` plots the first five and the labels used
against env steps (labels stop early by design; the training after them stays visible).

Checkpoints (``RunDir.checkpoints/round-NNNN/``, each written as a whole directory, then committed by ``latest.json``;
the one before stays, so a damaged latest has a fallback) hold the labelled pairs, the reward model, the agent, the
collector's experience, the loop state, RNG states and the config. Before it waits for people (a labeller with
``needs_media``), the loop also saves ``round-NNNN-labelling/`` with the pairs it queued: stopped there (Ctrl-C,
SIGTERM, even kill -9), a resumed run asks for the same pairs and finds the labels people gave meanwhile.
``PreferenceLoop.resume`` continues to the same budgets with every label kept; ``run(resume=True)`` first cuts
metrics.jsonl back to what it held when that checkpoint was saved (the rounds after it are run, and logged, again).
``run`` holds the run directory's lock (``agents.rundir.lock_run_dir``): a second process on it is refused.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from tqdm.auto import tqdm

from agents.rundir import CheckpointError, RunDir, lock_run_dir, signals_deferred
from rewardmodels.schedules import make_schedule
from textenv.checks import check, check_number
from textenv.files import atomic_directory, atomic_write, write_json

logger = logging.getLogger(__name__)

PENDING_FILE = "pending_pairs.npz"  # pairs queued for people, in a round-NNNN-labelling checkpoint
INITIAL_POLICIES = ("random", "agent", "explore")


# -- the four parts -------------------------------------------------------------------------------------------------
@runtime_checkable
class Agent(Protocol):
    """May also set ``eval_key`` (the metric of ``evaluate``'s mean, default ``eval/true_return``; None: the loop does
    not evaluate the agent, which reports its own evaluation) and ``score_name`` (what ``evaluate`` returns, for the
    log; default ``true return``)."""

    def learn(self, n_steps: int, max_steps: int | None = None) -> Mapping[str, float]: ...  # ~n_steps, <= max
    def set_reward_fn(self, reward_fn: Any) -> int | None: ...  # new learned reward (relabel stored experience)
    def evaluate(self, n_episodes: int) -> np.ndarray: ...  # TRUE returns of the current policy
    def save(self, directory: Path) -> None: ...
    def load(self, directory: Path) -> None: ...


@runtime_checkable
class PairSource(Protocol):
    """Experience -> candidate pairs -> labels. ``env_steps`` counts every env step taken, training included."""

    env_steps: int

    def collect(self, agent: Agent | None, n_steps: int) -> None: ...  # None = a uniformly random policy
    def candidates(self, n_pairs: int, rng: np.random.Generator) -> Any: ...  # unlabelled pairs
    def label(self, labeller: Any, pairs: Any) -> Any: ...  # the same pairs with labels attached
    def true_preferences(self, pairs: Any) -> np.ndarray | None: ...  # P(a > b) under the TRUE reward, for metrics
    def merge(self, dataset: Any | None, pairs: Any) -> Any: ...  # dataset of all labelled pairs
    def save(self, directory: Path, dataset: Any | None) -> None: ...
    def load(self, directory: Path) -> Any | None: ...  # restores experience, returns the dataset


@runtime_checkable
class RewardModel(Protocol):
    def fit(self, dataset: Any) -> Mapping[str, float]: ...
    def preference_probs(self, pairs: Any) -> np.ndarray: ...  # (N,) P(a > b) under the learned reward
    def select(self, candidates: Any, n: int, method: str, rng: np.random.Generator) -> Any: ...
    def reward_fn(self) -> Any: ...  # what the agent's env calls
    def save(self, directory: Path) -> None: ...
    def load(self, directory: Path) -> None: ...


class Labeller(Protocol):
    """Teacher-compatible: ``label(rew_a (B,T), rew_b (B,T), mask_a, mask_b, **media) -> (B,)`` P(a preferred)."""

    def label(self, rew_a: Any, rew_b: Any, mask_a: Any = None, mask_b: Any = None, **media: Any) -> np.ndarray: ...


class Explorer(Protocol):
    """Unsupervised pre-training: ``run(agent, n_steps)`` trains the agent without labels (metrics back)."""

    def run(self, agent: Agent, n_steps: int) -> Mapping[str, float]: ...


class LoopCallback:
    """Hooks of the loop; a hook returning ``False`` stops the run after the current round (as SB3 callbacks do)."""

    def on_start(self, loop: PreferenceLoop) -> bool | None:
        return None

    def on_labels(self, loop: PreferenceLoop, pairs: Any) -> bool | None:
        return None

    def on_round_end(self, loop: PreferenceLoop, metrics: Mapping[str, float]) -> bool | None:
        return None

    def on_end(self, loop: PreferenceLoop, summary: Mapping[str, Any]) -> None:
        return None


# -- budgets and schedule -----------------------------------------------------------------------------------------
@dataclass
class LoopConfig:
    """Budgets and schedule of the preference loop (``agents.loop.preference_loop.PreferenceLoop``)."""

    labels: int = 150
    """Preference-label budget of the whole run (0: no reward learning; the agent's reward is given)."""
    steps: int = 50_000
    """Env-step budget of the whole run (initial collection + training)."""
    rounds: int = 24
    """Learn -> label -> fit rounds after round 0."""
    initial_label_fraction: float = 0.4
    """Share of the labels spent in round 0, on the initial collection, before the agent trains."""
    initial_steps: int = 2_000
    """Env steps of the initial collection (counted in ``steps``)."""
    initial_policy: str = "random"
    """Who acts in the initial collection: ``random`` (uniform actions), ``agent`` (the untrained agent), or
    ``explore`` (the agent, learning for ``initial_steps`` on an intrinsic reward: PEBBLE's unsupervised
    pre-training, Lee et al. 2021; needs the loop's ``explorer``, e.g. ``agents.loop.control.explore``)."""
    label_schedule: str = "inverse_time"
    """How the other labels spread over rounds: ``constant`` or ``inverse_time`` (rate c/(t+c), Christiano App. A)."""
    schedule_c: float = 0.3
    """c of the inverse-time schedule as a fraction of the labelling horizon (smaller = more front-loaded)."""
    schedule_c_steps: float | None = None
    """c of the inverse-time schedule in env steps, the paper's form (2e6 MuJoCo A.1, 5e6 Atari A.2); when set it
    replaces ``schedule_c``."""
    label_until: float = 0.8
    """No labels are asked after this fraction of the rounds (the last rounds only polish the policy)."""
    selection: str = "disagreement"
    """Query selection: ``random`` or ``disagreement`` (ensemble variance over oversampled candidates)."""
    oversample: int = 10
    """Candidates drawn per label wanted when selecting by disagreement (the paper draws 10x, 2.2.4)."""
    eval_episodes: int = 20
    """Episodes of the final evaluation on the TRUE reward."""
    eval_every: int = 4
    """Evaluate the policy every this many rounds (0 = final evaluation only), on ``round_eval_episodes``."""
    round_eval_episodes: int = 5
    """Episodes of each in-run evaluation (the curve of true return against labels)."""
    seed: int = 0
    """Seeds everything of the run: the loop's RNG (pair sampling, selection), torch, the agent, the envs, the
    reward ensemble and the teacher."""
    progress_bar: bool | None = None
    """Show a tqdm bar; None = only when stderr is a terminal."""

    def loop_config(self) -> LoopConfig:
        """The budgets the loop runs to: this config itself (a run config that derives them overrides this)."""
        return self

    def __post_init__(self) -> None:
        for count in ("steps", "rounds", "oversample", "eval_episodes", "round_eval_episodes"):
            check_number(count, getattr(self, count), low=1, integer=True)
        check_number("labels", self.labels, low=0, integer=True, hint="0 = no reward learning (a run whose reward "
                     "is given, e.g. verifiable reward functions)")
        check_number("seed", self.seed, low=0, high=2**32 - 1, integer=True)
        check_number("initial_label_fraction", self.initial_label_fraction, low=0, high=1)
        check_number("initial_steps", self.initial_steps, low=0, high=self.steps, high_open=True, integer=True,
                     hint="lower it or raise steps")
        check(self.initial_policy in INITIAL_POLICIES,
              f"initial_policy must be one of {', '.join(INITIAL_POLICIES)}, got {self.initial_policy!r}")
        if self.initial_policy == "explore":  # else the agent would train on the intrinsic reward in round 1
            check(self.initial_steps > 0 and round(self.labels * self.initial_label_fraction) > 0,
                  "initial_policy='explore' pre-trains for initial_steps and then asks the first labels: set "
                  "initial_steps > 0 and initial_label_fraction so that labels * initial_label_fraction >= 1")
        check(self.label_schedule in ("constant", "inverse_time"),
              f"label_schedule must be 'constant' or 'inverse_time', got {self.label_schedule!r}")
        check_number("schedule_c", self.schedule_c, low=0, low_open=True)
        check_number("schedule_c_steps", self.schedule_c_steps, low=0, low_open=True, none_ok=True)
        check_number("label_until", self.label_until, low=0, high=1, low_open=True)
        check(self.selection in ("random", "disagreement"),
              f"selection must be 'random' or 'disagreement', got {self.selection!r}")
        check_number("eval_every", self.eval_every, low=0, integer=True, hint="0 = the final evaluation only")
        if self.initial_steps == 0:
            check(self.initial_policy == "agent" or self.initial_label_fraction == 0.0,
                  "initial_steps=0 leaves nothing to label in round 0: set initial_steps > 0 or "
                  "initial_label_fraction=0")

    @property
    def steps_per_round(self) -> int:
        return max(1, (self.steps - self.initial_steps) // self.rounds)

    @property
    def labelled_rounds(self) -> int:
        """Rounds 1..this one ask for labels (``label_until`` of the rounds)."""
        return max(1, int(np.ceil(self.rounds * self.label_until)))


def label_allocation(cfg: LoopConfig) -> list[int]:
    """Labels per round (index 0 = the initial round), summing exactly to ``labels``.

    Round r >= 1 asks for the labels that ``rewardmodels.schedules`` says are due by its env step; the schedule runs
    over the training steps up to ``label_until`` of the rounds, so the last rounds spend no labels.
    """
    initial = round(cfg.labels * cfg.initial_label_fraction) if cfg.initial_steps > 0 else 0
    last = cfg.labelled_rounds  # rounds 1..last get labels
    horizon = cfg.steps_per_round * last
    c = cfg.schedule_c_steps if cfg.schedule_c_steps is not None else cfg.schedule_c * horizon
    kwargs = {"c": c} if cfg.label_schedule == "inverse_time" else {}
    schedule = make_schedule(cfg.label_schedule, cfg.labels - initial, horizon, **kwargs)
    due = [int(schedule.labels_due(cfg.steps_per_round * r)) for r in range(last + 1)]
    return [initial] + np.diff(due).tolist() + [0] * (cfg.rounds - last)


# -- the loop -------------------------------------------------------------------------------------------------------
@dataclass
class LoopState:
    round: int = -1  # last completed round (-1 = none yet)
    labels_used: int = 0
    env_steps: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    allocation: list[int] = field(default_factory=list)


class PreferenceLoop:
    """Drives agent, pair source, reward model and labeller through ``LoopConfig``'s budgets (see module doc)."""

    def __init__(self, config: Any, agent: Agent, source: PairSource, reward_model: RewardModel,
                 labeller: Labeller, run_dir: RunDir | str | Path,
                 callbacks: Sequence[LoopCallback] = (), title: str | None = None, report: bool = True,
                 explorer: Explorer | None = None):
        # config: the run config (``agents.loop.config``: PrefsConfig, TextRLHFConfig) or a bare LoopConfig
        self.run_config, self.config = config, config.loop_config()
        check(self.config.initial_policy != "explore" or explorer is not None,
              "initial_policy='explore' needs an explorer (this world has none: use 'random' or 'agent')")
        self.explorer = explorer
        self.agent, self.source, self.reward_model, self.labeller = agent, source, reward_model, labeller
        self.run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.callbacks = list(callbacks)
        self.title = title
        self.report = report  # False: the caller writes summary.json and curves.png itself (the text run)
        self.eval_key: str | None = getattr(agent, "eval_key", "eval/true_return")
        config = self.config
        self.rng = np.random.default_rng(config.seed)
        torch.manual_seed(config.seed)
        self.state = LoopState(allocation=label_allocation(config))
        self.dataset: Any = None
        self._stop = False
        self._pending: tuple[Any, dict[str, float]] | None = None  # pairs (and the round's metrics) awaiting labels
        self._checkpoint: str | None = None  # the last checkpoint saved or resumed from
        self._metrics_bytes: int | None = None  # metrics.jsonl's length when the resumed checkpoint was saved

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def _config_record(self) -> dict[str, Any]:
        """What config.json holds: the run config (what ``RunConfig.load`` reads back), the loop's budgets when they
        are derived from it, and the run's title."""
        record: dict[str, Any] = {"config": self.run_config, "title": self.title}
        if self.config is not self.run_config:
            record["loop"] = self.config
        return record

    def save_checkpoint(self, pending: tuple[Any, Mapping[str, float]] | None = None) -> Path:
        """Save ``checkpoints/round-NNNN`` (after round NNNN), or with ``pending`` = (pairs, metrics) queued for
        labels in round NNNN, ``round-NNNN-labelling``; make it the latest and keep the one before it. The directory
        appears whole or not at all, and Ctrl-C / SIGTERM wait until it is committed."""
        name = (f"round-{self.state.round:04d}" if pending is None else f"round-{self.state.round + 1:04d}-labelling")
        ckpt = self.run_dir.checkpoints / name
        saved: dict[str, Any] = {"loop": asdict(self.state), "rng": self.rng.bit_generator.state,
                                 "labeller_rng": {k: g.bit_generator.state for k, g in _rngs(self.labeller).items()},
                                 "metrics_bytes": self.run_dir.metrics_size()}
        with signals_deferred(), atomic_directory(ckpt) as tmp:
            self.source.save(tmp, self.dataset)
            self.reward_model.save(tmp)
            self.agent.save(tmp)
            if pending is not None:
                pairs, metrics = pending
                pairs.save(tmp / PENDING_FILE)
                saved["pending"] = {"class": f"{type(pairs).__module__}:{type(pairs).__qualname__}",
                                    "metrics": dict(metrics)}
            write_json(tmp / "state.json", saved)
            rng_state = {"torch": torch.get_rng_state()}  # SB3 samples actions with torch
            atomic_write(tmp / "rng.pt", lambda f: torch.save(rng_state, f))
            write_json(tmp / "config.json", self._config_record())  # a copy: config.json can be restored from it
        with signals_deferred():
            self.run_dir.commit_checkpoint(name, previous=self._checkpoint)
        self._checkpoint = name
        return ckpt

    def resume(self) -> bool:
        """Load the newest checkpoint of ``run_dir`` that loads (a damaged latest one is skipped, with a warning,
        for the one before it); False when the run has none. Raises ``CheckpointError`` when none loads."""
        problems = []
        candidates = self.run_dir.checkpoint_candidates()
        for i, ckpt in enumerate(candidates):
            try:
                self._load_checkpoint(ckpt)
            except Exception as err:  # noqa: BLE001 - whatever is wrong with its files, an older checkpoint may load
                reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
                logger.warning("checkpoint %s cannot be loaded (%s)%s", ckpt, reason,
                               "; trying an older one" if i + 1 < len(candidates) else "")
                logger.debug("loading %s failed", ckpt, exc_info=True)
                problems.append(f"{ckpt.name} ({reason})")
                continue
            if problems:
                logger.warning("resumed from the older checkpoint %s: the work after it is done again", ckpt.name)
            logger.info("resumed %s after round %d: %d labels, %d env steps%s", self.run_dir.path, self.state.round,
                        self.state.labels_used, self.state.env_steps,
                        ", waiting for labels of the next round" if self._pending else "")
            return True
        if problems:
            raise CheckpointError(f"no checkpoint of {self.run_dir.path} can be loaded: {'; '.join(problems)}. "
                                  "Restore the damaged files, or start a new run (--overwrite moves this one aside)")
        return False

    def _load_checkpoint(self, ckpt: Path) -> None:
        saved = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
        state = LoopState(**saved["loop"])
        rng = torch.load(ckpt / "rng.pt", weights_only=True)["torch"]
        pending = None
        if "pending" in saved:
            pending = (_pairs_class(saved["pending"]["class"]).load(ckpt / PENDING_FILE),
                       dict(saved["pending"]["metrics"]))
        dataset = self.source.load(ckpt)
        self.reward_model.load(ckpt)
        self.agent.load(ckpt)
        self.rng.bit_generator.state = saved["rng"]
        labeller_rngs = _rngs(self.labeller)  # e.g. which pairs MixedLabeller gives people: the same ones again
        for key, rng_state in saved.get("labeller_rng", {}).items():
            if key in labeller_rngs:
                labeller_rngs[key].bit_generator.state = rng_state
        self.state, self.dataset, self._pending, self._checkpoint = state, dataset, pending, ckpt.name
        self._metrics_bytes = saved.get("metrics_bytes")  # None: a checkpoint of rlhf-gym <= 0.3
        self.agent.set_reward_fn(self.reward_model.reward_fn())
        torch.set_rng_state(rng)  # last: whatever the steps above drew, the run continues from the saved state

    # -- one labelling step ----------------------------------------------------------------------------------------
    def _select(self, n_labels: int, selection: str, metrics: dict[str, float]) -> Any:
        cfg = self.config
        n_candidates = n_labels * (cfg.oversample if selection == "disagreement" else 1)
        candidates = self.source.candidates(n_candidates, self.rng)
        if self.dataset is not None:  # the current model on pairs it never saw: held-out agreement with the truth
            truth = self.source.true_preferences(candidates)
            if truth is not None:
                decided = truth != 0.5
                if decided.any():
                    probs = self.reward_model.preference_probs(candidates)
                    agree = (probs[decided] > 0.5) == (truth[decided] > 0.5)
                    metrics["reward_model/true_agreement"] = float(agree.mean())
        return self.reward_model.select(candidates, n_labels, selection, self.rng)

    def _label_and_fit(self, n_labels: int, selection: str, metrics: dict[str, float]) -> dict[str, float]:
        """Select pairs, label them, fit the reward model; ``metrics`` (the round's so far) are updated in place."""
        if self._pending is not None:  # resumed while waiting for people: the same pairs, queued already
            pairs, saved_metrics = self._pending
            metrics.update(saved_metrics)
        else:
            pairs = self._select(n_labels, selection, metrics)
            if getattr(self.labeller, "needs_media", False) and hasattr(pairs, "save"):
                # people label (HumanLabeller, MixedLabeller), maybe for hours: a stop while they do loses nothing
                self._pending = (pairs, dict(metrics))
                self.save_checkpoint(pending=self._pending)
        pairs = self.source.label(self.labeller, pairs)
        self._pending = None
        labels = np.asarray(pairs.labels, dtype=np.float64)
        used = ~np.isnan(labels)
        if self.dataset is not None and used.any():
            probs = self.reward_model.preference_probs(pairs)[used]
            decided = labels[used] != 0.5
            if decided.any():
                metrics["reward_model/heldout_accuracy"] = float(  # labels the model has not been fitted on
                    ((probs[decided] > 0.5) == (labels[used][decided] > 0.5)).mean())
        for cb in self.callbacks:
            if cb.on_labels(self, pairs) is False:
                self._stop = True
        self.state.labels_used += len(labels)
        metrics["labels/skipped"] = float((~used).sum())
        if not used.any():  # people labelled none in time (--label-timeout): skipped, as documented, not a crash
            logger.warning("none of this batch's %d pairs was labelled (skipped, or nobody labelled them in time): "
                           "the reward model keeps its previous fit", len(labels))
            return metrics
        self.dataset = self.source.merge(self.dataset, pairs)
        fit_metrics = self.reward_model.fit(self.dataset)
        metrics.update({k if "/" in k else f"reward_model/{k}": float(v) for k, v in fit_metrics.items()})
        self._tell_people(metrics.get("reward_model/heldout_accuracy"))
        relabelled = self.agent.set_reward_fn(self.reward_model.reward_fn())
        if relabelled:
            metrics["agent/relabelled"] = float(relabelled)
        return metrics

    def _tell_people(self, agreement: float | None) -> None:
        """People who label see how the run goes (``post_status`` of a human labeller: the labelling page): the
        labels so far and how often the reward model agreed with their last batch before it saw it, the
        over-optimisation signal people can watch (it falls as the policy exploits the model)."""
        post = getattr(self.labeller, "post_status", None)
        if post is None:
            return
        text = f"Round {self.state.round + 1}: {self.state.labels_used} labels so far."
        if agreement is not None:
            text += (f" Before it saw your last labels, the reward model agreed with {agreement:.0%} of them (falling "
                     "agreement: the policy is exploiting the reward model).")
        post(text)

    # -- run -------------------------------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict[str, Any]:
        """Run to the budgets (continuing from the latest checkpoint when ``resume``); returns the summary.

        Ctrl-C / SIGTERM (a KeyboardInterrupt) stop it where it is; the last checkpoint (the previous round's, or the
        one saved before waiting for people) is what ``resume`` continues from."""
        with lock_run_dir(self.run_dir.path):  # one process per run directory (re-entered under the CLI's hold)
            resumed = resume and self.resume()
            if resumed and self._metrics_bytes is not None:  # the rows of rounds done after it are done again
                self.run_dir.cut_metrics(self._metrics_bytes)
            if not resumed or not _readable_json(self.run_dir.path / "config.json"):
                self.run_dir.write_config(self._config_record())  # on resume: repairs a damaged config.json
            return self._run_rounds()

    def _run_rounds(self) -> dict[str, Any]:
        cfg = self.config
        start = time.perf_counter() - self.state.wall_s
        cpu_start = time.process_time() - self.state.cpu_s
        for cb in self.callbacks:
            if cb.on_start(self) is False:
                self._stop = True
        bar = self._progress_bar()
        try:
            while self.state.round < cfg.rounds and not self._stop:
                metrics = self._play_round(self.state.round + 1)
                self.state.wall_s = time.perf_counter() - start
                self.state.cpu_s = time.process_time() - cpu_start
                metrics["time/wall_s"] = self.state.wall_s
                self.run_dir.log(self.state.env_steps, metrics)  # x: env steps; labels used is a curve
                self._console(metrics)
                for cb in self.callbacks:
                    if cb.on_round_end(self, metrics) is False:
                        self._stop = True
                self.save_checkpoint()
                if bar is not None:
                    bar.update(self.state.env_steps - bar.n)
                    bar.set_postfix(labels=self.state.labels_used, ret=metrics.get("eval/true_return"))
        except BaseException:  # Ctrl-C, SIGTERM, a crash: flush TensorBoard's files and stop its writer thread
            self.run_dir.close()
            raise
        finally:
            if bar is not None:
                bar.close()
        return self._finish(time.perf_counter() - start, time.process_time() - cpu_start)

    def _play_round(self, r: int) -> dict[str, float]:
        """Round ``r``: learn (round 0: the initial collection), label and fit, evaluate; returns its metrics."""
        cfg = self.config
        metrics: dict[str, float] = {}
        if self._pending is None:  # else resumed while people labelled this round's pairs: it has learned already
            if r == 0 and cfg.initial_policy == "explore":
                metrics.update(self.explorer.run(self.agent, cfg.initial_steps))
            elif r == 0:
                if cfg.initial_steps > 0:
                    self.source.collect(self.agent if cfg.initial_policy == "agent" else None, cfg.initial_steps)
            else:  # the last round takes whatever budget is left; no round overshoots the budget
                left = cfg.steps - self.source.env_steps
                n_steps = min(cfg.steps_per_round, left) if r < cfg.rounds else left
                if n_steps > 0:
                    metrics.update(self.agent.learn(n_steps, max_steps=left))
        n_labels = self.state.allocation[r] if r < len(self.state.allocation) else 0
        if n_labels > 0:  # round 0 has no model to measure disagreement with
            selection = cfg.selection if self.dataset is not None else "random"
            self._label_and_fit(n_labels, selection, metrics)
        self.state.round = r
        self.state.env_steps = self.source.env_steps
        if self.eval_key and r > 0 and cfg.eval_every and (r % cfg.eval_every == 0 or r == cfg.rounds):
            metrics[self.eval_key] = float(np.mean(self.agent.evaluate(cfg.round_eval_episodes)))
        metrics.update({"labels/used": self.state.labels_used, "env/steps": self.state.env_steps})
        return metrics

    def _finish(self, wall_s: float, cpu_s: float) -> dict[str, Any]:
        cfg = self.config
        finished = self.state.round >= cfg.rounds
        summary: dict[str, Any] = {}
        if self.eval_key:
            returns = self.agent.evaluate(cfg.eval_episodes)
            summary.update(true_return_mean=float(np.mean(returns)), true_return_std=float(np.std(returns)),
                           eval_episodes=len(returns))
        summary.update({
            "labels_used": int(self.state.labels_used),
            "env_steps": int(self.source.env_steps),
            "wall_s": float(wall_s),
            "cpu_s": float(cpu_s),  # this process's CPU time: wall-clock on a shared machine overstates the cost
            "rounds": int(self.state.round),
            "finished": finished,
        })
        if self.report:
            self.run_dir.write_summary(summary)
            self.run_dir.plot([("true return", ["eval/true_return", "agent/true_ep_return"]),
                               ("reward model", ["reward_model/accuracy", "reward_model/heldout_accuracy",
                                                 "reward_model/true_agreement"]),
                               ("labels used", ["labels/used"])],
                              x_key="env/steps", title=self.title)
            self.run_dir.close()
        for cb in self.callbacks:
            cb.on_end(self, summary)
        score = ""
        if self.eval_key:
            score = (f"{getattr(self.agent, 'score_name', 'true return')} {summary['true_return_mean']:.1f} +- "
                     f"{summary['true_return_std']:.1f} over {summary['eval_episodes']} episodes, ")
        logger.info("done: %s%d labels, %d %s, %.0f s", score, summary["labels_used"], summary["env_steps"],
                    getattr(self.source, "step_name", "env steps"), wall_s)
        return summary

    def _console(self, metrics: Mapping[str, float]) -> None:
        keys = ("eval/true_return", "agent/true_ep_return", "reward_model/accuracy", "reward_model/heldout_accuracy",
                "reward_model/true_agreement")
        shown = ", ".join(f"{k}={metrics[k]:.3g}" for k in keys if k in metrics)
        logger.info("round %d/%d: labels %d, steps %d%s", self.state.round, self.config.rounds,
                    self.state.labels_used, self.state.env_steps, f", {shown}" if shown else "")

    def _progress_bar(self):
        show = self.config.progress_bar
        if show is None:
            show = sys.stderr.isatty()
        if not show:
            return None
        return tqdm(total=self.config.steps, initial=self.state.env_steps, unit="step", desc="prefs")


def _readable_json(path: Path) -> bool:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


#: Modules that moved since a checkpoint may have named them (rlhf-gym 0.2's flat text modules).
_MOVED_MODULES = {"rewardmodels.text_preferences": "rewardmodels.text.preferences"}


def _pairs_class(name: str) -> type:
    """The class of checkpointed pending pairs, ``module:QualName``; only the toolkit's own modules are imported."""
    module, _, qualname = name.partition(":")
    module = _MOVED_MODULES.get(module, module)
    if module.split(".")[0] not in ("rewardmodels", "agents", "textenv"):
        raise CheckpointError(f"pending pairs of class {name!r}: not an rlhf-gym class")
    return functools.reduce(getattr, qualname.split("."), importlib.import_module(module))


def _rngs(labeller: Any) -> dict[str, np.random.Generator]:
    """The numpy generators of a labeller and of the labellers inside it (``MixedLabeller``'s teacher), by
    attribute path, so that a checkpoint can hold them: a resumed run then draws what the uninterrupted one would."""
    found: dict[str, np.random.Generator] = {}
    for name, value in vars(labeller).items() if hasattr(labeller, "__dict__") else ():
        if isinstance(value, np.random.Generator):
            found[name] = value
        elif hasattr(value, "__dict__") and not isinstance(value, type):
            found.update({f"{name}.{k}": v for k, v in vars(value).items() if isinstance(v, np.random.Generator)})
    return found
