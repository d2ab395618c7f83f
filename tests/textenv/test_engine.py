"""The batched engine: cached == uncached logits across per-row resets, the KL reward against float64, one forward
per model per step."""

import copy

import numpy as np
import pytest
import torch

from textenv.engine import GenerationEngine, record_episodes, sample_tokens
from textenv.prompts import PromptSource
from textenv.testing import make_tiny_lm

PROMPTS = ["the movie was", "i loved this phone and", "it", "a really boring book but the acting"]


@pytest.fixture(scope="module")
def lm():
    return make_tiny_lm()


def make_engine(lm, n=4, use_cache=True, ref=True, kl_coef=0.1, temperature=1.0, max_new=6, reward_fn=None):
    model, tok = lm
    ref_model = make_tiny_lm(seed=1)[0] if ref else None  # a different model, so the KL term is not zero
    engine = GenerationEngine(
        model, tok, ref_model, reward_fn, n, kl_coef, max_new, 8, temperature, torch.device("cpu"), use_cache
    )
    return engine, PromptSource(PROMPTS, tok, 8)


def start(engine, source, rows, which):
    engine.load_prompts(np.asarray(rows), [source.token_ids[i] for i in which], [source.prompts[i] for i in which])


def run_schedule(engine, source, seed=0, steps=14):
    """Random actions with rows ending (EOS or length) and being reset at different times; returns per-step data."""
    rng = np.random.default_rng(seed)
    start(engine, source, range(engine.num_rows), [0, 1, 2, 3][: engine.num_rows])
    out, reset_rows = [], np.zeros(0, dtype=np.int64)
    for _ in range(steps):
        logits = engine.next_token_logits().clone()
        actions = rng.integers(3, engine.vocab_size, size=engine.num_rows)
        actions[rng.random(engine.num_rows) < 0.15] = engine.eos_id
        which = rng.integers(len(source), size=len(reset_rows))
        res = engine.step(actions, reset_rows, [source.token_ids[i] for i in which], [source.prompts[i] for i in which])
        out.append((logits, res.reward.clone(), engine.tokens.clone(), res.ended.copy()))
        reset_rows = res.ended
    return out


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_cached_and_uncached_logits_agree(lm, temperature):
    cached = run_schedule(*make_engine(lm, temperature=temperature))
    full = run_schedule(*make_engine(lm, use_cache=False, temperature=temperature))
    assert any(len(step[3]) for step in cached), "the schedule must exercise per-row resets"
    for (lc, rc, tc, ec), (lf, rf, tf, ef) in zip(cached, full, strict=True):
        assert torch.equal(tc, tf) and np.array_equal(ec, ef)
        assert torch.allclose(lc, lf, atol=1e-5), (lc - lf).abs().max()
        assert torch.allclose(rc, rf, atol=1e-5)


def test_cache_never_grows_past_L(lm):
    engine, source = make_engine(lm)
    run_schedule(engine, source, steps=30)
    for cache in engine._caches.values():
        assert cache.get_seq_length() <= engine.L


def test_cached_decoding_uses_the_installed_transformers_cache_argument(lm):
    """No deprecated cache keyword (transformers 5.x renamed past_key_values to cache; the old name goes in 5.40)."""
    import warnings

    engine, source = make_engine(lm)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        run_schedule(engine, source, steps=8)
    assert engine._caches  # the KV-cached path ran


def float64_logprobs(model, ids, temperature):
    """log-softmax(logits / T) of a float64 copy of ``model`` over one unpadded sequence: (len, V)."""
    m64 = copy.deepcopy(model).double()
    with torch.no_grad():
        logits = m64(input_ids=torch.tensor([ids])).logits[0]
    return torch.log_softmax(logits / temperature, dim=-1)


