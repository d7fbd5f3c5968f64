"""The open-loop schedule: due times, catching up after a stall, counting late sends."""

from __future__ import annotations

import math

import pytest

from erynoa.pacing import LATE_AFTER_S, Pacer, bounded_total


def test_sends_are_due_at_even_intervals() -> None:
    pacer = Pacer(rate=10, total=5, start=100.0)
    assert [pacer.due_at(i) for i in range(3)] == pytest.approx([100.0, 100.1, 100.2])
    assert pacer.due_by(99.9) == 0
    assert pacer.due_by(100.0) == 1
    assert pacer.due_by(100.25) == 3
    assert pacer.due_by(1000.0) == 5  # never more than the total


def test_a_stalled_sender_catches_up_at_once_and_counts_late_sends() -> None:
    pacer = Pacer(rate=100, total=10, start=0.0)
    # Nothing was taken for half a second: everything is due now (open loop, no slowing down).
    assert pacer.ready(0.5) == 10
    taken = [pacer.take(0.5) for _ in range(10)]
    assert taken == list(range(10))
    assert pacer.late == 10
    assert pacer.max_lateness_s == pytest.approx(0.5)
    assert pacer.done
    assert pacer.next_wait(0.6) == math.inf


def test_sends_on_time_are_not_late() -> None:
    pacer = Pacer(rate=10, total=3, start=0.0)
    for i in range(3):
        now = pacer.due_at(i) + LATE_AFTER_S / 2  # jitter below the threshold
        assert pacer.ready(now) == 1
        pacer.take(now)
    assert pacer.late == 0


def test_next_wait_is_the_time_to_the_next_due_send() -> None:
    pacer = Pacer(rate=4, total=3, start=0.0)
    pacer.take(0.0)
    assert pacer.next_wait(0.1) == pytest.approx(0.15)
    assert pacer.next_wait(0.3) == 0.0


def test_max_mode_has_everything_due_and_nothing_late() -> None:
    pacer = Pacer(rate=None, total=3, start=0.0)
    assert pacer.ready(0.0) == 3
    for _ in range(3):
        pacer.take(50.0)
    assert pacer.late == 0


def test_taking_more_than_the_total_is_an_error() -> None:
    pacer = Pacer(rate=None, total=1, start=0.0)
    pacer.take(0.0)
    with pytest.raises(IndexError):
        pacer.take(0.0)


@pytest.mark.parametrize("rate", [0, -5])
def test_a_rate_must_be_positive(rate: float) -> None:
    with pytest.raises(ValueError, match="rate must be positive"):
        Pacer(rate=rate, total=1, start=0.0)


def test_a_run_is_bounded_by_the_smallest_limit() -> None:
    assert bounded_total(rate=100, duration_s=10, count=None, hard_cap=10_000) == 1000
    assert bounded_total(rate=100, duration_s=10, count=50, hard_cap=10_000) == 50
    assert bounded_total(rate=None, duration_s=None, count=5_000, hard_cap=1_000) == 1_000
    assert bounded_total(rate=0.5, duration_s=1, count=None, hard_cap=10) == 1
