"""agents.llm.losses against hand-worked values and float64 naive loops, plus gradient sanity."""

import math

import pytest
import torch

from agents.llm.losses import (
    GroupSizeError,
    dpo_loss,
    grpo_advantages,
    grpo_loss,
    kto_kl_ref_point,
    kto_loss,
    ppo_policy_loss,
    ppo_value_loss,
    rloo_advantages,
    sequence_logprobs,
)
from tests.agents.lm_fixtures import naive_grpo_loss

LOG15 = math.log(1.5)
LOG05 = math.log(0.5)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# ---------------------------------------------------------------- sequence_logprobs


def test_sequence_logprobs_hand_values_and_masking():
    # one row, V = 3: logits [0, 0, log 2] -> probs [1/4, 1/4, 1/2]
    logits = torch.tensor([[[0.0, 0.0, math.log(2.0)], [0.0, 0.0, math.log(2.0)], [5.0, 1.0, 0.0]]])
    labels = torch.tensor([[2, 0, -100]])  # -100 at a masked position must not break gather
    mask = torch.tensor([[True, True, False]])
    per_token, total = sequence_logprobs(logits, labels, mask)
    torch.testing.assert_close(per_token, torch.tensor([[math.log(0.5), math.log(0.25), 0.0]]))
    torch.testing.assert_close(total, torch.tensor([math.log(0.125)]))


def test_sequence_logprobs_matches_log_softmax_and_has_gradient():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 11, (3, 5), generator=g)
    mask = torch.rand(3, 5, generator=g) > 0.3
    per_token, total = sequence_logprobs(logits, labels, mask)
    ref = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1) * mask
    torch.testing.assert_close(per_token, ref)
    torch.testing.assert_close(total, ref.sum(-1))
    total.sum().backward()
    assert logits.grad is not None and logits.grad[~mask].abs().sum() == 0


def test_sequence_logprobs_shape_error():
    with pytest.raises(ValueError, match="shift"):
        sequence_logprobs(torch.zeros(2, 4, 7), torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3))


# ---------------------------------------------------------------- PPO


def test_ppo_policy_loss_hand_values_and_gradients():
    # four tokens, eps = 0.2, plus one masked token with absurd values
    #   rho = 1.5, A = +1: max(-1.5, -1.2) = -1.2  (clipped: no gradient)
    #   rho = 1.5, A = -1: max( 1.5,  1.2) =  1.5  (gradient d/dlogp = rho = 1.5)
    #   rho = 0.5, A = +1: max(-0.5, -0.8) = -0.5  (gradient -rho = -0.5)
    #   rho = 0.5, A = -1: max( 0.5,  0.8) =  0.8  (clipped: no gradient)
    #   loss = (-1.2 + 1.5 - 0.5 + 0.8) / 4 = 0.15
    old = torch.zeros(1, 5)
    logp = torch.tensor([[LOG15, LOG15, LOG05, LOG05, 30.0]], requires_grad=True)
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0, 1e6]])
    mask = torch.tensor([[True, True, True, True, False]])
    loss, metrics = ppo_policy_loss(logp, old, adv, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(0.15)
    assert metrics["clipfrac"].item() == pytest.approx(1.0)
    approx_kl = (2 * (0.5 - LOG15) + 2 * (-0.5 - LOG05)) / 4  # mean of (rho - 1) - log rho
    assert metrics["approx_kl"].item() == pytest.approx(approx_kl, rel=1e-5)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 1.5, -0.5, 0.0, 0.0]]) / 4)
    assert not metrics["clipfrac"].requires_grad


def test_ppo_policy_loss_on_policy_is_minus_mean_advantage():
    logp = torch.randn(3, 4, dtype=torch.float64)
    adv = torch.randn(3, 4, dtype=torch.float64)
    mask = torch.ones(3, 4, dtype=torch.bool)
    loss, metrics = ppo_policy_loss(logp, logp, adv, mask)
    assert loss.item() == pytest.approx(-adv.mean().item())
    assert metrics["approx_kl"].item() == 0.0 and metrics["clipfrac"].item() == 0.0