def test_kl_reward_equals_float64_recomputation(lm):
    engine, source = make_engine(lm, n=2, kl_coef=0.3, temperature=0.8)
    start(engine, source, [0, 1], [1, 3])
    rng = np.random.default_rng(1)
    rewards, actions = [], []
    for _ in range(5):
        a = rng.integers(3, engine.vocab_size, size=2)
        rewards.append(engine.step(a).reward.double())
        actions.append(a)
    actions = np.stack(actions, 1)  # (2, T)
    for row, p in enumerate([1, 3]):
        ids = source.token_ids[p] + actions[row].tolist()
        n = len(source.token_ids[p])
        lp = float64_logprobs(engine.policy, ids, 0.8)
        lr = float64_logprobs(engine.ref_model, ids, 0.8)
        for t in range(actions.shape[1]):
            a = actions[row, t]
            expected = -0.3 * (lp[n - 1 + t, a] - lr[n - 1 + t, a])
            assert abs(float(rewards[t][row]) - float(expected)) < 1e-6


class CountForwards:
    def __init__(self, model):
        self.n = 0
        model.register_forward_hook(self)

    def __call__(self, *args):
        self.n += 1


def test_one_forward_per_model_per_step_and_logits_are_reused(lm):
    engine, source = make_engine(lm, n=3)
    pol, ref = CountForwards(engine.policy), CountForwards(engine.ref_model)
    start(engine, source, [0, 1, 2], [0, 1, 2])
    for _ in range(4):
        logits = engine.next_token_logits()
        assert engine.next_token_logits() is logits  # cached, not recomputed
        res = engine.step(logits.argmax(-1))
        expected = torch.log_softmax(logits, -1).gather(1, logits.argmax(-1)[:, None]).squeeze(1)
        assert torch.allclose(res.policy_logprob, expected, atol=1e-6)
    assert pol.n == 4 and ref.n == 4


def test_a_zero_penalty_measures_the_kl_and_no_reference_means_no_reference_forward(lm):
    engine, source = make_engine(lm, kl_coef=0.0)  # a reference given: the KL is reported, not penalised
    start(engine, source, range(4), range(4))
    res = engine.step(np.full(4, 5))
    assert res.ref_logprob is not None and torch.all(res.reward == 0)
    assert float((res.policy_logprob - res.ref_logprob).abs().sum()) > 0
    engine, source = make_engine(lm, kl_coef=0.0, ref=False)
    assert engine.ref_model is None
    start(engine, source, range(4), range(4))
    res = engine.step(np.full(4, 5))
    assert res.ref_logprob is None and torch.all(res.reward == 0)


def test_train_mode_policy_is_evaluated_without_dropout_and_restored(lm):
    engine, source = make_engine(lm, n=2)
    engine.policy.train()
    try:
        start(engine, source, [0, 1], [0, 1])
        a = engine.next_token_logits().clone()
        engine.refresh()
        assert torch.equal(a, engine.next_token_logits())
        assert engine.policy.training
    finally:
        engine.policy.eval()


def test_refresh_recomputes_after_a_weight_change(lm):
    model = make_tiny_lm()[0]
    engine = GenerationEngine(model, lm[1], None, None, 2, 0.0, 6, 8, 1.0, torch.device("cpu"))
    source = PromptSource(PROMPTS, lm[1], 8)
    start(engine, source, [0, 1], [0, 3])
    engine.step(np.array([5, 6]))
    engine.next_token_logits()
    engine.step(np.array([7, 8]))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    engine.refresh()
    full = GenerationEngine(model, lm[1], None, None, 2, 0.0, 6, 8, 1.0, torch.device("cpu"), use_cache=False)
    start(full, source, [0, 1], [0, 3])
    full.step(np.array([5, 6]))
    full.step(np.array([7, 8]))
    assert torch.allclose(engine.next_token_logits(), full.next_token_logits(), atol=1e-5)


def test_sample_tokens_draws_from_the_softmax_and_never_a_masked_token():
    logits = torch.tensor([[0.0, 1.0, 2.0, -float("inf")], [3.0, 0.0, 0.0, 0.0]]).repeat(2000, 1)  # (4000, 4)
    gen = torch.Generator().manual_seed(0)
    draws = sample_tokens(logits, gen).view(2000, 2)
    for row in range(2):
        freq = torch.bincount(draws[:, row], minlength=4).double() / 2000
        probs = torch.softmax(logits[row].double(), -1)
        assert torch.all((freq - probs).abs() < 4 * (probs * (1 - probs) / 2000).sqrt() + 1e-9), (freq, probs)
    assert not (draws[:, 0] == 3).any()
    again = sample_tokens(logits, torch.Generator().manual_seed(0)).view(2000, 2)
    assert torch.equal(draws, again) and draws.dtype == torch.long


