"""The operators' faces report the same sagas and dead letters: ``erynoa saga|dlq ... --json``
and the admin API (``/admin/workflows``, ``/admin/dlq``) answer from ``ops`` over the same read
model and topics, so for the same sagas they name the same stuck ones, for the same reasons,
the same timelines, and the same dead letters and replay plans."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import typer
from typer.testing import CliRunner, Result

from cli.ops import dlq_app, saga_app
from erynoa import kafka as k
from erynoa.codec import default_codec
from erynoa.topics import load_catalog
from tests.conftest import unique
from tests.integration.api.conftest import Actors, LiveApi, insert_booking
from tests.integration.materializing import raw_producer
from tests.integration.saga_events import (
    awaiting_provider,
    rejected_and_compensated,
    request,
    write_folded,
)

pytestmark = pytest.mark.integration


async def cli(live_api: LiveApi, *args: str, app: typer.Typer = saga_app) -> Result:
    env = {
        "ERYNOA_TOPIC_PREFIX": live_api.settings.topic_prefix,
        "ERYNOA_DATABASE_URL": live_api.settings.database_url,
        "ERYNOA_KAFKA_BOOTSTRAP": live_api.settings.kafka_bootstrap,
    }
    return await asyncio.to_thread(lambda: CliRunner().invoke(app, [*args, "--json"], env=env))


async def cli_json(live_api: LiveApi, *args: str, app: typer.Typer = saga_app) -> Any:
    result = await cli(live_api, *args, app=app)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


async def test_the_cli_and_the_admin_api_report_the_same_stuck_sagas_and_timelines(
    live_api: LiveApi, http: httpx.AsyncClient, actors: Actors, pg: asyncpg.Pool
) -> None:
    now = datetime.now(UTC)
    mine = {"provider_id": actors.provider, "customer_id": actors.customer}
    overdue = await write_folded(
        pg,
        awaiting_provider(
            unique(), now - timedelta(minutes=10), now - timedelta(minutes=5), **mine
        ),
    )
    waiting = await write_folded(
        pg,
        awaiting_provider(unique(), now - timedelta(seconds=20), now + timedelta(hours=1), **mine),
    )
    done = await write_folded(
        pg, rejected_and_compensated(unique(), now - timedelta(minutes=5), **mine)
    )
    # A row the materializer has not folded yet (no state): idle for ten minutes.
    idle = await insert_booking(
        pg, actors, "reserved", payment="none", updated_at=now - timedelta(minutes=10)
    )

    cli_page = await cli_json(live_api, "ls", "--stuck", "--provider", actors.provider)
    response = await http.get(
        "/admin/workflows",
        params={"stuck": "true", "provider_id": actors.provider},
        headers=actors.admin_auth,
    )
    assert response.status_code == 200, response.text
    api_stuck = response.json()["data"]
    cli_stuck = cli_page["sagas"]

    assert [s["booking_id"] for s in cli_stuck] == [w["id"] for w in api_stuck]  # same order
    assert {s["booking_id"] for s in cli_stuck} == {overdue, idle}
    assert {s["booking_id"]: s["stuck_reason"] for s in cli_stuck} == {
        w["id"]: w["stuck_reason"] for w in api_stuck
    }
    assert waiting not in {w["id"] for w in api_stuck}
    meta = response.json()["meta"]
    assert (cli_page["total"], cli_page["total_capped"]) == (meta["total"], meta["total_capped"])
    assert (meta["total"], meta["total_capped"]) == (2, False)

    # One per page: both faces page in the same order and still count every stuck saga.
    one_a_page = ("ls", "--stuck", "--provider", actors.provider, "--limit", "1")
    for number in (1, 2):
        cli_one = await cli_json(live_api, *one_a_page, "--page", str(number))
        api_one = await http.get(
            "/admin/workflows",
            params={"stuck": "true", "provider_id": actors.provider, "per_page": 1, "page": number},
            headers=actors.admin_auth,
        )
        assert api_one.status_code == 200, api_one.text
        assert [s["booking_id"] for s in cli_one["sagas"]] == [
            w["id"] for w in api_one.json()["data"]
        ]
        assert [s["booking_id"] for s in cli_one["sagas"]] == [cli_stuck[number - 1]["booking_id"]]
        assert cli_one["total"] == api_one.json()["meta"]["total"] == 2

    for booking_id in (overdue, waiting, done):
        shown = await cli_json(live_api, "show", booking_id)
        answer = await http.get(f"/admin/workflows/{booking_id}", headers=actors.admin_auth)
        assert answer.status_code == 200, answer.text
        workflow = answer.json()["data"]
        assert [(e["event_id"], e["event_type"], e["kind"]) for e in shown["entries"]] == [
            (t["event_id"], t["event_type"], t["kind"]) for t in workflow["timeline"]
        ]
        assert (shown["in_flight"], shown["stuck"], shown["stuck_reason"]) == (
            workflow["in_flight"],
            workflow["stuck"],
            workflow["stuck_reason"],
        )
        assert [(w["who"], w["what"]) for w in shown["waiting"]] == [
            (w["who"], w["what"]) for w in workflow["waiting"]
        ]
    assert shown["in_flight"] is False  # the rejected saga's compensations all ran


async def test_the_cli_and_the_admin_api_show_and_plan_the_same_dead_letters(
    live_api: LiveApi, http: httpx.AsyncClient, actors: Actors
) -> None:
    settings = live_api.settings
    catalog = load_catalog(settings.topics_file, settings.topics_environment, settings.topic_prefix)
    booking_id = unique()
    requested = request(booking_id, datetime.now(UTC))
    origin = catalog.topic_for("BookingRequested")
    headers = k.failure_headers(
        [],
        origin=(origin, 0, 7),
        consumer="reservation",
        error="the gateway timed out",
        error_class="GatewayUnavailable",
        error_kind="retryable",
        now=datetime.now(UTC),
    )
    async with raw_producer(settings, "test-ops-faces") as producer:
        await producer.send_and_wait(
            catalog.consumer("reservation").dead_letter_topic,
            value=default_codec().encode(requested),
            key=booking_id.encode(),
            headers=headers,
        )

    shown = await cli_json(live_api, "show", "--booking-id", booking_id, app=dlq_app)
    answer = await http.post(
        "/admin/dlq/messages", json={"booking_id": booking_id}, headers=actors.admin_auth
    )
    assert answer.status_code == 200, answer.text
    listed = answer.json()["data"]
    assert [m["event_id"] for m in shown["messages"]] == [requested.event_id]
    assert listed["messages"] == shown["messages"]

    planned = await cli_json(
        live_api, "replay", "--booking-id", booking_id, "--dry-run", app=dlq_app
    )
    plan = await http.post(
        "/admin/dlq/replay", json={"booking_id": booking_id}, headers=actors.admin_auth
    )
    assert plan.status_code == 200, plan.text
    assert planned["would_replay"] == plan.json()["data"]["would_replay"] == 1
    assert [p["effect"]["description"] for p in planned["plan"]] == [
        p["effect"]["description"] for p in plan.json()["data"]["plan"]
    ]

    # One message read at its position (the console's message screen) is the same message.
    at = shown["messages"][0]
    one = await http.get(
        f"/admin/dlq/messages/{at['topic']}/{at['partition']}/{at['offset']}",
        headers=actors.admin_auth,
    )
    assert one.status_code == 200, one.text
    assert one.json()["data"] == at
    nowhere = await http.get(
        f"/admin/dlq/messages/{at['topic']}/{at['partition']}/{at['offset'] + 10**9}",
        headers=actors.admin_auth,
    )
    assert nowhere.status_code == 404, nowhere.text

    # A replay runs only the plan its dry run showed: another plan's id is refused, unchanged.
    selection = {"topics": [at["topic"]], "partition": at["partition"], "offset": at["offset"]}
    dry = await http.post("/admin/dlq/replay", json=selection, headers=actors.admin_auth)
    assert dry.status_code == 200, dry.text
    plan_id = dry.json()["data"]["plan_id"]
    assert plan_id == plan.json()["data"]["plan_id"]  # the same message, the same plan
    stale = await http.post(
        "/admin/dlq/replay",
        json={**selection, "dry_run": False, "plan_id": "0" * 64},
        headers=actors.admin_auth,
    )
    assert stale.status_code == 409, stale.text
    assert stale.json()["error"]["code"] == "STALE_PLAN"
    assert stale.json()["error"]["details"] == [{"plan_id": plan_id}]
    assert (await cli_json(live_api, "show", "--booking-id", booking_id, app=dlq_app))["messages"][
        0
    ]["failure"]["replay_id"] is None
    done = await http.post(
        "/admin/dlq/replay",
        json={**selection, "dry_run": False, "plan_id": plan_id},
        headers=actors.admin_auth,
    )
    assert done.status_code == 200, done.text
    assert done.json()["data"]["counts"]["replayed"] == 1
    again = await cli_json(live_api, "replay", "--booking-id", booking_id, "--dry-run", app=dlq_app)
    assert again["would_replay"] == 0  # the CLI sees the API's replay in the audit
