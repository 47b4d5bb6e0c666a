"""The lab's statistics (hsmd/lab/stats.py) against values worked out by hand and by SciPy's
documented examples."""

from __future__ import annotations

import math
import random

import pytest

from hsmd.lab.stats import mann_whitney, percentile


def test_percentiles_are_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile(values, 1.0)) == (
        50.0,
        99.0,
        100.0,
    )
    assert math.isnan(percentile([], 0.5))


def test_mann_whitney_of_a_small_example() -> None:
    # U for the first sample: how many (x, y) pairs have x > y (ties count a half).
    first, second = [1.0, 2.0, 3.0, 4.0], [2.5, 5.0, 6.0]
    test = mann_whitney(first, second)
    assert test.u == 2.0  # 3 > 2.5 and 4 > 2.5
    assert 0.05 < test.p_value < 0.2


def test_one_distribution_is_not_told_apart_and_two_are() -> None:
    rng = random.Random(7)
    same = mann_whitney(
        [rng.gauss(0, 1) for _ in range(2000)], [rng.gauss(0, 1) for _ in range(2000)]
    )
    apart = mann_whitney(
        [rng.gauss(0, 1) for _ in range(2000)], [rng.gauss(0.2, 1) for _ in range(2000)]
    )
    assert same.p_value > 0.01
    assert apart.p_value < 1e-6 and apart.z < 0


@pytest.mark.parametrize("ties", [[1.0] * 10, [1.0, 1.0, 2.0, 2.0, 2.0]])
def test_ties_are_counted(ties: list[float]) -> None:
    assert mann_whitney(ties, ties).p_value == pytest.approx(1.0)
