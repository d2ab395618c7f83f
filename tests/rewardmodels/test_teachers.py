import math

import numpy as np
import pytest

from rewardmodels.preferences import check_labels
from rewardmodels.teachers import TEACHER_PRESETS, PreferenceLabeller, Teacher, bpref_return_scale, make_teacher


def random_rewards(n=2000, t=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, t)), rng.normal(size=(n, t))


def truth(ra, rb):
    return (ra.sum(1) > rb.sum(1)).astype(np.float32)


def test_oracle_is_always_right_and_ties_exactly_equal_returns():
    ra, rb = random_rewards()
    labels = make_teacher("oracle", seed=0).label(ra, rb)
    np.testing.assert_array_equal(labels, truth(ra, rb))
    assert labels.dtype == np.float32
    # swapping a and b swaps the label (first item preferred = 1)
    np.testing.assert_array_equal(Teacher().label(rb, ra), 1 - labels)
    same = np.ones((3, 4))
    assert Teacher().label(same, same).tolist() == [0.5, 0.5, 0.5]


def test_masked_steps_earn_nothing():
    ra = np.ones((1, 4))
    mask_a = np.array([[True, True, False, False]])  # a terminated after 2 steps
    rb = np.full((1, 4), 0.6)
    assert Teacher().label(ra, rb, mask_a=mask_a).tolist() == [0.0]  # 2 < 2.4
    assert Teacher().label(ra, rb).tolist() == [1.0]


def test_mistake_teacher_flips_about_eps_of_labels_within_3_sigma():
    ra, rb = random_rewards(2000)
    labels = make_teacher("mistake", seed=1).label(ra, rb)
    flips = np.mean(labels != truth(ra, rb))
    sigma = math.sqrt(0.1 * 0.9 / 2000)
    assert abs(flips - 0.1) < 3 * sigma, flips


def test_boltzmann_teacher_matches_the_sigmoid_probability():
    # all pairs have the same return gap d = 0.5, so with beta = 2 each label is Bernoulli(sigmoid(1)) = 0.7311
    n = 4000
    ra, rb = np.zeros((n, 5)), np.zeros((n, 5))
    ra[:, 0] = 0.5
    teacher = Teacher(beta=2.0, seed=3)
    labels = teacher.label(ra, rb)
    p = 1 / (1 + math.exp(-1.0))
    assert abs(labels.mean() - p) < 3 * math.sqrt(p * (1 - p) / n)
    np.testing.assert_allclose(teacher.prob_first(ra, rb), p)
    # beta = 0 is a fair coin; the noisy preset is B-Pref's beta = 1
    coin = Teacher(beta=0.0, seed=4).label(ra, rb)
    assert abs(coin.mean() - 0.5) < 3 * math.sqrt(0.25 / n) and set(np.unique(coin)) <= {0.0, 1.0}
    assert make_teacher("noisy").beta == 1.0


def test_myopic_teacher_weighs_recent_steps_most_hand_example():
    # gamma = 0.5, T = 3: weights are gamma^(T-1-t) = [0.25, 0.5, 1].
    # a = [4, 0, 0] -> 1.0;  b = [0, 0, 1.5] -> 1.5: the myopic teacher prefers b although a's sum (4) is larger.
    ra, rb = np.array([[4.0, 0.0, 0.0]]), np.array([[0.0, 0.0, 1.5]])
    teacher = Teacher(gamma=0.5)
    np.testing.assert_allclose(teacher.myopic_weights(3), [0.25, 0.5, 1.0])
    assert teacher.label(ra, rb).tolist() == [0.0]
    assert Teacher().label(ra, rb).tolist() == [1.0]
    assert make_teacher("myopic").gamma == 0.9


def test_skip_and_equal_thresholds():
    ra = np.array([[1.0, 1.0], [3.0, 3.0], [5.0, 0.0], [0.5, 0.5]])
    rb = np.array([[0.5, 0.0], [3.0, 2.5], [0.0, 0.0], [0.0, 0.0]])
    # returns: a = [2, 6, 5, 1], b = [0.5, 5.5, 0, 0]
    labels = Teacher(skip_threshold=1.0, equal_threshold=1.0).label(ra, rb)
    assert labels[0] == 1.0  # gap 1.5 >= 1 and max 2 > 1
    assert labels[1] == 0.5  # |6 - 5.5| < 1: equally preferable
    assert labels[2] == 1.0
    assert np.isnan(labels[3])  # both returns <= 1: skipped
    check_labels(labels)  # always within the convention


def test_presets_follow_bpref_and_thresholds_scale_with_segment_return():
    assert set(TEACHER_PRESETS) == {"oracle", "noisy", "myopic", "mistake", "skip", "equal"}
    assert make_teacher("mistake").eps == 0.1
    scale = bpref_return_scale(mean_episode_return=500.0, episode_length=500, segment_len=50)
    assert scale == 50.0
    assert make_teacher("skip", return_scale=scale).skip_threshold == pytest.approx(5.0)
    assert make_teacher("equal", return_scale=scale).equal_threshold == pytest.approx(5.0)
    assert make_teacher("equal", equal_threshold=2.0).equal_threshold == 2.0
    assert make_teacher("oracle", eps=0.2).eps == 0.2
    with pytest.raises(ValueError, match="return_scale"):
        make_teacher("skip")
    with pytest.raises(ValueError, match="unknown teacher"):
        make_teacher("perfect")


def test_seeded_teachers_are_deterministic_and_satisfy_the_labeller_protocol():
    ra, rb = random_rewards(100)
    a = Teacher(beta=1.0, eps=0.2, seed=7).label(ra, rb)
    b = Teacher(beta=1.0, eps=0.2, seed=7).label(ra, rb)
    np.testing.assert_array_equal(a, b)
    assert isinstance(Teacher(), PreferenceLabeller)


def test_bad_parameters_and_shapes_raise():
    for kwargs in ({"beta": -1.0}, {"gamma": 0.0}, {"gamma": 1.5}, {"eps": 2.0}, {"skip_threshold": math.nan}):
        with pytest.raises(ValueError):
            Teacher(**kwargs)
    with pytest.raises(ValueError, match="same shape"):
        Teacher().label(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        Teacher().label(np.zeros(3), np.zeros(3))
