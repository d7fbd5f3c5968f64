"""The data a run produces and consumes: options, per-booking records, progress snapshots.

Plain dataclasses shared by ``loadgen.engine`` (which fills them) and ``loadgen.report``
(which measures from them); no I/O.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from erynoa.pacing import bounded_total
from erynoa.saga import Status
from loadgen.profile import Profile
from loadgen.world import Planned, World

Via = Literal["rest", "kafka"]
# Hard limits: every run is bounded in count and in time, whatever the options say.
HARD_MAX_BOOKINGS = 1_000_000
HARD_MAX_SECONDS = 3600.0


class RunRefused(ValueError):
    """The options cannot run (a non-loopback target, no bound, ...); the message says why."""


@dataclass(frozen=True)
class RunOptions:
    via: Via
    profile: Profile
    rate: float | None = None  # bookings per second; None = as fast as the caps allow
    count: int | None = None
    duration_s: float | None = None
    in_flight: int = 2000  # sagas open at once (sent, not settled)
    concurrency: int = 64  # requests on the wire at once (HTTP connections, publishes)
    drain_s: float | None = None  # default: the provider deadline + 30 s
    poll_interval_s: float = 0.1
    api_url: str | None = None  # default: settings.public_base_url
    seed: int | None = None
    verify_get: int = 5
    check_invariants: bool = True
    retire_services: bool = True

    def total(self) -> int:
        if self.count is None and self.duration_s is None:
            raise RunRefused("give --count or --duration (a run is always bounded)")
        if self.rate is None and self.count is None:
            # --max with only a duration: still bounded in count by the hard cap.
            return HARD_MAX_BOOKINGS
        return bounded_total(self.rate, self.duration_s, self.count, HARD_MAX_BOOKINGS)

    def send_window_s(self) -> float:
        return min(self.duration_s or HARD_MAX_SECONDS, HARD_MAX_SECONDS)

    def drain_window_s(self) -> float:
        if self.drain_s is not None:
            return self.drain_s
        timing = self.profile.timing
        slowest_person = max(
            timing.provider_delay.max_ms, timing.action_delay.max_ms, timing.cancel_delay.max_ms
        )
        return self.profile.catalog.response_deadline_seconds + slowest_person / 1000 + 30.0


@dataclass
class Tracked:
    """One booking the run requested, as the watcher last saw it."""

    plan: Planned
    booking_id: str
    sent_at: float  # wall clock (epoch seconds) just before the request left
    acked_at: float  # when the API answered 202 / Kafka acknowledged
    status: str = Status.REQUESTED.value
    events_applied: int = 0
    reacted: set[str] = field(default_factory=set)
    settled_at: float | None = None  # when the watcher saw it settled (coarse: poll interval)


@dataclass
class Progress:
    """A snapshot for the live display."""

    elapsed_s: float
    planned: int
    sent: int
    acked: int
    failed: int
    settled: int
    open: int
    late: int
    errors: int
    sending: bool
    settled_per_s: float
    statuses: dict[str, int]
    max_lag: int


@dataclass
class RunData:
    """Everything ``report.analyze`` needs besides the event log."""

    run_id: str
    options: RunOptions
    world: World
    started_at: float  # wall clock
    send_started: float
    send_ended: float
    ended_at: float
    tracked: dict[str, Tracked]
    planned: int
    failed_requests: int
    late_sends: int
    max_lateness_s: float
    errors: Counter[str]
    lag_timeline: list[tuple[float, dict[str, int]]]
    max_lag_by_group: dict[str, int]
    get_checked: int = 0
