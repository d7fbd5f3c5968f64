"""The operators' faces report the same sagas: ``erynoa saga ls|show --json`` and the admin API
(``/admin/workflows``) answer from ``ops`` over the same read model, so for the same sagas they
name the same stuck ones, for the same reasons, and the same timelines."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from typer.testing import CliRunner

from cli.ops import saga_app
from tests.conftest import unique
from tests.integration.api.conftest import Actors, LiveApi, insert_booking
from tests.integration.saga_events import awaiting_provider, rejected_and_compensated, write_folded

pytestmark = pytest.mark.integration


async def cli_json(live_api: LiveApi, *args: str) -> Any:
    env = {
        "ERYNOA_TOPIC_PREFIX": live_api.settings.topic_prefix,
        "ERYNOA_DATABASE_URL": live_api.settings.database_url,
    }
    result = await asyncio.to_thread(
        lambda: CliRunner().invoke(saga_app, [*args, "--json"], env=env)
    )
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

    cli_stuck = await cli_json(live_api, "ls", "--stuck", "--provider", actors.provider)
    response = await http.get(
        "/admin/workflows",
        params={"stuck": "true", "provider_id": actors.provider},
        headers=actors.admin_auth,
    )
    assert response.status_code == 200, response.text
    api_stuck = response.json()["data"]

    assert {s["booking_id"] for s in cli_stuck} == {overdue, idle}
    assert {s["booking_id"]: s["stuck_reason"] for s in cli_stuck} == {
        w["id"]: w["stuck_reason"] for w in api_stuck
    }
    assert waiting not in {w["id"] for w in api_stuck}

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
