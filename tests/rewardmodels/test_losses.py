import math

import pytest
import torch

from rewardmodels.losses import bradley_terry_loss, preference_log_probs, preference_probability


def naive_loss(ra, rb, y, noise=0.0, w=None):
    """float64 reference: a Python loop over pairs with the textbook formula."""
    total, norm = 0.0, 0.0
    for i in range(len(y)):
        if math.isnan(y[i]):
            continue
        p = noise / 2 + (1 - noise) / (1 + math.exp(-(ra[i] - rb[i])))
        wi = 1.0 if w is None else w[i]
        total += -wi * (y[i] * math.log(p) + (1 - y[i]) * math.log(1 - p))
        norm += wi
    return total / norm


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_worked_example_by_hand():
    # Pair 1: R_a = 2, R_b = 0, a preferred: P = sigmoid(2) = 0.880797, loss = -log(0.880797) = 0.126928.
    # Pair 2: R_a = 0, R_b = 1, b preferred: P(b > a) = sigmoid(1) = 0.731059, loss = -log(0.731059) = 0.313262.
    # Mean = 0.220095.
    loss, m = bradley_terry_loss(t(2.0, 0.0), t(0.0, 1.0), t(1.0, 0.0))
    assert loss.item() == pytest.approx(0.220095, abs=1e-6)
    assert m["accuracy"].item() == 1.0 and m["n_labelled"].item() == 2 and m["n_ties"].item() == 0


def test_tie_is_a_half_target_minimised_at_equal_returns():
    # A tie with equal returns costs log 2 = 0.693147; with a gap of 2 it costs
    # -(0.5 log sigmoid(2) + 0.5 log sigmoid(-2)) = 0.5 * (0.126928 + 2.126928) = 1.126928.
    assert bradley_terry_loss(t(1.0), t(1.0), t(0.5))[0].item() == pytest.approx(math.log(2), abs=1e-9)
    assert bradley_terry_loss(t(2.0), t(0.0), t(0.5))[0].item() == pytest.approx(1.126928, abs=1e-6)
    ra = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    bradley_terry_loss(ra, t(0.0), t(0.5))[0].backward()
    assert ra.grad.item() == pytest.approx(0.0, abs=1e-12)
    _, m = bradley_terry_loss(t(1.0, 3.0), t(0.0, 0.0), t(0.5, 1.0))
    assert m["n_ties"].item() == 1 and m["accuracy"].item() == 1.0  # accuracy ignores ties


def test_random_response_noise_model():
    # noise = 0.1: P = 0.05 + 0.9 sigmoid(d). With d = 0: P = 0.5. With d -> large: P -> 0.95, so a confident
    # mistake costs at most -log(0.05) = 2.995732 instead of growing without bound.
    p = preference_probability(t(0.0, 50.0), t(0.0, 0.0), noise=0.1)
    assert p.tolist() == pytest.approx([0.5, 0.95], abs=1e-12)
    wrong = bradley_terry_loss(t(50.0), t(0.0), t(0.0), noise=0.1)[0]
    assert wrong.item() == pytest.approx(-math.log(0.05), abs=1e-9)
    # hand value at d = 1: P = 0.05 + 0.9 * 0.731059 = 0.707953, loss for "a preferred" = -log P = 0.345378
    assert bradley_terry_loss(t(1.0), t(0.0), t(1.0), noise=0.1)[0].item() == pytest.approx(0.345378, abs=1e-6)
    # noise = 1: every answer is random, P = 0.5 whatever the returns
    assert bradley_terry_loss(t(9.0), t(0.0), t(0.0), noise=1.0)[0].item() == pytest.approx(math.log(2))


@pytest.mark.parametrize("noise", [0.0, 0.1, 0.3])
def test_matches_float64_naive_reference_with_nan_labels_and_weights(noise):
    g = torch.Generator().manual_seed(0)
    ra, rb = torch.randn(64, generator=g, dtype=torch.float64) * 3, torch.randn(64, generator=g, dtype=torch.float64)
    y = torch.tensor([1.0, 0.0, 0.5, float("nan")] * 16, dtype=torch.float64)
    w = torch.rand(64, generator=g, dtype=torch.float64)
    loss, _ = bradley_terry_loss(ra, rb, y, noise=noise, weights=w)
    assert loss.item() == pytest.approx(naive_loss(ra.tolist(), rb.tolist(), y.tolist(), noise, w.tolist()), rel=1e-10)
    # float32 agrees with the float64 reference to float32 precision
    loss32, _ = bradley_terry_loss(ra.float(), rb.float(), y.float(), noise=noise)
    assert loss32.item() == pytest.approx(naive_loss(ra.tolist(), rb.tolist(), y.tolist(), noise), rel=1e-5)


def test_numerically_stable_for_huge_return_gaps():
    ra = torch.tensor([1e4, -1e4], requires_grad=True)
    loss, _ = bradley_terry_loss(ra, torch.zeros(2), torch.tensor([0.0, 1.0]))
    assert loss.item() == pytest.approx(1e4, rel=1e-6)  # -log sigmoid(-1e4) = 1e4, not inf
    loss.backward()
    assert torch.isfinite(ra.grad).all()
    log_pa, log_pb = preference_log_probs(torch.tensor([1e4]), torch.tensor([0.0]), noise=0.1)
    assert torch.isfinite(log_pa).all() and log_pb.item() == pytest.approx(math.log(0.05), rel=1e-6)


def test_nan_labels_are_excluded_and_all_nan_gives_zero_loss_with_graph():
    ra = torch.tensor([1.0, 5.0], requires_grad=True)
    loss, m = bradley_terry_loss(ra, torch.zeros(2), torch.tensor([1.0, float("nan")]))
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1))), rel=1e-6)
    loss.backward()
    assert ra.grad[1].item() == 0.0 and m["n_labelled"].item() == 1
    loss, m = bradley_terry_loss(ra, torch.zeros(2), torch.full((2,), float("nan")))
    assert loss.item() == 0.0 and loss.requires_grad and math.isnan(m["accuracy"].item())


def test_accuracy_metric_counts_zero_gap_as_half():
    _, m = bradley_terry_loss(t(1.0, 0.0, 0.0, 2.0), t(0.0, 1.0, 0.0, 3.0), t(1.0, 1.0, 1.0, 0.0))
    assert m["accuracy"].item() == pytest.approx((1 + 0 + 0.5 + 1) / 4)


def test_bad_shapes_and_noise_raise():
    with pytest.raises(ValueError, match="must all be"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="noise"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(3), torch.zeros(3), noise=1.5)
