"""The report's arithmetic: nearest-rank percentiles, summaries, per-second series."""

from __future__ import annotations

import pytest

from loadgen.stats import EMPTY, percentile, rate, series, steady_rate, summarize


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100


def test_a_percentile_is_always_an_observed_value() -> None:
    values = [1.0, 2.0, 10.0]
    assert percentile(values, 50) == 2.0
    assert percentile(values, 99) == 10.0
    assert percentile(values, 1) == 1.0


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


@pytest.mark.parametrize("p", [0, -1, 101])
def test_percentile_out_of_range_is_an_error(p: float) -> None:
    with pytest.raises(ValueError, match="p must be"):
        percentile([1.0], p)


def test_summaries_are_in_milliseconds_from_seconds() -> None:
    s = summarize([0.010, 0.020, 0.030, 0.040, 1.000])
    assert s.count == 5
    assert s.p50_ms == pytest.approx(30.0)
    assert s.p99_ms == pytest.approx(1000.0)
    assert s.max_ms == pytest.approx(1000.0)
    assert s.mean_ms == pytest.approx(220.0)


def test_the_summary_of_nothing_is_empty() -> None:
    assert summarize([]) == EMPTY
    assert summarize([]).to_json()["count"] == 0


def test_series_buckets_by_second_and_keeps_empty_seconds() -> None:
    buckets = series([(0.1, 0.010), (0.9, 0.030), (2.5, 0.100)], width_s=1.0)
    assert [b.count for b in buckets] == [2, 0, 1]
    assert buckets[0].p50_ms == pytest.approx(10.0)
    assert buckets[0].p99_ms == pytest.approx(30.0)
    assert buckets[1].p99_ms == 0.0
    assert buckets[2].start_s == 2.0


def test_points_before_the_start_count_in_the_first_second() -> None:
    assert [b.count for b in series([(-0.5, 0.01), (0.5, 0.01)])] == [2]


def test_no_points_no_series() -> None:
    assert series([]) == []


def test_rate_of_nothing_is_zero() -> None:
    assert rate(0, 10) == 0.0
    assert rate(10, 0) == 0.0
    assert rate(10, 2) == 5.0


def test_steady_rate_ignores_ramp_up_and_drain() -> None:
    # 100 completions per second for 10 s, plus a slow tail of 10 over the next 10 s.
    times = [i / 100 for i in range(1000)] + [10 + i for i in range(10)]
    assert steady_rate(times) == pytest.approx(100, rel=0.05)
    assert rate(len(times), times[-1] - times[0]) < 60  # what the tail does to the plain rate


def test_steady_rate_of_few_points_uses_them_all() -> None:
    assert steady_rate([0.0, 1.0, 2.0]) == pytest.approx(1.5)
    assert steady_rate([5.0]) == 0.0
