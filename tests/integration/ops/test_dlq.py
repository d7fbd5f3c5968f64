"""Dead-letter inspection and replay against the real stack (Kafka, PostgreSQL).

Each test parks its own two messages in ``reservation.dlq`` the way the agents do (complete
failure headers): a ``BookingRequested`` that came from ``bookings`` and a garbage message. The
module has its own topics and database (``own_namespace``), so replayed copies never reach the
real agents; tests still share them, so every query filters by the test's own booking id.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from typer.testing import CliRunner, Result

from cli.ops import dlq_app
from erynoa import events as ev
from erynoa import kafka as k
from erynoa.codec import default_codec
from erynoa.settings import Settings
from erynoa.topics import TopicCatalog
from ops import dead_letters, replay
from tests.conftest import unique
from tests.integration.materializing import raw_producer
from tests.integration.ops.conftest import end_offsets, keyed_since
from tests.integration.saga_events import request

pytestmark = pytest.mark.integration

GARBAGE = b"\x00\x01this is not avro at all"


@dataclass(frozen=True)
class Poisoned:
    """What one test parked in the dead-letter topic."""

    booking_id: str
    dlq_topic: str
    origin: str
    requested: ev.BookingRequested
    body: bytes
    parked_at: datetime


def failure_headers(
    origin: str, error: str, error_class: str, attempts: int
) -> list[tuple[str, bytes]]:
    first = (datetime.now(UTC) - timedelta(minutes=2)).isoformat()
    return [
        (k.H_ATTEMPTS, str(attempts).encode()),
        (k.H_ERROR, error.encode()),
        (k.H_ERROR_CLASS, error_class.encode()),
        (k.H_ERROR_KIND, b"retryable" if attempts > 1 else b"permanent"),
        (k.H_ORIGIN_TOPIC, origin.encode()),
        (k.H_ORIGIN_PARTITION, b"2"),
        (k.H_ORIGIN_OFFSET, b"17"),
        (k.H_FIRST_FAILURE, first.encode()),
        (k.H_LAST_FAILURE, datetime.now(UTC).isoformat().encode()),
        (k.H_NOT_BEFORE, b"0"),
        (k.H_CONSUMER, b"reservation"),
    ]


@pytest.fixture
async def poisoned(settings: Settings, catalog: TopicCatalog) -> Poisoned:
    """A decodable BookingRequested and a garbage message, both keyed by a fresh booking."""
    booking_id = unique()
    topic = catalog.consumer("reservation").dead_letter_topic
    origin = catalog.topic_for("BookingRequested")
    requested = request(booking_id, datetime.now(UTC))
    body = default_codec().encode(requested)
    async with raw_producer(settings, "test-dlq") as producer:
        parked_at = datetime.now(UTC) - timedelta(seconds=1)
        await producer.send_and_wait(
            topic,
            value=body,
            key=booking_id.encode(),
            headers=[
                (k.H_EVENT_TYPE, b"BookingRequested"),
                (k.H_TRACEPARENT, b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                *failure_headers(origin, "GatewayUnavailable: timed out", "GatewayUnavailable", 3),
            ],
        )
        await producer.send_and_wait(
            topic,
            value=GARBAGE,
            key=booking_id.encode(),
            headers=failure_headers(
                origin, "not Avro single-object encoding", "UndecodableEvent", 1
            ),
        )
    return Poisoned(booking_id, topic, origin, requested, body, parked_at)


async def find(settings: Settings, catalog: TopicCatalog, **query: Any) -> dead_letters.ScanResult:
    """The dead letters that match ``query`` (``dead_letters.Query``'s fields)."""
    return await dead_letters.find(
        catalog, settings.kafka_bootstrap, dead_letters.Query(**query), default_codec()
    )


async def requested_dead_letter(
    settings: Settings, catalog: TopicCatalog, poisoned: Poisoned
) -> dead_letters.DeadLetter:
    """The test's decodable dead letter (its ``BookingRequested``), found as an operator would."""
    found = await find(
        settings, catalog, booking_id=poisoned.booking_id, event_type="BookingRequested"
    )
    (message,) = found.messages
    return message


async def audit_rows(db: asyncpg.Pool, booking_id: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await db.fetch(
        "SELECT * FROM dlq_replays WHERE booking_id = $1 ORDER BY dlq_offset", booking_id
    )
    return rows


async def cli(settings: Settings, *args: str) -> Result:
    """Run ``erynoa dlq <args>`` against ``settings``' namespace, in a thread (the command runs
    its own event loop)."""
    env = {
        "ERYNOA_TOPIC_PREFIX": settings.topic_prefix,
        "ERYNOA_DATABASE_URL": settings.database_url,
        "COLUMNS": "200",  # a wide terminal, so tables do not fold words
    }
    return await asyncio.to_thread(lambda: CliRunner().invoke(dlq_app, list(args), env=env))


async def test_ls_counts_dead_letters_by_error_class(
    settings: Settings, catalog: TopicCatalog, poisoned: Poisoned
) -> None:
    summaries = await dead_letters.summarize(catalog, settings.kafka_bootstrap)

    by_topic = {s.topic: s for s in summaries}
    assert set(by_topic) == {t.name for t in catalog.by_kind("dead_letter")}
    mine = by_topic[poisoned.dlq_topic]
    assert mine.exists
    assert mine.consumer == "reservation"
    assert mine.depth >= 2
    assert mine.error_classes.get("GatewayUnavailable", 0) >= 1
    assert mine.error_classes.get("UndecodableEvent", 0) >= 1
    assert mine.newest is not None
    assert mine.newest >= poisoned.parked_at
    assert mine.oldest is not None
    assert mine.oldest <= mine.newest

    result = await cli(settings, "ls", "--json")
    assert result.exit_code == 0, result.output
    listed = {s["topic"]: s for s in json.loads(result.stdout)}
    assert listed[poisoned.dlq_topic]["depth"] >= 2


async def test_show_decodes_and_filters_by_booking_and_error_class(
    settings: Settings, catalog: TopicCatalog, poisoned: Poisoned
) -> None:
    found = await find(settings, catalog, booking_id=poisoned.booking_id)

    assert len(found.messages) == 2
    decoded, garbage = found.messages
    assert decoded.event == poisoned.requested
    assert decoded.event_type == "BookingRequested"
    assert decoded.event_id == poisoned.requested.event_id
    f = decoded.failure
    assert (f.error_class, f.attempts, f.consumer) == ("GatewayUnavailable", 3, "reservation")
    assert (f.origin_topic, f.origin_partition, f.origin_offset) == (poisoned.origin, 2, 17)
    assert f.first_failure is not None
    assert f.last_failure is not None
    assert garbage.event is None
    assert garbage.undecodable is not None
    assert garbage.size == len(GARBAGE)
    assert garbage.hex_preview().startswith("00 01 74 68")
    assert garbage.booking_id == poisoned.booking_id  # from the key

    only_garbage = await find(
        settings, catalog, booking_id=poisoned.booking_id, error_class="undecodableevent"
    )
    assert [m.offset for m in only_garbage.messages] == [garbage.offset]
    by_type = await find(
        settings,
        catalog,
        topics=(poisoned.dlq_topic,),
        booking_id=poisoned.booking_id,
        event_type="BookingRequested",
        since=poisoned.parked_at - timedelta(minutes=1),
    )
    assert [m.offset for m in by_type.messages] == [decoded.offset]
    later = await find(
        settings,
        catalog,
        booking_id=poisoned.booking_id,
        since=datetime.now(UTC) + timedelta(minutes=1),
    )
    assert later.messages == ()

    result = await cli(settings,
        "show", "--topic", "reservation", "--booking-id", poisoned.booking_id,
        "--error-class", "GatewayUnavailable", "--since", "1h", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)["messages"]
    assert [m["event_id"] for m in shown] == [poisoned.requested.event_id]
    assert shown[0]["failure"]["origin_topic"] == poisoned.origin
    table = await cli(settings, "show", "--booking-id", poisoned.booking_id)
    assert table.exit_code == 0, table.output
    assert "BookingRequested" in table.stdout
    assert "undecodable" in table.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["show", "--topic", "no-such-topic"],
        ["show", "--since", "yesterday-ish"],
        ["show", "--since", "1h", "--until", "2h"],
        ["show", "--booking-id", "not-a-uuid"],
        ["replay", "--event-type", "NoSuchEvent", "--dry-run"],
    ],
)
async def test_bad_input_is_one_line_and_exit_2(settings: Settings, args: list[str]) -> None:
    result = await cli(settings, *args)

    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1


