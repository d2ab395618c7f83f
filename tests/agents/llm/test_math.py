"""agents.llm.math against hand-worked values and float64 naive loops."""

import math

import pytest
import torch

from agents.llm.math import (
    entropy_from_logits,
    gae,
    kl_estimate,
    masked_mean,
    masked_var,
    masked_whiten,
)

X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
M = torch.tensor([[True, True, False], [True, False, False]])  # valid values: 1, 2, 4


def test_masked_mean_hand_values():
    assert masked_mean(X, M).item() == pytest.approx(7 / 3)
    torch.testing.assert_close(masked_mean(X, M, dim=1), torch.tensor([1.5, 4.0]))
    torch.testing.assert_close(masked_mean(X, M.float(), dim=0), torch.tensor([2.5, 2.0, 0.0]))  # empty column -> 0


def test_masked_mean_empty_mask_is_zero_not_nan():
    assert masked_mean(X, torch.zeros_like(M)).item() == 0.0


def test_masked_var_hand_values():
    # values 1, 2, 4: mean 7/3, squared deviations 16/9 + 1/9 + 25/9 = 42/9
    assert masked_var(X, M, unbiased=False).item() == pytest.approx(42 / 9 / 3)
    assert masked_var(X, M, unbiased=True).item() == pytest.approx(42 / 9 / 2)
    assert masked_var(X, M).item() == pytest.approx(torch.tensor([1.0, 2.0, 4.0]).var().item())
    one = torch.tensor([[True, False, False], [False, False, False]])
    assert masked_var(X, one).item() == 0.0  # a single value has no spread


def test_masked_whiten():
    torch.manual_seed(0)
    x = torch.randn(4, 7, dtype=torch.float64) * 3 + 5
    mask = torch.rand(4, 7) > 0.3
    w = masked_whiten(x, mask)
    valid = w[mask]
    assert valid.mean().item() == pytest.approx(0.0, abs=1e-9)
    assert valid.std().item() == pytest.approx(1.0, abs=1e-6)
    assert (w[~mask] == 0).all()
    w2 = masked_whiten(x, mask, shift_mean=False)
    assert w2[mask].mean().item() == pytest.approx(x[mask].mean().item(), abs=1e-9)
    assert w2[mask].std().item() == pytest.approx(1.0, abs=1e-6)


def test_gae_hand_worked_example_with_eos():
    # gamma = 1, lam = 0.5
    # row 0 (3 valid tokens): r = [0, 0, 1], V = [0.5, 0.4, 0.6]
    #   t=2: delta = 1 + 0 - 0.6 = 0.4                 A2 = 0.4
    #   t=1: delta = 0 + 0.6 - 0.4 = 0.2               A1 = 0.2 + 0.5 * 0.4 = 0.4
    #   t=0: delta = 0 + 0.4 - 0.5 = -0.1              A0 = -0.1 + 0.5 * 0.4 = 0.1
    #   returns = A + V = [0.6, 0.8, 1.0]
    # row 1 (EOS at t=1, t=2 is padding holding garbage): r = [0, 2, 99], V = [1.0, 0.5, 99]
    #   t=1: delta = 2 + 0 - 0.5 = 1.5 (no bootstrap past EOS)   A1 = 1.5
    #   t=0: delta = 0 + 0.5 - 1.0 = -0.5              A0 = -0.5 + 0.5 * 1.5 = 0.25
    #   returns = [1.25, 2.0, 0]
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 99.0]])
    values = torch.tensor([[0.5, 0.4, 0.6], [1.0, 0.5, 99.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([[0.1, 0.4, 0.4], [0.25, 1.5, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.6, 0.8, 1.0], [1.25, 2.0, 0.0]]))


def test_gae_last_values_bootstrap_only_for_rows_reaching_the_window_end():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    values = torch.tensor([[0.5, 0.4, 0.6], [1.0, 0.5, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    adv, _ = gae(rewards, values, mask, gamma=1.0, lam=0.5, last_values=torch.tensor([0.3, 7.0]))
    # row 0: t=2 delta = 1 + 0.3 - 0.6 = 0.7; t=1: 0.2 + 0.35 = 0.55; t=0: -0.1 + 0.275 = 0.175
    torch.testing.assert_close(adv[0], torch.tensor([0.175, 0.55, 0.7]))
    torch.testing.assert_close(adv[1], torch.tensor([0.25, 1.5, 0.0]))  # ended before the window end: unchanged


def _gae_naive(rewards, values, lengths, gamma, lam):
    """Float64 reference: per row, plain Python over its first `length` tokens."""
    B, T = len(rewards), len(rewards[0])
    adv = [[0.0] * T for _ in range(B)]
    for b in range(B):
        n = lengths[b]
        for t in range(n):
            a = 0.0
            for k in range(t, n):
                v_next = values[b][k + 1] if k + 1 < n else 0.0
                delta = rewards[b][k] + gamma * v_next - values[b][k]
                a += (gamma * lam) ** (k - t) * delta
            adv[b][t] = a
    return torch.tensor(adv, dtype=torch.float64)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0), (1.0, 0.0)])
def test_gae_matches_naive_loop_with_different_lengths(gamma, lam):
    g = torch.Generator().manual_seed(1)
    B, T = 5, 8
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    lengths = [8, 1, 5, 3, 7]
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    expected = _gae_naive(rewards.tolist(), values.tolist(), lengths, gamma, lam)
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, (expected + values) * mask)


def test_gae_left_padding_equals_right_padding():
    g = torch.Generator().manual_seed(2)
    rewards = torch.randn(1, 4, generator=g)
    values = torch.randn(1, 4, generator=g)
    right = torch.tensor([[True, True, True, False]])
    adv_r, _ = gae(rewards, values, right)
    # same episode shifted one to the right (left padding)
    adv_l, _ = gae(rewards.roll(1, 1), values.roll(1, 1), right.roll(1, 1))
    torch.testing.assert_close(adv_l.roll(-1, 1), adv_r)


def test_gae_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same"):
        gae(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3, dtype=torch.bool))


def test_kl_estimators_hand_values():
    logp = torch.tensor([math.log(0.5)])
    ref = torch.tensor([math.log(0.25)])
    # log r = log(0.25 / 0.5) = -log 2
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(math.log(2))
    assert kl_estimate(logp, ref, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(0.5 + math.log(2) - 1)
    assert kl_estimate(logp, logp, "k3").item() == 0.0
    with pytest.raises(ValueError, match="k1"):
        kl_estimate(logp, ref, "k4")


def test_kl_estimators_are_unbiased_in_expectation():
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.4, 0.4], dtype=torch.float64)
    true_kl = (p * (p / q).log()).sum().item()
    g = torch.Generator().manual_seed(0)
    idx = torch.multinomial(p, 200_000, replacement=True, generator=g)
    logp, ref = p.log()[idx], q.log()[idx]
    assert kl_estimate(logp, ref, "k1").mean().item() == pytest.approx(true_kl, abs=0.01)
    assert kl_estimate(logp, ref, "k3").mean().item() == pytest.approx(true_kl, abs=0.01)
    assert (kl_estimate(logp, ref, "k3") >= 0).all()


def test_entropy_from_logits():
    logits = torch.zeros(2, 3, 5)
    torch.testing.assert_close(entropy_from_logits(logits), torch.full((2, 3), math.log(5)))
    peaked = torch.tensor([[[0.0, math.log(3.0)]]])  # probs 1/4, 3/4
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert entropy_from_logits(peaked).item() == pytest.approx(expected, rel=1e-6)
