"""PEBBLE's state-entropy reward: k-NN distances by hand, the Kozachenko-Leonenko estimate against closed forms."""

import math

import numpy as np
import pytest

from rewardmodels.intrinsic import StateEntropyReward, knn_distances, kozachenko_leonenko_entropy
from rewardmodels.published import PEBBLE_K


def test_knn_distances_by_hand():
    points = np.array([[0.0], [1.0], [3.0], [6.0]])
    # each point is in the reference: its own copy is skipped (PEBBLE's kthvalue(k + 1) on buffer states)
    assert knn_distances(points, points, 1).tolist() == [1.0, 1.0, 2.0, 3.0]
    assert knn_distances(points, points, 2).tolist() == [3.0, 2.0, 3.0, 5.0]
    # a new point is not in the reference: distances 0.5, 0.5, 2.5, 5.5
    assert knn_distances(np.array([[0.5]]), points, 2).tolist() == [0.5]
    assert knn_distances(np.array([[0.5]]), points, 3).tolist() == [2.5]
    plane = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    assert knn_distances(np.array([[0.0, 0.0]]), plane, 1).tolist() == [5.0]  # Euclidean, self skipped


def test_knn_distances_refuse_a_reference_without_k_neighbours():
    with pytest.raises(ValueError, match="more than k"):
        knn_distances(np.zeros((1, 2)), np.zeros((5, 2)), 5)


@pytest.mark.parametrize("d", [1, 2])
def test_kozachenko_leonenko_matches_the_uniform_distributions_entropy(d):
    x = np.random.default_rng(d).uniform(0.0, 2.0, size=(4_000, d))
    assert kozachenko_leonenko_entropy(x, PEBBLE_K) == pytest.approx(d * math.log(2.0), abs=0.05)  # H = d log 2


@pytest.mark.parametrize("d", [1, 2, 3])
def test_kozachenko_leonenko_matches_a_gaussians_entropy(d):
    cov = np.diag(0.5 * np.arange(1, d + 1))
    x = np.random.default_rng(10 + d).multivariate_normal(np.zeros(d), cov, size=4_000)
    closed_form = 0.5 * math.log((2 * math.pi * math.e) ** d * np.linalg.det(cov))
    assert kozachenko_leonenko_entropy(x, PEBBLE_K) == pytest.approx(closed_form, abs=0.05)


def test_scaling_the_states_shifts_the_estimate_by_d_log_s_exactly():
    x = np.random.default_rng(0).normal(size=(500, 3))
    shift = kozachenko_leonenko_entropy(4.0 * x) - kozachenko_leonenko_entropy(x)
    assert shift == pytest.approx(3 * math.log(4.0), abs=1e-9)  # H(sX) = H(X) + d log s


def test_the_reward_is_the_knn_distance_over_its_running_standard_deviation():
    reward = StateEntropyReward(k=1)
    assert reward(np.zeros((3, 1))).tolist() == [0.0, 0.0, 0.0]  # no reference yet
    reward.set_reference(np.array([[0.0], [1.0], [3.0], [6.0]]))
    r = reward(np.array([[0.5], [10.0]]))  # distances 0.5 and 4.0
    var = reward.stats.var  # SB3's RunningMeanStd, PEBBLE's TorchRunningMeanStd: count 1e-4, then the batch
    assert r == pytest.approx(np.array([0.5, 4.0]) / math.sqrt(var + 1e-8), rel=1e-5)
    assert var == pytest.approx(np.var([0.5, 4.0]), rel=1e-3)
    assert r[1] > r[0]  # the state far from every visited one earns more