async def test_replay_dry_run_changes_nothing(
    settings: Settings, catalog: TopicCatalog, db: asyncpg.Pool, poisoned: Poisoned
) -> None:
    dlq_before = await end_offsets(settings, catalog, poisoned.dlq_topic)
    origin_before = await end_offsets(settings, catalog, poisoned.origin)

    result = await cli(
        settings, "replay", "--booking-id", poisoned.booking_id, "--dry-run", "--json"
    )

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dry_run"] is True
    assert report["would_replay"] == 1
    replayed, skipped = report["plan"]
    assert replayed["replay"]
    assert replayed["message"]["event_id"] == poisoned.requested.event_id
    effect = replayed["effect"]
    assert (effect["status_before"], effect["status_after"]) == (None, "requested")
    assert effect["consumer"] == "reservation"
    assert [a["action"] for a in effect["actions"]] == ["HoldCapacity"]
    assert not skipped["replay"]
    assert "undecodable" in skipped["skip"]
    # Nothing published (other tests may write to these topics; none with this key) and
    # nothing recorded.
    assert await keyed_since(settings, origin_before, poisoned.booking_id) == []
    assert await keyed_since(settings, dlq_before, poisoned.booking_id) == []
    assert await audit_rows(db, poisoned.booking_id) == []


async def test_replay_redrives_once_to_the_origin_and_skips_the_undecodable(
    settings: Settings, catalog: TopicCatalog, db: asyncpg.Pool, poisoned: Poisoned
) -> None:
    origin_before = await end_offsets(settings, catalog, poisoned.origin)
    operator = unique("op-")

    result = await cli(settings,
        "replay", "--booking-id", poisoned.booking_id, "--operator", operator, "--rate", "50",
        "--json",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["counts"] == {"replayed": 1, "skipped": 1, "failed": 0}
    skipped = next(o for o in report["outcomes"] if o["result"] == "skipped")
    assert "undecodable" in skipped["detail"]
    copies = await keyed_since(settings, origin_before, poisoned.booking_id)
    assert len(copies) == 1
    copy = copies[0]
    assert copy.value == poisoned.body
    headers = dict(copy.headers)
    assert headers[k.H_REPLAY] == report["replay_id"].encode()
    assert headers[k.H_ATTEMPTS] == b"3"  # kept: a new failure continues the count
    assert headers[k.H_TRACEPARENT].startswith(b"00-0af7651916cd43dd")
    assert not k.FAILURE_HEADERS & set(headers)
    rows = await audit_rows(db, poisoned.booking_id)
    assert len(rows) == 1
    row = rows[0]
    assert (row["result"], row["operator"], row["origin_topic"]) == (
        "replayed",
        operator,
        poisoned.origin,
    )
    assert row["event_id"] == poisoned.requested.event_id
    assert (row["replayed_partition"], row["replayed_offset"]) == (copy.partition, copy.offset)
    assert str(row["replay_id"]) == report["replay_id"]

    # The same replay again: one effect only.
    origin_between = await end_offsets(settings, catalog, poisoned.origin)
    again = await cli(settings, "replay", "--booking-id", poisoned.booking_id, "--json")

    assert again.exit_code == 0, again.output
    second = json.loads(again.stdout)
    assert second["counts"] == {"replayed": 0, "skipped": 2, "failed": 0}
    assert any("already replayed" in o["detail"] for o in second["outcomes"])
    assert await keyed_since(settings, origin_between, poisoned.booking_id) == []
    assert [r["replay_count"] for r in await audit_rows(db, poisoned.booking_id)] == [1]
    told = await cli(settings, "replay", "--booking-id", poisoned.booking_id)
    assert told.exit_code == 0, told.output
    assert "0 replayed, 2 skipped, 0 failed" in told.stdout
    assert "already replayed" in told.stdout


async def test_again_forces_a_second_replay_and_logs_both(
    settings: Settings, catalog: TopicCatalog, db: asyncpg.Pool, poisoned: Poisoned
) -> None:
    codec = default_codec()
    message = await requested_dead_letter(settings, catalog, poisoned)
    origin_before = await end_offsets(settings, catalog, poisoned.origin)
    async with raw_producer(settings, "test-dlq-again") as producer:
        for again in (False, True):
            plan = await replay.plan_replay(
                db, catalog, [message], codec, datetime.now(UTC), again=again
            )
            report = await replay.replay(db, producer, plan, operator="tester", again=again)
            assert report.counts["replayed"] == 1

    assert len(await keyed_since(settings, origin_before, poisoned.booking_id)) == 2
    (row,) = await audit_rows(db, poisoned.booking_id)
    assert row["replay_count"] == 2
    log = await db.fetch(
        "SELECT forced, result FROM dlq_replay_log WHERE dlq_topic = $1 AND dlq_partition = $2 "
        "AND dlq_offset = $3 ORDER BY id",
        row["dlq_topic"], row["dlq_partition"], row["dlq_offset"],
    )  # fmt: skip
    assert [(r["forced"], r["result"]) for r in log] == [(False, "replayed"), (True, "replayed")]


async def claim_left_pending(
    db: asyncpg.Pool, message: dead_letters.DeadLetter, age: timedelta
) -> None:
    """What a replay that died between its claim and its result leaves behind, ``age`` ago."""
    await db.execute(
        "INSERT INTO dlq_replays (dlq_topic, dlq_partition, dlq_offset, replay_id, operator, "
        "origin_topic, booking_id, result, first_replayed_at, replayed_at) "
        "VALUES ($1, $2, $3, gen_random_uuid(), 'crashed-op', $4, $5, 'pending', "
        "now() - $6::interval, now() - $6::interval)",
        message.topic, message.partition, message.offset, message.failure.origin_topic,
        message.booking_id, age,
    )  # fmt: skip


async def test_a_pending_claim_left_by_a_dead_replay_is_taken_over_once_abandoned(
    settings: Settings, catalog: TopicCatalog, db: asyncpg.Pool, poisoned: Poisoned
) -> None:
    codec = default_codec()
    message = await requested_dead_letter(settings, catalog, poisoned)
    await claim_left_pending(db, message, replay.ABANDONED_AFTER + timedelta(minutes=1))

    dry = await cli(settings, "replay", "--booking-id", poisoned.booking_id, "--dry-run", "--json")

    assert dry.exit_code == 0, dry.output
    planned = next(p for p in json.loads(dry.stdout)["plan"] if p["message"]["event_id"])
    assert planned["replay"] is True
    assert "never finished" in planned["note"]
    origin_before = await end_offsets(settings, catalog, poisoned.origin)
    async with raw_producer(settings, "test-dlq-stale") as producer:
        plan = await replay.plan_replay(db, catalog, [message], codec, datetime.now(UTC))
        report = await replay.replay(db, producer, plan, operator="tester")

    assert report.counts["replayed"] == 1
    assert len(await keyed_since(settings, origin_before, poisoned.booking_id)) == 1
    (row,) = await audit_rows(db, poisoned.booking_id)
    assert (row["result"], row["operator"], row["replay_count"]) == ("replayed", "tester", 2)


async def test_a_recent_pending_claim_still_holds_the_message(
    settings: Settings, catalog: TopicCatalog, db: asyncpg.Pool, poisoned: Poisoned
) -> None:
    codec = default_codec()
    message = await requested_dead_letter(settings, catalog, poisoned)
    await claim_left_pending(db, message, timedelta(seconds=30))
    # A plan made with a clock far ahead lets the message through: the claim itself, decided
    # by the database's clock, must still refuse it.
    later = datetime.now(UTC) + replay.ABANDONED_AFTER * 2
    plan = await replay.plan_replay(db, catalog, [message], codec, later)
    assert plan[0].replay
    origin_before = await end_offsets(settings, catalog, poisoned.origin)
    async with raw_producer(settings, "test-dlq-held") as producer:
        report = await replay.replay(db, producer, plan, operator="tester")

    assert report.counts == {"replayed": 0, "skipped": 1, "failed": 0}
    assert "already replayed: pending by crashed-op" in (report.outcomes[0].detail or "")
    assert await keyed_since(settings, origin_before, poisoned.booking_id) == []
    (row,) = await audit_rows(db, poisoned.booking_id)
    assert (row["result"], row["replay_count"]) == ("pending", 1)
