"""An accept the API acknowledges is never overridden by a timeout that ran while it committed.

The race: the accept's transaction starts before the deadline and inserts its
``provider_answers`` row; the provider-response agent's sweep runs after the deadline but before
that COMMIT, so it cannot see the row; the COMMIT then lands and the API answers 202. Unless the
two serialize on the deadline row, the agent emits ``ProviderTimedOut`` for an answer the
provider was told was taken.

The whole system runs (API, materializer, the four agents, as in ``test_saga_api``). A deferred
constraint trigger on this booking's answer holds the accept's COMMIT until the agent has acted
on the deadline: either it has closed the row (it timed out without the answer) or it waits for
the answer's transaction (it shares the deadline row's lock). Which of the two released the
COMMIT is recorded in the same transaction, so the test knows the race was run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import httpx
import pytest

from erynoa.saga import Status
from ops.invariants import ClientRequest, check_invariants
from tests.integration.saga.conftest import Api, LiveSaga
from tests.integration.saga.harness import deadline_started, provider_decided

pytestmark = pytest.mark.integration

# How far ahead of the deadline (by PostgreSQL's clock) the accept is sent: enough for the
# request to reach its transaction in time, little enough that the deadline passes while the
# COMMIT is held.
LEAD_SECONDS = 0.8

HOLD_FUNCTION = """
CREATE OR REPLACE FUNCTION test_hold_answer_commit() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    released text;
BEGIN
    -- Runs at COMMIT of the answer's transaction. Each statement below takes a fresh snapshot
    -- (READ COMMITTED), so it sees what the agent commits meanwhile. Not so pg_stat_activity:
    -- a transaction reads it once and keeps that copy, so each round drops the copy; a stale
    -- one shows the agent's connection with the statement it ran before the deadline.
    LOOP
        PERFORM pg_stat_clear_snapshot();
        IF EXISTS (SELECT 1 FROM provider_deadlines
                   WHERE booking_id = NEW.booking_id AND status <> 'pending') THEN
            released := 'deadline closed first';
            EXIT;
        END IF;
        IF EXISTS (SELECT 1 FROM pg_stat_activity a
                   WHERE pg_backend_pid() = ANY (pg_blocking_pids(a.pid))
                     AND a.query ILIKE '%provider_deadlines%') THEN
            released := 'agent waited for the answer';
            EXIT;
        END IF;
        IF clock_timestamp() > (SELECT deadline_at + interval '15 seconds'
                                FROM provider_deadlines WHERE booking_id = NEW.booking_id) THEN
            -- What the answer's transaction was holding up instead, for the failure message.
            SELECT 'agent never acted; blocked by this COMMIT: ' || coalesce(string_agg(
                       format('%s (%s/%s): %s', a.pid, a.wait_event_type, a.wait_event,
                              left(a.query, 200)), '; '), 'nothing')
            INTO released
            FROM pg_stat_activity a WHERE pg_backend_pid() = ANY (pg_blocking_pids(a.pid));
            EXIT;
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    INSERT INTO test_answer_commit_holds (booking_id, released) VALUES (NEW.booking_id, released);
    RETURN NULL;
END $$
"""


@pytest.fixture
async def http(api: Api) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"{api.base_url}/api/v1", timeout=45) as client:
        yield client


async def hold_answer_commit(db: asyncpg.Pool, booking_id: str) -> str:
    """Hold the COMMIT of any transaction inserting the booking's answer; returns the trigger."""
    await db.execute(
        """CREATE TABLE IF NOT EXISTS test_answer_commit_holds
           (booking_id uuid PRIMARY KEY, released text NOT NULL)"""
    )
    await db.execute(HOLD_FUNCTION)
    name = f"hold_answer_{booking_id}"
    await db.execute(
        f"""CREATE CONSTRAINT TRIGGER "{name}" AFTER INSERT ON provider_answers
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
            WHEN (NEW.booking_id = '{booking_id}'::uuid)
            EXECUTE FUNCTION test_hold_answer_commit()"""
    )
    return name


async def read_model_status(db: asyncpg.Pool, booking_id: str, status: Status) -> None:
    for _ in range(300):
        if await db.fetchval("SELECT status FROM bookings WHERE id = $1", booking_id) == status:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"booking {booking_id}: the read model never showed {status.value}")


async def test_an_accept_committing_across_the_deadline_is_not_timed_out_after_its_202(
    live: LiveSaga,
    api: Api,
    http: httpx.AsyncClient,
) -> None:
    from api.auth import issue_dev_token

    service, booking = await live.book(response_deadline_seconds=6)
    await live.event_log.wait(booking, deadline_started)
    await read_model_status(live.db, booking, Status.AWAITING_PROVIDER)
    trigger = await hold_answer_commit(live.db, booking)
    try:
        left = await live.db.fetchval(
            "SELECT extract(epoch FROM deadline_at - now()) FROM provider_deadlines"
            " WHERE booking_id = $1",
            booking,
        )
        assert left > LEAD_SECONDS, f"the booking reached the API too late ({left:.2f} s left)"
        await asyncio.sleep(float(left) - LEAD_SECONDS)

        token = issue_dev_token(live.settings, service.provider.id, ["provider"], 3600)
        response = await http.post(
            f"/bookings/{booking}/accept", headers={"Authorization": f"Bearer {token}"}
        )
        answered_at = datetime.now(UTC)
    finally:
        await live.db.execute(f'DROP TRIGGER IF EXISTS "{trigger}" ON provider_answers')

    if response.status_code == 409:
        # Refusing is honest: the provider was not told the answer was taken.
        assert response.json()["error"]["code"] == "DEADLINE_PASSED", response.text
        assert (
            await live.db.fetchval(
                "SELECT count(*) FROM provider_answers WHERE booking_id = $1", booking
            )
            == 0
        )
        decided = await live.event_log.wait(booking, provider_decided, within=30)
        assert decided.provider_outcome == "timed_out"
        return

    assert response.status_code == 202, response.text
    row = await live.db.fetchrow(
        """SELECT a.submitted_at < d.deadline_at AS in_time, h.released
           FROM provider_answers a
           JOIN provider_deadlines d USING (booking_id)
           JOIN test_answer_commit_holds h USING (booking_id)
           WHERE a.booking_id = $1""",
        booking,
    )
    assert row is not None
    assert row["in_time"], "the answer was taken after the deadline"
    # The race was run: the agent acted on the deadline while the answer's COMMIT was held.
    assert row["released"] in ("deadline closed first", "agent waited for the answer"), row[
        "released"
    ]

    decided = await live.event_log.wait(booking, provider_decided, within=30)
    assert decided.provider_outcome == "accepted", (
        f"the 202 for an accept taken in time was followed by {decided.provider_outcome} "
        f"(COMMIT released: {row['released']}); events {live.event_log.types(booking)}"
    )
    final = await live.event_log.wait(booking)
    assert final.status == Status.CONFIRMED
    assert live.event_log.count(booking, "ProviderTimedOut") == 0

    told = ClientRequest(
        kind="accept",
        request_key=f"accept-{booking}",
        outcome="acknowledged",
        at=answered_at,
        booking_id=booking,
    )
    violations = await check_invariants(
        live.db, [booking], events=live.event_log.events, requests=[told]
    )
    for _ in range(60):
        if not violations:
            break
        await asyncio.sleep(0.5)  # the materializer folds asynchronously
        violations = await check_invariants(
            live.db, [booking], events=live.event_log.events, requests=[told]
        )
    assert not violations, "\n".join(map(str, violations))
