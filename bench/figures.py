"""A figure over rounds (median, range) and its table cell; ratios paired by round.

Shared by the report's tables (``report``, ``broker_report``, ``scaling``),
which build on these and on nothing of one another.
"""

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from bench.suite import Results


@dataclass(frozen=True)
class Stat:
    median: float
    low: float
    high: float
    n: int


def stat(values: Sequence[float]) -> Stat | None:
    if not values:
        return None
    return Stat(statistics.median(values), min(values), max(values), len(values))


def values(results: Results, workload: str, metric: str) -> list[float]:
    return [
        run[metric]
        for run in results.runs.get(workload, [])
        if run is not None and metric in run
    ]


def paired(results: Results, top: str, bottom: str, metric: str) -> list[float]:
    """Ratios top/bottom of the runs measured in the same round."""
    ratios = []
    for a, b in zip(
        results.runs.get(top, []), results.runs.get(bottom, []), strict=False
    ):
        if a is not None and b is not None and metric in a and b.get(metric):
            ratios.append(a[metric] / b[metric])
    return ratios


def fmt(value: float, digits: int = 3) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def cell(s: Stat | None, digits: int = 3) -> str:
    if s is None:
        return "-"
    if s.n == 1:
        return fmt(s.median, digits)
    return f"{fmt(s.median, digits)} ({fmt(s.low, digits)}\u2013{fmt(s.high, digits)})"
