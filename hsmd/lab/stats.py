"""The few statistics the lab reports, without SciPy: percentiles, and the Mann-Whitney U test
(two-sided, normal approximation with tie correction), which asks whether two samples of
latencies come from one distribution without assuming its shape."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], fraction: float) -> float:
    """The value below which `fraction` of the values lie (nearest rank); NaN for none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
    return ordered[rank]


@dataclass(frozen=True)
class MannWhitney:
    u: float
    z: float
    p_value: float


def mann_whitney(first: Sequence[float], second: Sequence[float]) -> MannWhitney:
    """Two-sided Mann-Whitney U test of `first` against `second`.

    Raises:
        ValueError: a sample has fewer than 2 values.
    """
    n1, n2 = len(first), len(second)
    if n1 < 2 or n2 < 2:
        raise ValueError("each sample needs at least 2 values")
    ranked = sorted([(value, 0) for value in first] + [(value, 1) for value in second])
    ranks = [0.0] * len(ranked)
    ties = 0.0
    start = 0
    while start < len(ranked):
        end = start
        while end + 1 < len(ranked) and ranked[end + 1][0] == ranked[start][0]:
            end += 1
        mean_rank = (start + end) / 2 + 1
        for index in range(start, end + 1):
            ranks[index] = mean_rank
        tied = end - start + 1
        ties += tied**3 - tied
        start = end + 1
    rank_sum = sum(rank for rank, (_, group) in zip(ranks, ranked, strict=True) if group == 0)
    u = rank_sum - n1 * (n1 + 1) / 2
    n = n1 + n2
    variance = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
    z = 0.0 if variance <= 0 else (u - n1 * n2 / 2) / math.sqrt(variance)
    p_value = math.erfc(abs(z) / math.sqrt(2))
    return MannWhitney(u, z, p_value)
