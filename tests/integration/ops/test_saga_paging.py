"""The workflow page's cost is bounded however many sagas are in flight: it reads the page's rows
(and, for the stuck filter, at most a capped scan), counts in SQL up to a cap, and says when its
total is a lower bound. Rows are read through a counting wrapper around the real pool.
``erynoa saga ls`` lists through the same page without the caps: run once, it answers exactly."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from erynoa.settings import Settings
from ops import sagas
from tests.conftest import unique
from tests.integration.ops.conftest import saga_cli

pytestmark = pytest.mark.integration


class CountingReads:
    """The pool, counting every row a query hands back to Python."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.rows = 0

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self.pool.fetch(sql, *args)
        self.rows += len(rows)
        return rows

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self.pool.fetchval(sql, *args)


async def in_flight(
    db: asyncpg.Pool,
    provider: str,
    requested: Sequence[datetime],
    *,
    status: str = "awaiting_provider",
    payment: str = "authorized",
    deadline: datetime | None = None,
    last_event_at: datetime,
) -> list[str]:
    """Read-model rows of in-flight sagas for ``provider``, one per request time."""
    ids = [str(uuid.uuid4()) for _ in requested]
    await db.executemany(
        "INSERT INTO bookings (id, customer_id, provider_id, service_id, slot_start, slot_end, "
        "amount_minor, currency, payment_method, status, hold, payment, provider_deadline_at, "
        "correlation_id, events_applied, requested_at, updated_at, last_event_at) "
        "VALUES ($1::uuid, 'cust-paging', $2, gen_random_uuid(), "
        "$3::timestamptz + interval '2 days', $3::timestamptz + interval '2 days 1 hour', "
        "4500, 'EUR', 'pm_card_visa', $4, 'held', $5, $6, $1, 4, $3, $7, $7)",
        [
            (i, provider, at, status, payment, deadline, last_event_at)
            for i, at in zip(ids, requested, strict=True)
        ],
    )
    return ids


async def waiting_for_3ds(
    db: asyncpg.Pool, provider: str, requested: Sequence[datetime], now: datetime
) -> list[str]:
    """In-flight sagas idle past the shortest expectation, so SQL cannot rule them out, that
    are not stuck: the customer still has most of an hour to finish 3-D Secure."""
    return await in_flight(
        db,
        provider,
        requested,
        status="payment_action_required",
        payment="action_required",
        last_event_at=now - timedelta(minutes=10),
    )


async def past_deadline(
    db: asyncpg.Pool, provider: str, requested: Sequence[datetime], now: datetime
) -> list[str]:
    """In-flight sagas whose provider's deadline passed an hour ago: stuck."""
    return await in_flight(
        db,
        provider,
        requested,
        deadline=now - timedelta(hours=1),
        last_event_at=now - timedelta(hours=2),
    )


def hours_ago(now: datetime, first: int, count: int) -> list[datetime]:
    """``count`` request times an hour apart, the oldest ``first`` hours ago."""
    return [now - timedelta(hours=first - i) for i in range(count)]


async def test_a_workflow_page_reads_only_its_own_rows_and_caps_the_count(
    db: asyncpg.Pool,
) -> None:
    now = datetime.now(UTC)
    provider = unique("prov-paging-")
    ids = await in_flight(
        db, provider, hours_ago(now, 30, 25), deadline=now + timedelta(days=3), last_event_at=now
    )
    query = sagas.SagaQuery(provider_id=provider, offset=5, limit=5)
    reads = CountingReads(db)

    capped = await sagas.page_sagas(reads, query, now, total_cap=20)  # type: ignore[arg-type]

    assert [s.booking_id for s in capped.sagas] == ids[5:10]
    assert (capped.total, capped.total_capped) == (20, True)
    assert reads.rows == 5
    exact = await sagas.page_sagas(db, query, now, total_cap=100)
    assert (exact.total, exact.total_capped) == (25, False)
    assert [s.booking_id for s in exact.sagas] == ids[5:10]


async def test_the_stuck_filter_stops_reading_at_its_scan_cap_and_says_the_total_is_a_floor(
    db: asyncpg.Pool,
) -> None:
    now = datetime.now(UTC)
    provider = unique("prov-stuck-")
    waiting = await waiting_for_3ds(db, provider, hours_ago(now, 60, 25), now)
    overdue = await past_deadline(db, provider, hours_ago(now, 30, 5), now)
    query = sagas.SagaQuery(stuck=True, provider_id=provider, limit=3)
    reads = CountingReads(db)

    capped = await sagas.page_sagas(reads, query, now, scan_cap=10)  # type: ignore[arg-type]

    assert reads.rows <= 11  # the cap and one row to tell it was reached
    assert capped.total_capped
    assert capped.sagas == ()
    whole = await sagas.page_sagas(db, query, now, scan_cap=100)
    assert (whole.total, whole.total_capped) == (5, False)
    assert [s.booking_id for s in whole.sagas] == overdue[:3]
    assert not set(waiting) & {s.booking_id for s in whole.sagas}


async def test_saga_ls_finds_the_stuck_saga_behind_a_backlog_the_admin_page_stops_at(
    settings: Settings, db: asyncpg.Pool
) -> None:
    now = datetime.now(UTC)
    provider = unique("prov-ls-")
    # More sagas waiting for 3-D Secure than the stuck filter assesses, all requested before
    # the one saga that is stuck.
    backlog = await waiting_for_3ds(
        db,
        provider,
        [now - timedelta(days=30, seconds=i) for i in range(sagas.STUCK_SCAN_CAP, -1, -1)],
        now,
    )
    [overdue] = await past_deadline(db, provider, [now - timedelta(days=1)], now)

    listed = await saga_cli(
        settings, "ls", "--stuck", "--provider", provider, "--limit", "3", "--json"
    )

    assert listed.exit_code == 0, listed.output
    page = json.loads(listed.stdout)
    assert [s["booking_id"] for s in page["sagas"]] == [overdue]
    assert (page["total"], page["total_capped"]) == (1, False)
    # The polled admin page stops at its cap and says its answer is a floor, never "none".
    admin = await sagas.page_sagas(
        db, sagas.SagaQuery(stuck=True, provider_id=provider, limit=3), now
    )
    assert (admin.sagas, admin.total_capped) == ((), True)
    table = await saga_cli(settings, "ls", "--stuck", "--provider", provider, "--limit", "3")
    assert table.exit_code == 0, table.output
    assert "1 of 1 stuck saga(s) in flight" in table.stdout

    in_flight_all = await saga_cli(settings, "ls", "--provider", provider, "--limit", "2", "--json")
    assert in_flight_all.exit_code == 0, in_flight_all.output
    counted = json.loads(in_flight_all.stdout)
    assert [s["booking_id"] for s in counted["sagas"]] == backlog[:2]
    assert (counted["total"], counted["total_capped"]) == (len(backlog) + 1, False)
