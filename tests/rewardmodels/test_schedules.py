import math

import numpy as np
import pytest

from rewardmodels.schedules import (
    CHRISTIANO_ATARI_C,
    CHRISTIANO_MUJOCO_C,
    ConstantSchedule,
    InverseTimeSchedule,
    make_schedule,
)


def test_constant_schedule_spreads_labels_evenly_and_ends_exactly_at_budget():
    s = ConstantSchedule(budget=150, total_steps=50_000, initial=30)
    assert s.labels_due(0) == 30
    assert s.labels_due(25_000) == 30 + 60
    assert s.labels_due(50_000) == 150 and s.labels_due(10**9) == 150
    assert s.rate(123) == pytest.approx(120 / 50_000)
    steps = np.arange(0, 50_001, 100)
    due = s.labels_due(steps)
    assert np.all(np.diff(due) >= 0) and due[-1] == 150


@pytest.mark.parametrize("c", [CHRISTIANO_MUJOCO_C, CHRISTIANO_ATARI_C, 1e4])
def test_inverse_time_schedule_matches_its_formula(c):
    budget, total, initial = 700, 2_000_000, 0
    s = InverseTimeSchedule(budget=budget, total_steps=total, initial=initial, c=c)
    for t in (0, 1_000, 123_457, 999_999, total):
        expected = initial + math.floor((budget - initial) * math.log1p(t / c) / math.log1p(total / c) + 1e-9)
        assert s.labels_due(t) == expected
    assert s.labels_due(total) == budget
    # the rate is proportional to c / (t + c): the paper's decay
    assert s.rate(0) / s.rate(total) == pytest.approx((total + c) / c)
    # and it is the derivative of the cumulative count
    t, h = 500_000.0, 1.0
    numeric = (budget * (math.log1p((t + h) / c) - math.log1p(t / c)) / math.log1p(total / c)) / h
    assert s.rate(t) == pytest.approx(numeric, rel=1e-5)


def test_inverse_time_front_loads_labels_and_sums_to_budget():
    s = InverseTimeSchedule(budget=150, total_steps=50_000, initial=20, c=5_000)
    assert s.labels_due(0) == 20
    assert s.labels_due(25_000) - 20 > (150 - 20) / 2  # more than half of the rest in the first half
    increments = [s.labels_between(t, t + 1000) for t in range(0, 50_000, 1000)]
    assert sum(increments) == 130 and min(increments) >= 0


def test_make_schedule_and_validation():
    assert isinstance(make_schedule("inverse_time", 10, 100, c=5.0), InverseTimeSchedule)
    assert make_schedule("constant", 10, 100).labels_due(50) == 5
    with pytest.raises(ValueError, match="unknown label schedule"):
        make_schedule("cosine", 10, 100)
    with pytest.raises(ValueError, match="initial"):
        ConstantSchedule(budget=10, total_steps=100, initial=11)
    with pytest.raises(ValueError, match="c must be"):
        InverseTimeSchedule(budget=10, total_steps=100, c=0)