def test_ppo_value_loss_hand_values():
    # token 1: old 0, V 0.5, R 1: unclipped (0.5-1)^2 = 0.25; clipped V = 0.2 -> 0.64; max 0.64
    # token 2: old 0, V 0.1, R 1: both 0.81
    # loss = 0.5 * (0.64 + 0.81) / 2 = 0.3625; clipped branch larger on 1 of 2 tokens
    values = torch.tensor([[0.5, 0.1, 50.0]], requires_grad=True)
    old = torch.zeros(1, 3)
    returns = torch.tensor([[1.0, 1.0, -50.0]])
    mask = torch.tensor([[True, True, False]])
    loss, metrics = ppo_value_loss(values, old, returns, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(0.3625)
    assert metrics["vf_clipfrac"].item() == pytest.approx(0.5)
    loss.backward()
    # token 1 is on the clipped branch (flat in V) -> 0; token 2: 0.5 * 2 * (0.1 - 1) / 2 = -0.45
    torch.testing.assert_close(values.grad, torch.tensor([[0.0, -0.45, 0.0]]))
    unclipped, _ = ppo_value_loss(values, old, returns, mask, clip_eps=None)
    assert unclipped.item() == pytest.approx(0.5 * (0.25 + 0.81) / 2)


# ---------------------------------------------------------------- GRPO


def test_grpo_advantages_hand_values_and_zero_std_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    # group 1: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = sqrt(1/3); group 2: all equal -> exactly 0
    std = math.sqrt(1 / 3)
    a = 0.5 / (std + 1e-4)
    torch.testing.assert_close(grpo_advantages(rewards, 4), torch.tensor([a, -a, -a, a, 0.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(
        grpo_advantages(rewards, 4, scale=False), torch.tensor([0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0])
    )
    assert torch.isfinite(grpo_advantages(torch.zeros(4), 2)).all()


@pytest.mark.parametrize("fn", [grpo_advantages, rloo_advantages])
def test_group_size_errors(fn):
    with pytest.raises(GroupSizeError, match=">= 2"):
        fn(torch.zeros(4), 1)
    with pytest.raises(GroupSizeError, match="multiple"):
        fn(torch.zeros(5), 2)
    assert issubclass(GroupSizeError, ValueError)


def test_grpo_loss_hand_values_per_aggregation():
    # B = 2, T = 3; row 0 has 3 valid tokens with A = +1, row 1 has 1 valid token with A = -1; on-policy, logp = ref
    # per-token loss = -A: row 0: -1, -1, -1; row 1: +1
    logp = torch.zeros(2, 3, requires_grad=True)
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    cases = {"token-mean": (-3 + 1) / 4, "sequence-mean": (-1 + 1) / 2, "dr-grpo": (-3 + 1) / (2 * 4)}
    for agg, expected in cases.items():
        loss, metrics = grpo_loss(logp, None, logp.detach(), adv, mask, aggregation=agg, max_tokens=4)
        assert loss.item() == pytest.approx(expected), agg
        assert metrics["kl"].item() == 0.0
    # gradient of token-mean: -A * rho / 4 on valid tokens
    loss, _ = grpo_loss(logp, None, logp.detach(), adv, mask, aggregation="token-mean")
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.25, -0.25, -0.25], [0.25, 0.0, 0.0]]))


def test_grpo_loss_kl_term_hand_value():
    # one token, A = 0, logp = log 0.5, ref = log 0.25: k3 = 0.5 + log 2 - 1; loss = beta * k3
    logp = torch.tensor([[LOG05]])
    ref = torch.tensor([[math.log(0.25)]])
    loss, metrics = grpo_loss(logp, logp, ref, torch.zeros(1), torch.ones(1, 1, dtype=torch.bool), beta=0.04)
    k3 = 0.5 + math.log(2) - 1
    assert loss.item() == pytest.approx(0.04 * k3)
    assert metrics["kl"].item() == pytest.approx(k3)


