"""When to send each synthetic booking: an open-loop schedule.

Open loop means the i-th booking is due at ``start + i / rate`` whatever happened to the
earlier ones, so a slow system cannot quietly slow the generator down and hide its own latency
(coordinated omission). The engine bounds the damage of an overloaded system with a separate
in-flight cap; every send the cap (or the event loop) held back is counted as *late*, and the
report says how late, so a run that could not keep its rate says so.

Pure: the clock is a parameter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LATE_AFTER_S = 0.050


@dataclass
class Pacer:
    """The schedule of ``total`` sends at ``rate`` per second (None: all due at once)."""

    rate: float | None
    total: int
    start: float
    sent: int = 0
    late: int = 0
    max_lateness_s: float = 0.0

    def __post_init__(self) -> None:
        if self.rate is not None and self.rate <= 0:
            raise ValueError(f"rate must be positive, got {self.rate}")
        if self.total < 0:
            raise ValueError(f"total must not be negative, got {self.total}")

    def due_at(self, index: int) -> float:
        """When send number ``index`` (from 0) is due."""
        return self.start if self.rate is None else self.start + index / self.rate

    def due_by(self, now: float) -> int:
        """How many sends are due by ``now`` in all (sent or not), at most ``total``."""
        if self.rate is None:
            return self.total
        if now < self.start:
            return 0
        # The tiny epsilon keeps a send due at exactly `now` from being lost to float rounding.
        return min(self.total, math.floor((now - self.start) * self.rate + 1e-9) + 1)

    def ready(self, now: float) -> int:
        """How many sends are due now and not yet taken."""
        return max(0, self.due_by(now) - self.sent)

    def take(self, now: float) -> int:
        """Take the next send (its index) at ``now``, recording how late it went out.

        A send counts as late when it leaves more than ``LATE_AFTER_S`` after it was due:
        below that it is timer and scheduling jitter on a busy machine, not the system
        holding the generator back. In ``--max`` mode nothing is ever late.
        """
        if self.sent >= self.total:
            raise IndexError("every send of the schedule was taken")
        index = self.sent
        self.sent += 1
        if self.rate is not None:
            lateness = max(0.0, now - self.due_at(index))
            self.max_lateness_s = max(self.max_lateness_s, lateness)
            if lateness > LATE_AFTER_S:
                self.late += 1
        return index

    def next_wait(self, now: float) -> float:
        """Seconds until the next send is due (0 if one is due now; inf if none is left)."""
        if self.sent >= self.total:
            return math.inf
        return max(0.0, self.due_at(self.sent) - now)

    @property
    def done(self) -> bool:
        return self.sent >= self.total


def bounded_total(
    rate: float | None, duration_s: float | None, count: int | None, hard_cap: int
) -> int:
    """How many bookings a run sends: ``count``, or what ``rate`` fits in ``duration_s``,
    whichever is smaller, never more than ``hard_cap``."""
    limits = [hard_cap]
    if count is not None:
        limits.append(count)
    if duration_s is not None and rate is not None:
        limits.append(max(1, math.floor(rate * duration_s)))
    return max(0, min(limits))
