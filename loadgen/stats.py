"""The arithmetic of a load test: percentiles, latency summaries, per-second series.

Pure functions over plain numbers, so the report's math is tested without a stack.
Percentiles use the nearest-rank method: p99 is a latency some request really had, never an
interpolation between two of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile (0 < p <= 100) of already sorted values."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 < p <= 100:
        raise ValueError(f"p must be in (0, 100], got {p}")
    rank = math.ceil(p / 100 * len(sorted_values))
    return sorted_values[max(rank, 1) - 1]


@dataclass(frozen=True)
class LatencySummary:
    """Latencies in milliseconds; all zero when ``count`` is 0."""

    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    def to_json(self) -> dict[str, float | int]:
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in asdict(self).items()}


EMPTY = LatencySummary(0, 0.0, 0.0, 0.0, 0.0, 0.0)


def summarize(seconds: Iterable[float]) -> LatencySummary:
    """Summarize latencies given in seconds (reported in milliseconds)."""
    values = sorted(s * 1000.0 for s in seconds)
    if not values:
        return EMPTY
    return LatencySummary(
        count=len(values),
        p50_ms=percentile(values, 50),
        p95_ms=percentile(values, 95),
        p99_ms=percentile(values, 99),
        max_ms=values[-1],
        mean_ms=sum(values) / len(values),
    )


@dataclass(frozen=True)
class Bucket:
    """One time slice of a run: what completed in it and how long those took."""

    start_s: float
    count: int
    p50_ms: float
    p99_ms: float


def series(points: Iterable[tuple[float, float]], width_s: float = 1.0) -> list[Bucket]:
    """Bucket ``(t_seconds, latency_seconds)`` points by ``t`` into slices of ``width_s``.

    Every slice from 0 to the last point is present (an empty one has count 0), so a plot
    shows a stall as a dip instead of skipping it. Points before 0 go into the first slice.
    """
    if width_s <= 0:
        raise ValueError("width_s must be positive")
    by_slice: dict[int, list[float]] = {}
    for t, latency in points:
        by_slice.setdefault(max(0, int(t // width_s)), []).append(latency * 1000.0)
    if not by_slice:
        return []
    buckets = []
    for index in range(max(by_slice) + 1):
        values = sorted(by_slice.get(index, []))
        buckets.append(
            Bucket(
                start_s=index * width_s,
                count=len(values),
                p50_ms=percentile(values, 50) if values else 0.0,
                p99_ms=percentile(values, 99) if values else 0.0,
            )
        )
    return buckets


def rate(count: int, seconds: float) -> float:
    """Events per second; 0 for an empty or instantaneous interval."""
    return count / seconds if seconds > 0 and count > 0 else 0.0


def steady_rate(completion_times: Sequence[float], trim: float = 0.1) -> float:
    """Completions per second over the middle of a run, without its ramp-up and drain.

    Drops the first and last ``trim`` share of the completions (sorted by time) and divides
    the rest by the time they span; fewer than 10 completions fall back to the whole run.
    """
    times = sorted(completion_times)
    if len(times) < 10:
        return rate(len(times), times[-1] - times[0]) if len(times) > 1 else 0.0
    cut = int(len(times) * trim)
    middle = times[cut : len(times) - cut]
    return rate(len(middle) - 1, middle[-1] - middle[0])