def test_grpo_loss_ratio_weighted_kl_value_and_gradient():
    # On-policy (old = logp detached) the ratio is 1: same loss value as plain k3, but the KL gradient per token is
    # beta * (logp - ref) (the reverse-KL gradient, DeepSeek-V3.2) instead of plain k3's beta * (1 - exp(ref - logp)).
    g = torch.Generator().manual_seed(0)
    logp0 = -torch.rand(3, 4, generator=g, dtype=torch.float64) * 4
    ref = -torch.rand(3, 4, generator=g, dtype=torch.float64) * 4
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    beta, n = 0.1, int(mask.sum())
    grads, values = {}, {}
    for kl_ratio in (False, True):
        logp = logp0.clone().requires_grad_()
        loss, _ = grpo_loss(logp, None, ref, torch.zeros(3), mask, beta=beta, kl_ratio=kl_ratio)
        loss.backward()
        grads[kl_ratio], values[kl_ratio] = logp.grad, loss.item()
    assert values[True] == pytest.approx(values[False], rel=1e-12)
    m = mask.double()
    torch.testing.assert_close(grads[False], beta * (1 - torch.exp(ref - logp0)) * m / n, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(grads[True], beta * (logp0 - ref) * m / n, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("agg", ["token-mean", "sequence-mean", "dr-grpo"])
def test_grpo_loss_matches_naive_loop(agg):
    g = torch.Generator().manual_seed(3)
    B, T = 6, 5
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    old = logp + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    ref = logp + 0.5 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    lengths = torch.tensor([5, 1, 3, 4, 2, 5])
    mask = torch.arange(T)[None] < lengths[:, None]
    loss, _ = grpo_loss(logp, old, ref, adv, mask, clip_eps=0.2, beta=0.1, aggregation=agg, max_tokens=7)
    expected = naive_grpo_loss(logp.tolist(), old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(), 0.2, 0.1, agg, 7)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_grpo_loss_bad_arguments():
    z = torch.zeros(1, 2)
    m = torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="aggregation"):
        grpo_loss(z, z, z, torch.zeros(1), m, aggregation="mean")
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(z, z, None, torch.zeros(1), m, beta=0.1)
    loss, _ = grpo_loss(z, z, None, torch.ones(1), m, beta=0.0)  # no reference needed without the KL term
    assert loss.item() == pytest.approx(-1.0)


# ---------------------------------------------------------------- RLOO


def test_rloo_advantages_hand_values():
    # rewards 1, 2, 3: leave-one-out baselines 2.5, 2.0, 1.5
    torch.testing.assert_close(rloo_advantages(torch.tensor([1.0, 2.0, 3.0]), 3), torch.tensor([-1.5, 0.0, 1.5]))
    r = torch.randn(12, dtype=torch.float64)
    group = lambda i: range(4 * (i // 4), 4 * (i // 4) + 4)  # noqa: E731
    naive = [r[i].item() - sum(r[j].item() for j in group(i) if j != i) / 3 for i in range(12)]
    torch.testing.assert_close(rloo_advantages(r, 4), torch.tensor(naive, dtype=torch.float64))
    torch.testing.assert_close(rloo_advantages(torch.full((4,), 7.0), 2), torch.zeros(4))


# ---------------------------------------------------------------- DPO


def _dpo_inputs():
    # chosen log-ratio = -1 - (-1.5) = 0.5; rejected log-ratio = -2 - (-1.5) = -0.5; h = 1
    pc = torch.tensor([-1.0], requires_grad=True)
    pr = torch.tensor([-2.0], requires_grad=True)
    return pc, pr, torch.tensor([-1.5]), torch.tensor([-1.5])


def test_dpo_sigmoid_hand_values_metrics_and_gradient():
    pc, pr, rc, rr = _dpo_inputs()
    loss, metrics = dpo_loss(pc, pr, rc, rr, beta=0.1)
    assert loss.item() == pytest.approx(softplus(-0.1))  # -log sigmoid(0.1 * 1)
    assert metrics["rewards/chosen"].item() == pytest.approx(0.05)
    assert metrics["rewards/rejected"].item() == pytest.approx(-0.05)
    assert metrics["rewards/margin"].item() == pytest.approx(0.1)
    assert metrics["rewards/accuracy"].item() == 1.0
    loss.backward()
    # dL/dlogp_c = -beta * sigmoid(-beta h) < 0: raising the chosen log-prob lowers the loss
    assert pc.grad.item() == pytest.approx(-0.1 / (1 + math.exp(0.1)))
    assert pr.grad.item() == pytest.approx(0.1 / (1 + math.exp(0.1)))


def test_dpo_label_smoothing_ipo_hinge_hand_values():
    pc, pr, rc, rr = _dpo_inputs()
    cdpo, _ = dpo_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=0.1)
    assert cdpo.item() == pytest.approx(0.9 * softplus(-0.1) + 0.1 * softplus(0.1))
    ipo, _ = dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type="ipo")
    assert ipo.item() == pytest.approx((1 - 1 / (2 * 0.1)) ** 2)  # (1 - 5)^2 = 16
    hinge, _ = dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type="hinge")
    assert hinge.item() == pytest.approx(0.9)
    hinge_sat, _ = dpo_loss(pc, pr, rc, rr, beta=20.0, loss_type="hinge")
    assert hinge_sat.item() == 0.0


