"""The text world's parts of the one preference loop (``agents.loop.preference_loop``): completion pairs, who labels
them, and the LM reward model.

* ``CompletionPairSource`` (``PairSource``): candidate pairs are two completions of the CURRENT policy for the same
  training prompt, sampled when the loop asks for them, so labels are asked where the policy is (Ziegler et al.
  2019, arXiv:1909.08593, collect labels online from the policy being trained; Christiano et al. 2017).
* ``ConversationPairSource``: the same with an environment that answers: two conversations of the current policy
  with the same task (environment seed); their returns go to a ``ReturnTeacher``, their turns to people.
* ``DatasetPairSource`` (``PairSource``): the next unused pairs of a preference file or dataset, already labelled.
* Labels come from simulated text teachers (``rewardmodels.text.teachers``), people in the web app
  (``rewardmodels.feedback.human.HumanLabeller``) or both (``MixedLabeller``), through
  ``rewardmodels.feedback.human.label_texts``.
* The reward model is the loop's one ``EnsembleRewardModel`` over an ``rewardmodels.text.ensemble.LMRewardEnsemble``
  (built in ``agents.loop.text.loop``). ``PairsAsReward``: DPO / KTO learn from the pairs themselves; their reward is
  implicit (Rafailov et al. 2023, arXiv:2305.18290).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.llm.offline import sequence_logps
from agents.llm.rollout import collect_rollout
from agents.loop.text.context import TextRLHFContext
from rewardmodels.feedback.human import label_texts
from rewardmodels.text.preferences import TextPreferencePairs
from textenv.files import write_json

PAIRS_FILE = "pairs.jsonl"
SOURCE_STATE_FILE = "text_source.json"
REWARD_DIR = "reward_model"


# -- sampling ---------------------------------------------------------------------------------------------------
def sample_completion_pairs(ctx: TextRLHFContext, n_pairs: int, seed: int) -> TextPreferencePairs:
    """``n_pairs`` unlabelled pairs (labels NaN) of completions of ``ctx.policy`` (as it is now) on training prompts.

    Both completions of a pair answer the same prompt (one rollout of a vector env whose rows come in twos). Pairs
    with an empty or identical response carry no preference and are resampled (50 rollouts at most).
    """
    rng = np.random.default_rng(seed)
    rows_per_batch = 2 * min(64, n_pairs)
    env = ctx.make_env(rows_per_batch, None, reference=False)  # the completions only: no reference forward
    gen = torch.Generator(device=ctx.device).manual_seed(seed)
    prompts: list[str] = []
    a: list[str] = []
    b: list[str] = []
    for attempt in range(50):
        chosen = rng.choice(len(ctx.train_prompts), size=rows_per_batch // 2)
        rows = [ctx.train_prompts[i] for i in chosen for _ in range(2)]
        batch = collect_rollout(env, prompts=rows, seed=seed + attempt, generator=gen)
        for i in range(0, rows_per_batch, 2):
            ra, rb = batch.responses[i], batch.responses[i + 1]
            if ra.strip() and rb.strip() and ra.strip() != rb.strip() and len(prompts) < n_pairs:
                prompts.append(rows[i])
                a.append(ra)
                b.append(rb)
        if len(prompts) >= n_pairs:
            break
    if not prompts:
        raise RuntimeError("the policy produced no pair of distinct non-empty completions in 50 rollouts; raise "
                           "max_new_tokens or the temperature")
    return TextPreferencePairs(prompts, a, b, np.full(len(prompts), np.nan, np.float32))


def sample_conversation_pairs(ctx: TextRLHFContext, n_pairs: int, seed: int
                              ) -> tuple[TextPreferencePairs, np.ndarray, list[tuple[list, list]]]:
    """``n_pairs`` unlabelled pairs of conversations of ``ctx.policy`` with the run's environment: both of a pair
    play the same task (one environment seed, two rows). Returns the pairs (prompt = the first observation as the
    policy read it, responses = the conversations after it), their environment returns ``(n, 2)`` and their messages
    (``(messages_a, messages_b)`` per pair). Identical or empty conversations are resampled (50 rollouts at most)."""
    rng = np.random.default_rng(seed)
    rows_per_batch = 2 * min(64, n_pairs)
    env = ctx.make_env(rows_per_batch, None, reference=False, environment_reward=1.0)  # scores = the returns
    gen = torch.Generator(device=ctx.device).manual_seed(seed)
    prompts, a, b, returns, messages = [], [], [], [], []
    for attempt in range(50):
        seeds = [int(s) for s in rng.integers(2**31 - 1, size=rows_per_batch // 2) for _ in range(2)]
        batch = collect_rollout(env, seed=seed + attempt, generator=gen, environment_seeds=seeds)
        scores, conv = batch.scores.cpu().numpy(), env.engine.conv
        for i in range(0, rows_per_batch, 2):
            ra, rb = batch.responses[i], batch.responses[i + 1]
            if ra.strip() and rb.strip() and ra.strip() != rb.strip() and len(prompts) < n_pairs:
                prompts.append(batch.prompts[i])
                a.append(ra)
                b.append(rb)
                returns.append((float(scores[i]), float(scores[i + 1])))
                messages.append(([dict(m) for m in conv.messages[i]], [dict(m) for m in conv.messages[i + 1]]))
        if len(prompts) >= n_pairs:
            break
    env.engine.conv.close()
    if not prompts:
        raise RuntimeError("the policy played no pair of distinct non-empty conversations in 50 rollouts; raise "
                           "max_new_tokens or the temperature")
    pairs = TextPreferencePairs(prompts, a, b, np.full(len(prompts), np.nan, np.float32))
    return pairs, np.asarray(returns, dtype=np.float64), messages


# -- pair sources -----------------------------------------------------------------------------------------------
class CompletionPairSource:
    """``PairSource`` over completions of the current policy (module docstring).

    ``env_steps`` counts the loop's text steps: the initial labelling (one) and every improvement iteration, which
    the agent (``agents.loop.text.loop.TextPolicyAgent``) adds. ``seed_pairs`` (e.g. a preference file) join the
    labels gathered online; ``oracle`` (a text teacher) gives the TRUE preferences of the loop's agreement metric.
    """

    step_name = "steps (the initial labelling, then improvement iterations)"  # what the step budget counts

    def __init__(self, ctx: TextRLHFContext, seed_pairs: TextPreferencePairs | None = None, oracle: Any = None):
        self.ctx, self.seed_pairs, self.oracle = ctx, seed_pairs, oracle
        self.env_steps = 0
        self.calls = 0

    def collect(self, agent: Any, n_steps: int) -> None:
        """Nothing to collect ahead: ``candidates`` samples from the policy as it is when labels are asked."""
        self.env_steps += int(n_steps)

    def candidates(self, n_pairs: int, rng: np.random.Generator) -> TextPreferencePairs:
        # The first call uses the run's seed (the offline pipeline's pairs); later ones draw from the loop's RNG,
        # which a resumed run restores: the same pairs are asked again and people's labels are found, not re-asked.
        seed = self.ctx.config.seed if self.calls == 0 else int(rng.integers(2**31 - 1))
        self.calls += 1
        return sample_completion_pairs(self.ctx, n_pairs, seed)

    def label(self, labeller: Any, pairs: TextPreferencePairs) -> TextPreferencePairs:
        labels = label_texts(labeller, pairs.prompts, pairs.responses_a, pairs.responses_b)
        return TextPreferencePairs(pairs.prompts, pairs.responses_a, pairs.responses_b, labels)

    def true_preferences(self, pairs: TextPreferencePairs) -> np.ndarray | None:
        if self.oracle is None:
            return None
        s_a = self.oracle.score(pairs.prompts, pairs.responses_a)
        s_b = self.oracle.score(pairs.prompts, pairs.responses_b)
        return np.where(np.isclose(s_a, s_b), 0.5, (s_a > s_b).astype(np.float64))

    def merge(self, dataset: TextPreferencePairs | None, pairs: TextPreferencePairs) -> TextPreferencePairs:
        base = dataset if dataset is not None else self.seed_pairs
        return pairs if base is None else base.append(pairs)

    def state(self) -> dict[str, Any]:
        return {"env_steps": self.env_steps, "calls": self.calls}

    def save(self, directory: Path, dataset: TextPreferencePairs | None) -> None:
        if dataset is not None:
            dataset.save(Path(directory) / PAIRS_FILE)
            dataset.save(self.ctx.run_dir.path / PAIRS_FILE)  # every label so far, readable while the run goes on
        write_json(Path(directory) / SOURCE_STATE_FILE, self.state())

    def load(self, directory: Path) -> TextPreferencePairs | None:
        state = json.loads((Path(directory) / SOURCE_STATE_FILE).read_text(encoding="utf-8"))
        for key, value in state.items():
            setattr(self, key, value)
        path = Path(directory) / PAIRS_FILE
        return TextPreferencePairs.load(path) if path.exists() else None


class ConversationPairSource(CompletionPairSource):
    """``PairSource`` over conversations of the current policy with the run's environment (module docstring). The
    environment's returns are recorded into ``returns`` (the ``rewardmodels.text.teachers.EnvironmentReturns`` a
    ``ReturnTeacher`` judges by); people see each conversation turn by turn."""

    def __init__(self, ctx: TextRLHFContext, returns: Any, seed_pairs: TextPreferencePairs | None = None,
                 oracle: Any = None):
        super().__init__(ctx, seed_pairs=seed_pairs, oracle=oracle)
        self.returns = returns
        self.turns: dict[tuple[str, str, str], tuple[list, list]] = {}

    def candidates(self, n_pairs: int, rng: np.random.Generator) -> TextPreferencePairs:
        seed = self.ctx.config.seed if self.calls == 0 else int(rng.integers(2**31 - 1))
        self.calls += 1
        pairs, returns, messages = sample_conversation_pairs(self.ctx, n_pairs, seed)
        self.returns.record([*pairs.prompts, *pairs.prompts], [*pairs.responses_a, *pairs.responses_b],
                            [*returns[:, 0], *returns[:, 1]])
        self.turns = {(p, x, y): m for p, x, y, m in zip(pairs.prompts, pairs.responses_a, pairs.responses_b,
                                                         messages, strict=True)}
        return pairs

    def label(self, labeller: Any, pairs: TextPreferencePairs) -> TextPreferencePairs:
        turns = [self.turns[(p, x, y)] for p, x, y, _ in pairs]
        labels = label_texts(labeller, pairs.prompts, pairs.responses_a, pairs.responses_b, conversations=turns)
        return TextPreferencePairs(pairs.prompts, pairs.responses_a, pairs.responses_b, labels)


def heldout_size(n_pairs: int, fraction: float) -> int:
    """How many of a dataset's ``n_pairs`` are held out from training to judge the run (at least 4 to be worth it,
    and never all)."""
    n = int(round(n_pairs * fraction))
    return n if 4 <= n < n_pairs else 0


class DatasetPairSource(CompletionPairSource):
    """``PairSource`` over a labelled preference dataset: candidates are its next unused pairs (in an order shuffled
    by the run's seed), their labels are the dataset's; the labeller is never asked. The last ``heldout_fraction``
    of that order never trains anything: ``heldout`` judges the run (held-out preference accuracy)."""

    def __init__(self, ctx: TextRLHFContext, pairs: TextPreferencePairs, heldout_fraction: float = 0.0):
        super().__init__(ctx)
        if len(pairs) == 0:
            raise ValueError("the preference dataset holds no pair; give a file with at least one labelled pair")
        self.pairs = pairs
        order = np.random.default_rng(ctx.config.seed).permutation(len(pairs)).tolist()
        n_held = heldout_size(len(pairs), heldout_fraction)
        self.order, held = order[: len(order) - n_held], order[len(order) - n_held:]
        self.heldout = pairs[held] if held else None
        self.used: list[int] = []

    def _unused(self) -> list[int]:
        taken = set(self.used)
        return [i for i in self.order if i not in taken]

    def candidates(self, n_pairs: int, rng: np.random.Generator) -> TextPreferencePairs:
        idx = self._unused()[:n_pairs]
        if not idx:
            raise ValueError(f"all {len(self.pairs)} pairs of the preference dataset are used; lower the label "
                             "budget (--pairs) to at most the dataset's size")
        self._pending = dict(zip(((self.pairs.prompts[i], self.pairs.responses_a[i], self.pairs.responses_b[i])
                                  for i in idx), idx, strict=True))
        return self.pairs[idx]

    def label(self, labeller: Any, pairs: TextPreferencePairs) -> TextPreferencePairs:
        self.used += [self._pending[(p, a, b)] for p, a, b, _ in pairs]
        return pairs

    def true_preferences(self, pairs: TextPreferencePairs) -> None:
        return None  # the dataset's labels are the only truth there is

    def state(self) -> dict[str, Any]:
        return {**super().state(), "used": self.used}


# -- DPO / KTO's reward model --------------------------------------------------------------------------------
class PairsAsReward:
    """The ``RewardModel`` of DPO / KTO: no separate model; ``reward_fn()`` hands the agent the labelled pairs.
    Preferences are predicted with DPO's implicit reward ``beta log(pi / pi_ref)`` (Rafailov et al. 2023)."""

    def __init__(self, ctx: TextRLHFContext):
        self.ctx = ctx
        self.pairs: TextPreferencePairs | None = None

    def fit(self, dataset: TextPreferencePairs) -> dict[str, float]:
        self.pairs = dataset
        return {"pairs": float(len(dataset.labelled()))}

    def reward_fn(self) -> TextPreferencePairs | None:
        return self.pairs

    @torch.no_grad()
    def preference_probs(self, pairs: TextPreferencePairs) -> np.ndarray:
        ctx = self.ctx

        def implicit(responses: list[str]) -> torch.Tensor:
            args = (ctx.tokenizer, pairs.prompts, responses, True, ctx.device)
            return sequence_logps(ctx.policy, *args) - sequence_logps(ctx.ref_model, *args)

        margin = ctx.config.kl_coef * (implicit(pairs.responses_a) - implicit(pairs.responses_b))
        return torch.sigmoid(margin.double()).cpu().numpy()

    def select(self, candidates: TextPreferencePairs, n: int, method: str, rng: np.random.Generator):
        if n >= len(candidates):
            return candidates
        return candidates[rng.choice(len(candidates), size=n, replace=False)]

    def save(self, directory: Path) -> None:
        """Nothing of its own: the pairs are the source's checkpoint."""

    def load(self, directory: Path) -> None:
        path = Path(directory) / PAIRS_FILE
        self.pairs = TextPreferencePairs.load(path) if path.exists() else None
