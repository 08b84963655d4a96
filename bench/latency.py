"""Latency percentiles, the one definition both benchmarks report with."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def percentile_ms(seconds: Sequence[float], p: int) -> float:
    """The ``p``-th percentile of durations in seconds, in ms (nan when there are fewer than two)."""
    if len(seconds) < 2:
        return float("nan")
    return statistics.quantiles(seconds, n=100, method="inclusive")[p - 1] * 1000