def test_dpo_batch_mean_matches_naive_loop():
    g = torch.Generator().manual_seed(4)
    x = [torch.randn(7, generator=g, dtype=torch.float64) for _ in range(4)]
    loss, metrics = dpo_loss(*x, beta=0.5)
    h = [(x[0][i] - x[2][i] - x[1][i] + x[3][i]).item() for i in range(7)]
    assert loss.item() == pytest.approx(sum(softplus(-0.5 * v) for v in h) / 7)
    assert metrics["rewards/accuracy"].item() == pytest.approx(sum(v > 0 for v in h) / 7)


def test_dpo_bad_arguments():
    pc, pr, rc, rr = _dpo_inputs()
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(pc, pr, rc, rr, loss_type="kto")
    with pytest.raises(ValueError, match="sigmoid"):
        dpo_loss(pc, pr, rc, rr, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="0.5"):
        dpo_loss(pc, pr, rc, rr, label_smoothing=0.5)


# ---------------------------------------------------------------- KTO


def test_kto_hand_values_and_gradient():
    # r = policy - ref = [1, -1]; z0 = 0.5; beta = 1
    # desirable:   1 - sigmoid(1 - 0.5)    = 1 - sigmoid(0.5)
    # undesirable: 1 - sigmoid(0.5 - (-1)) = 1 - sigmoid(1.5)
    policy = torch.tensor([-1.0, -3.0], requires_grad=True)
    ref = torch.tensor([-2.0, -2.0])
    desirable = torch.tensor([True, False])
    loss, metrics = kto_loss(policy, ref, desirable, kl_ref_point=0.5, beta=1.0)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    assert loss.item() == pytest.approx(((1 - sig(0.5)) + (1 - sig(1.5))) / 2)
    assert metrics["rewards/desirable"].item() == pytest.approx(1.0)
    assert metrics["rewards/undesirable"].item() == pytest.approx(-1.0)
    loss.backward()
    assert policy.grad[0] < 0 < policy.grad[1]  # push desirable up, undesirable down
    weighted, _ = kto_loss(policy, ref, desirable, 0.5, beta=1.0, desirable_weight=2.0, undesirable_weight=0.5)
    assert weighted.item() == pytest.approx((2 * (1 - sig(0.5)) + 0.5 * (1 - sig(1.5))) / 2)


def test_kto_reference_point_is_clamped_and_detached():
    p = torch.tensor([-3.0, -1.0], requires_grad=True)
    assert kto_kl_ref_point(p, torch.tensor([-1.0, -1.0])).item() == 0.0  # mean -1 -> clamped to 0
    z0 = kto_kl_ref_point(p, torch.tensor([-4.0, -2.0]))
    assert z0.item() == pytest.approx(1.0) and not z0.requires_grad
