"""One load test run, start to finish: set up, send, play the people, drain, measure.

    result = await run(settings, RunOptions(via="kafka", profile=profile, rate=200, count=2000))

1. Refuses anything but loopback targets (API, Kafka, PostgreSQL): a load test is never
   pointed at someone else's system by accident.
2. Writes the run's world (``loadgen.world``) and connects: the API client always (providers
   answer through it), the Kafka publisher for ``via="kafka"``, a consumer-lag sampler.
3. Sends on an open-loop schedule (``erynoa.pacing``) while at most ``in_flight`` sagas are
   open; each booking's send time is taken just before its request leaves.
4. Watches the read model — directly in PostgreSQL, one batched query per ``poll_interval_s``
   for every open booking. Not through ``GET /bookings/{id}``: a GET per open booking per poll
   would multiply the API's load by the poll rate and compete for the rate limit, measuring
   the watcher instead of the system. It reads the very table the GET serves, and a REST run
   checks a sample of bookings through GET at the end (``verify_get``).
5. Plays the people: once the read model shows ``awaiting_provider`` and the provider told,
   the provider accepts or rejects through the API (or never answers), or the customer
   cancels; at ``payment_action_required`` the customer completes 3-D Secure (a signed Stripe
   webhook). Each waits its profile delay first.
6. A booking is *settled* when it reached an outcome and no agent has anything left to do for
   it (``erynoa.saga.next_actions`` is empty for all four: money and hold released,
   customer told). Sending stops at ``count``/``duration``; the run then waits up to
   ``drain_s`` for the open sagas.
7. Measures from the event log (``loadgen.report``) and runs the invariant checker.

Library code: it logs and returns data; ``loadgen.cli`` renders it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from erynoa import saga
from erynoa.codec import default_codec
from erynoa.db import create_pool
from erynoa.kafka import EventPublisher
from erynoa.pacing import Pacer
from erynoa.saga import OUTCOMES, BookingState, Status
from erynoa.settings import Settings
from erynoa.topics import load_catalog
from loadgen import world as w
from loadgen.clients import (
    ApiClient,
    Gateway,
    KafkaGateway,
    RequestFailed,
    RestGateway,
    Tokens,
)
from loadgen.lag import LagSampler
from loadgen.model import Progress, RunData, RunOptions, RunRefused, Tracked
from loadgen.profile import Intent
from loadgen.report import Report, analyze
from ops.invariants.evidence import ClientRequest, RequestKind, RequestOutcome

log = logging.getLogger("loadgen")

# Status changes the simulated people react to.
_ANSWERS = {
    Intent.PROVIDER_ACCEPTS: "accept",
    Intent.ACTION_REQUIRED: "accept",
    Intent.CAPTURE_FAILS: "accept",
    Intent.PROVIDER_REJECTS: "reject",
}


class SystemUnavailable(RuntimeError):
    """The API, Kafka or PostgreSQL did not answer before the run started."""


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_loopback(api_url: str, kafka_bootstrap: str, database_url: str) -> None:
    """Refuse any target that is not this machine (raises ``RunRefused`` naming it)."""
    problems = []
    if not _is_loopback(urlsplit(api_url).hostname):
        problems.append(f"API {api_url}")
    for server in kafka_bootstrap.split(","):
        host = server.strip().rsplit(":", 1)[0]
        if not _is_loopback(host):
            problems.append(f"Kafka {server.strip()}")
    if not _is_loopback(urlsplit(database_url).hostname):
        problems.append(f"PostgreSQL {urlsplit(database_url).hostname}")
    if problems:
        raise RunRefused(
            "loadgen only targets this machine (127.0.0.1); refusing " + ", ".join(problems)
        )


@dataclass(eq=False)
class _Run:
    """The state of a run in progress (one instance per ``run`` call)."""

    settings: Settings
    options: RunOptions
    world: w.World
    pool: asyncpg.Pool
    api: ApiClient
    gateway: Gateway
    lag: LagSampler | None
    planner: w.Planner = field(init=False)
    policy: saga.Policy = field(init=False)
    tracked: dict[str, Tracked] = field(init=False, default_factory=dict)
    # What the run's clients were told, for the invariant checker's rule 8.
    requests: list[ClientRequest] = field(init=False, default_factory=list)
    open: set[str] = field(init=False, default_factory=set)
    errors: Counter[str] = field(init=False, default_factory=Counter)
    failed: int = field(init=False, default=0)
    settled: int = field(init=False, default=0)
    pending_submits: int = field(init=False, default=0)
    open_slots: asyncio.Semaphore = field(init=False)
    wire: asyncio.Semaphore = field(init=False)
    tasks: set[asyncio.Task[None]] = field(init=False, default_factory=set)
    t0: float = field(init=False, default_factory=time.monotonic)
    sending: bool = field(init=False, default=True)
    send_started: float = field(init=False, default_factory=time.time)
    send_ended: float = field(init=False, default_factory=time.time)
    pacer: Pacer = field(init=False)
    recent_settled: list[float] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.planner = w.Planner(self.world, seed=(self.options.seed or 0) + 1)
        self.policy = saga.Policy.from_settings(self.settings)
        self.open_slots = asyncio.Semaphore(self.options.in_flight)
        self.wire = asyncio.Semaphore(self.options.concurrency)
        self.pacer = Pacer(self.options.rate, self.options.total(), time.monotonic())

    # --- sending ---------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def send_all(self) -> None:
        """Send on schedule until the count is reached or the send window closes."""
        loop = asyncio.get_running_loop()
        self.pacer = Pacer(self.options.rate, self.options.total(), loop.time())
        window_ends = loop.time() + self.options.send_window_s()
        self.send_started = time.time()
        try:
            while not self.pacer.done and loop.time() < window_ends:
                if self.pacer.ready(loop.time()) == 0:
                    await asyncio.sleep(min(self.pacer.next_wait(loop.time()), 0.05))
                    continue
                # Both caps are waited for *before* taking the send, so a held-back send is
                # counted late by the pacer: the report shows the system could not keep up.
                # Bounded waits: a stalled system must not keep the run from ending.
                if not await _acquire(self.open_slots, window_ends - loop.time()):
                    break
                if not await _acquire(self.wire, window_ends - loop.time()):
                    self.open_slots.release()
                    break
                index = self.pacer.take(loop.time())
                self.pending_submits += 1
                self._spawn(self._submit(self.planner.plan(index)))
        finally:
            self.send_ended = time.time()
            self.sending = False

    async def _submit(self, plan: w.Planned) -> None:
        sent_at = time.time()
        try:
            booking_id = await self.gateway.request(plan)
        except RequestFailed as exc:
            self._fail(exc.kind)
            # An HTTP answer (503, 429, 4xx) says nothing was changed; a timeout says nothing.
            answered = re.search(r" [45]\d\d\b", exc.kind) is not None
            self._record_create(plan, None, "refused" if answered else "unknown", sent_at)
            self.open_slots.release()
            return
        except Exception as exc:  # e.g. a Kafka error: counted, never fatal to the run
            self._fail(f"{self.gateway.via} request {type(exc).__name__}")
            log.debug("request failed", exc_info=True)
            self._record_create(plan, None, "unknown", sent_at)
            self.open_slots.release()
            return
        finally:
            self.wire.release()
            self.pending_submits -= 1
        self.tracked[booking_id] = Tracked(plan, booking_id, sent_at, time.time())
        self._record_create(plan, booking_id, "acknowledged", sent_at)
        self.open.add(booking_id)

    def _record_create(
        self, plan: w.Planned, booking_id: str | None, outcome: RequestOutcome, sent_at: float
    ) -> None:
        self.requests.append(
            ClientRequest(
                "create",
                f"create-{plan.index}",
                outcome,
                datetime.now(UTC),
                booking_id=booking_id,
                customer_id=plan.customer_id,
                service_id=plan.service.id,
                slot_start=plan.slot_start,
                sent_at=datetime.fromtimestamp(sent_at, UTC),
            )
        )

    def _fail(self, kind: str) -> None:
        self.failed += 1
        self.errors[kind] += 1

    # --- watching and reacting -----------------------------------------------------------

    async def watch(self, drain_ends: Callable[[], float | None]) -> None:
        """Poll the read model until every booking settled (or the drain window closed)."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            if self.open:
                await self._poll(list(self.open))
            if not self.sending and self.pending_submits == 0 and not self.open:
                return
            ends = drain_ends()
            if ends is not None and loop.time() >= ends:
                return
            await asyncio.sleep(max(0.0, self.options.poll_interval_s - (loop.time() - started)))

    async def _poll(self, ids: list[str]) -> None:
        changed_outcomes: list[str] = []
        for chunk in _chunks(ids, 5000):
            try:
                rows = await self.pool.fetch(
                    """SELECT id::text AS id, status, events_applied, payment_id,
                              provider_notified
                       FROM bookings WHERE id = ANY($1::uuid[])""",
                    chunk,
                )
            except (OSError, asyncpg.PostgresError) as exc:
                self.errors[f"read model poll {type(exc).__name__}"] += 1
                return
            for row in rows:
                tracked = self.tracked[row["id"]]
                if row["events_applied"] == tracked.events_applied:
                    continue
                tracked.events_applied = row["events_applied"]
                tracked.status = row["status"]
                self._react(tracked, row["payment_id"], row["provider_notified"])
                if tracked.status in OUTCOMES:
                    changed_outcomes.append(tracked.booking_id)
        if changed_outcomes:
            await self._settle(changed_outcomes)

    async def _settle(self, ids: list[str]) -> None:
        """Mark bookings whose saga has nothing left to do (their fold says so)."""
        rows = await self.pool.fetch(
            "SELECT id::text AS id, state FROM bookings WHERE id = ANY($1::uuid[])", ids
        )
        # Far in the future: a deadline that has not passed yet must not count as work left.
        later = datetime.now(UTC) + timedelta(days=3650)
        now = time.time()
        for row in rows:
            if not isinstance(row["state"], dict):
                continue
            state = BookingState.from_json(row["state"])
            if state.is_outcome and not any(
                saga.next_actions(agent, state, later, self.policy) for agent in saga.AGENTS
            ):
                tracked = self.tracked[row["id"]]
                if tracked.settled_at is None:
                    tracked.settled_at = now
                    self.settled += 1
                    self.recent_settled.append(now)
                    self.open.discard(row["id"])
                    self.open_slots.release()

    def _react(self, tracked: Tracked, payment_id: str | None, provider_notified: bool) -> None:
        intent = tracked.plan.intent
        status = tracked.status
        # The provider and the customer act once the provider has been told about the request,
        # as people do: the request reached them. (Answering earlier, straight off the read
        # model, races the notification agent: the saga then never tells the provider, and the
        # invariant checker reports it.)
        if status == Status.AWAITING_PROVIDER and provider_notified:
            if intent is Intent.CUSTOMER_CANCELS:
                self._once(tracked, "cancel", lambda: self._cancel(tracked))
            elif intent in _ANSWERS:
                decision = _ANSWERS[intent]
                self._once(tracked, "answer", lambda: self._answer(tracked, decision))
        elif (
            status == Status.PAYMENT_ACTION_REQUIRED
            and intent is Intent.ACTION_REQUIRED
            and payment_id is not None
        ):
            found = payment_id
            self._once(tracked, "3ds", lambda: self._complete_action(tracked, found))

    def _once(self, tracked: Tracked, what: str, action: Callable[[], Awaitable[None]]) -> None:
        if what not in tracked.reacted:
            tracked.reacted.add(what)
            self._spawn(action())

    async def _after_delay(
        self,
        tracked: Tracked,
        operation: Callable[[], Awaitable[None]],
        kind: RequestKind | None = None,
    ) -> None:
        if tracked.plan.reaction_delay_s > 0:
            await asyncio.sleep(tracked.plan.reaction_delay_s)
        async with self.wire:
            try:
                await operation()
                if kind is not None:
                    self.requests.append(
                        ClientRequest(
                            kind,
                            f"{kind}-{tracked.booking_id}",
                            "acknowledged",
                            datetime.now(UTC),
                            booking_id=tracked.booking_id,
                        )
                    )
            except RequestFailed as exc:
                self.errors[exc.kind] += 1
            except Exception as exc:
                self.errors[f"{type(exc).__name__} while reacting"] += 1
                log.debug("reaction failed", exc_info=True)

    async def _answer(self, tracked: Tracked, decision: str) -> None:
        provider = tracked.plan.service.provider_id
        await self._after_delay(
            tracked,
            lambda: self.api.answer(tracked.booking_id, provider, decision),
            "accept" if decision == "accept" else "reject",
        )

    async def _cancel(self, tracked: Tracked) -> None:
        await self._after_delay(
            tracked, lambda: self.gateway.cancel(tracked.booking_id, tracked.plan), "cancel"
        )

    async def _complete_action(self, tracked: Tracked, payment_id: str) -> None:
        await self._after_delay(
            tracked, lambda: self.api.complete_payment_action(tracked.booking_id, payment_id)
        )

    # --- reporting ---------------------------------------------------------------------------

    def progress(self) -> Progress:
        now = time.time()
        self.recent_settled = [t for t in self.recent_settled if now - t <= 5.0]
        statuses = Counter(self.tracked[b].status for b in self.open)
        lag = self.lag.samples.timeline[-1][1] if self.lag and self.lag.samples.timeline else {}
        return Progress(
            elapsed_s=time.monotonic() - self.t0,
            planned=self.pacer.total,
            sent=self.pacer.sent,
            acked=len(self.tracked),
            failed=self.failed,
            settled=self.settled,
            open=len(self.open),
            late=self.pacer.late,
            errors=sum(self.errors.values()),
            sending=self.sending,
            settled_per_s=len(self.recent_settled) / 5.0,
            statuses=dict(statuses),
            max_lag=max(lag.values(), default=0),
        )

    async def verify_with_get(self, sample: int) -> int:
        """REST runs: does ``GET /bookings/{id}`` show what the read model shows?"""
        checked = 0
        for tracked in list(self.tracked.values())[:sample]:
            try:
                shown = await self.api.booking_status(tracked.booking_id, tracked.plan.customer_id)
            except RequestFailed as exc:
                self.errors[exc.kind] += 1
                continue
            checked += 1
            row = await self.pool.fetchval(
                "SELECT status FROM bookings WHERE id = $1::uuid", tracked.booking_id
            )
            if shown != row:
                self.errors["GET /bookings/{id} disagrees with the read model"] += 1
        return checked