def test_unsupported_cache_layout_falls_back_to_full_recomputation(lm, monkeypatch, caplog):
    expected = run_schedule(*make_engine(lm), steps=6)
    monkeypatch.setattr("textenv.engine.supports_splicing", lambda cache: False)
    engine, source = make_engine(lm)
    got = run_schedule(engine, source, steps=6)
    assert not engine.use_cache and "recomputing every step" in caplog.text
    for (le, re_, *_), (lg, rg, *_) in zip(expected, got, strict=True):
        assert torch.allclose(le, lg, atol=1e-5) and torch.allclose(re_, rg, atol=1e-5)


@pytest.mark.parametrize(("check_every", "steps"), [(1, 5), (8, 8), (3, 6)])
def test_record_episodes_masks_each_row_after_its_end_and_stops_once_all_ended(check_every, steps):
    ends = [2, 5, 3]  # row i's episode ends with its ends[i]-th token
    seen_alive = []

    def step(alive):
        t = len(seen_alive)
        seen_alive.append(alive.tolist())
        values = {"action": torch.tensor([10, 20, 30]) + t, "logp": torch.full((3,), -0.5 - t)}
        return values, torch.tensor([t + 1 == e for e in ends])

    record, mask = record_episodes(step, 3, horizon=12, device="cpu", check_every=check_every)
    # the end is checked every check_every tokens: the steps past the last end are recorded, all masked out
    assert mask.shape == (3, steps) and len(seen_alive) == steps
    assert mask.tolist() == [[t < e for t in range(steps)] for e in ends]
    assert seen_alive == [[t < e for e in ends] for t in range(steps)]
    assert record["action"].tolist() == [
        [(10 * (i + 1) + t) * (t < e) for t in range(steps)] for i, e in enumerate(ends)
    ]
    assert record["logp"].tolist() == [[(-0.5 - t) * (t < e) for t in range(steps)] for e in ends]
    assert record["action"].dtype == torch.long and record["logp"].dtype == torch.float32


def test_record_episodes_stops_at_the_horizon():
    record, mask = record_episodes(lambda alive: ({"a": torch.ones(2)}, torch.zeros(2, dtype=torch.bool)), 2, 4, "cpu")
    assert mask.all() and mask.shape == (2, 4) and record["a"].shape == (2, 4)


def test_a_forward_that_raises_midway_ends_the_episodes_and_reset_recovers(lm):
    """The reference forward fails after the policy's cache took the new token (an out-of-memory error on a GPU,
    say): the engine refuses to go on from half-updated caches, and new prompts in every row give exactly the
    logits of a fresh engine."""
    from textenv.engine import EpisodeEndedError

    engine, source = make_engine(lm)
    armed = []

    def fail_when_armed(module, args, kwargs):
        if armed:
            raise RuntimeError("CUDA out of memory (simulated)")

    handle = engine.ref_model.register_forward_pre_hook(fail_when_armed, with_kwargs=True)
    try:
        start(engine, source, range(4), [0, 1, 2, 3])
        engine.step(np.array([5, 6, 7, 8]))
        armed.append(True)
        with pytest.raises(RuntimeError, match="out of memory") as raised:
            engine.step(np.array([9, 10, 11, 12]))
        assert "reset()" in raised.value.__notes__[0]
        armed.clear()
        for call in (engine.next_token_logits, lambda: engine.step(np.array([9, 10, 11, 12])), engine.play):
            with pytest.raises(EpisodeEndedError, match="RuntimeError: CUDA out of memory"):
                call()
        start(engine, source, [0, 1], [3, 2])  # some rows only: still not usable
        with pytest.raises(EpisodeEndedError):
            engine.next_token_logits()
        start(engine, source, range(4), [3, 2, 1, 0])
        engine.step(np.array([5, 6, 7, 8]))
        logits = engine.next_token_logits()
    finally:
        handle.remove()
    fresh, _ = make_engine(lm)
    start(fresh, source, range(4), [3, 2, 1, 0])
    fresh.step(np.array([5, 6, 7, 8]))
    torch.testing.assert_close(logits, fresh.next_token_logits(), atol=1e-5, rtol=0)