async def _acquire(semaphore: asyncio.Semaphore, within_s: float) -> bool:
    """Take the semaphore unless that takes longer than ``within_s`` (False then)."""
    if within_s <= 0:
        return False
    try:
        await asyncio.wait_for(semaphore.acquire(), within_s)
    except TimeoutError:
        return False
    return True


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def _api_alive(api_url: str) -> None:
    import httpx

    url = api_url.rstrip("/") + "/api/v1/health/live"
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(url)
    except httpx.HTTPError as exc:
        raise SystemUnavailable(f"the API at {api_url} does not answer ({exc})") from None
    if response.status_code != 200:
        raise SystemUnavailable(f"the API at {url} answered {response.status_code}")


async def run(
    settings: Settings,
    options: RunOptions,
    on_progress: Callable[[Progress], None] | None = None,
    progress_interval_s: float = 0.5,
) -> Report:
    """Run one load test and return its report (see the module docstring)."""
    api_url = options.api_url or settings.public_base_url
    check_loopback(api_url, settings.kafka_bootstrap, settings.database_url)
    options.total()  # refuses an unbounded run before anything is set up
    if options.rate is not None and options.rate <= 0:
        raise RunRefused("--rate must be positive")
    await _api_alive(api_url)

    run_id = w.new_run_id()
    seed = options.seed if options.seed is not None else random.randrange(2**31)
    options = _with_seed(options, seed)
    try:
        pool = await create_pool(settings, min_size=1, max_size=8)
    except (OSError, asyncpg.PostgresError) as exc:
        raise SystemUnavailable(f"PostgreSQL at {settings.database_url}: {exc}") from None
    world = w.World.build(options.profile, run_id, seed, datetime.now(UTC))
    started_at = time.time()
    catalog = load_catalog(settings.topics_file, settings.topics_environment, settings.topic_prefix)
    publisher: EventPublisher | None = None
    lag: LagSampler | None = None
    ttl = int(options.send_window_s() + options.drain_window_s() + 600)
    tokens = Tokens(settings, ttl)
    api = ApiClient(
        api_url,
        tokens,
        settings.stripe_webhook_secret,
        run_id,
        # The API serves one request per connection at a time; past a few dozen
        # connections more only add queueing inside the one uvicorn process.
        max_connections=min(options.concurrency, 64),
    )
    try:
        await w.create(pool, world)
        # Everything that costs time once (tokens, connections) happens before the clock runs.
        tokens.warm((p, "provider") for p in world.providers)
        if options.via == "rest":
            tokens.warm((c, "customer") for c in world.customers)
        try:
            await api.warm()
        except RequestFailed as exc:
            raise SystemUnavailable(f"the API at {api_url}: {exc}") from None
        gateway: Gateway
        if options.via == "kafka":
            publisher = EventPublisher.create(
                settings.kafka_bootstrap, f"loadgen-{run_id}", default_codec(), catalog
            )
            await publisher.start()
            gateway = KafkaGateway(publisher, run_id)
        else:
            gateway = RestGateway(api)
        lag = LagSampler(
            settings.kafka_bootstrap, {c.name: c.group_id for c in catalog.consumers.values()}
        )
        try:
            await lag.start()
        except Exception as exc:  # lag is a measurement, not a reason to refuse the run
            log.warning("consumer lag will not be measured: %s", exc)
            lag = None

        state = _Run(settings, options, world, pool, api, gateway, lag)
        drain: dict[str, float] = {}

        def drain_ends() -> float | None:
            if state.sending:
                return None
            if "ends" not in drain:
                drain["ends"] = asyncio.get_running_loop().time() + options.drain_window_s()
            return drain["ends"]

        ticker = None
        if on_progress is not None:
            ticker = asyncio.create_task(_tick(state, on_progress, progress_interval_s))
        sender = asyncio.create_task(state.send_all())
        try:
            await state.watch(drain_ends)
            await sender
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            for task in list(state.tasks):
                task.cancel()
            await asyncio.gather(*state.tasks, return_exceptions=True)
            if ticker is not None:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
        if on_progress is not None:
            on_progress(state.progress())
        get_checked = 0
        if options.via == "rest" and options.verify_get > 0:
            get_checked = await state.verify_with_get(options.verify_get)
        if lag is not None:
            await lag.stop()
        data = RunData(
            run_id=run_id,
            options=options,
            world=world,
            started_at=started_at,
            send_started=state.send_started,
            send_ended=state.send_ended,
            ended_at=time.time(),
            tracked=state.tracked,
            planned=state.pacer.total,
            failed_requests=state.failed,
            late_sends=state.pacer.late,
            max_lateness_s=state.pacer.max_lateness_s,
            errors=state.errors,
            lag_timeline=lag.samples.timeline if lag else [],
            max_lag_by_group=lag.samples.max_by_group if lag else {},
            get_checked=get_checked,
        )
        report = await analyze(pool, data, default_codec())
        if options.check_invariants and data.tracked:
            report.invariants = await _invariants(
                pool, list(data.tracked), settings, state.requests
            )
        return report
    finally:
        if lag is not None:
            with contextlib.suppress(Exception):
                await lag.stop()
        if publisher is not None:
            await publisher.stop()
        await api.close()
        if options.retire_services:
            with contextlib.suppress(Exception):
                await w.retire(pool, world)
        await pool.close()


async def _tick(state: _Run, on_progress: Callable[[Progress], None], interval: float) -> None:
    while True:
        on_progress(state.progress())
        await asyncio.sleep(interval)


def _with_seed(options: RunOptions, seed: int) -> RunOptions:
    return replace(options, seed=seed)


async def _invariants(
    pool: asyncpg.Pool,
    booking_ids: list[str],
    settings: Settings,
    requests: list[ClientRequest],
) -> dict[str, Any]:
    """Run the invariant checker (``ops.invariants``) over the run's bookings and what its
    clients were told."""
    from ops.invariants import check_invariants

    policy = saga.Policy.from_settings(settings)
    violations = await check_invariants(pool, booking_ids, policy=policy, requests=requests)
    return {
        "checked": True,
        "error": None,
        "bookings": len(booking_ids),
        "violations": [str(v) for v in violations],
    }
