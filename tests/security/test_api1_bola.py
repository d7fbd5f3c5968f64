"""OWASP API1:2023 Broken Object Level Authorization: other customers and providers try every
route that takes an object's id — the routes are read from the app, so a new one is attacked
too — with the id of an object that is not theirs. Each attempt must be refused (403, or 404
where existence is not revealed) and leave the object as it was."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from tests.conftest import unique
from tests.integration.api.conftest import Actors, LiveApi, insert_booking
from tests.security.operations import Operation, operations

pytestmark = pytest.mark.integration

# Objects anyone may read by id (the public catalog).
PUBLIC = {"GET /api/v1/services/{service_id}"}

BY_ID = [op for op in operations() if op.path_params and op.key not in PUBLIC]


def test_the_routes_with_ids_are_found() -> None:
    # If the document stopped listing them, every attack below would pass by walking nothing.
    keys = {op.key for op in BY_ID}
    assert "GET /api/v1/bookings/{booking_id}" in keys
    assert "POST /api/v1/bookings/{booking_id}/accept" in keys
    assert len(keys) >= 10


async def owned_objects(pg: asyncpg.Pool, actors: Actors) -> dict[str, str]:
    payment_id = f"pi_test_{unique()[:12]}"
    booking_id = await insert_booking(
        pg, actors, "awaiting_provider", payment_id=payment_id, provider_deadline_at=None
    )
    return {
        "booking_id": booking_id,
        "payment_id": payment_id,
        "service_id": actors.service_id,
        "user_id": actors.customer,
        # A dead letter's position: operators' data, no customer's or provider's.
        "topic": "payment.dlq",
        "partition": "0",
        "offset": "0",
    }


@pytest.mark.parametrize("op", BY_ID, ids=lambda op: op.key)
async def test_another_customer_or_provider_cannot_reach_an_object_by_its_id(
    op: Operation, http: httpx.AsyncClient, live_api: LiveApi, actors: Actors, pg: asyncpg.Pool
) -> None:
    objects = await owned_objects(pg, actors)
    missing = set(op.path_params) - set(objects)
    assert not missing, f"{op.key}: give the attack an object for {sorted(missing)}"
    attackers = {
        "another customer": live_api.auth(unique("cust-"), "customer"),
        "another provider": live_api.auth(unique("prov-"), "provider"),
        "a customer and provider": live_api.auth(unique("both-"), "customer", "provider"),
    }
    for who, auth in attackers.items():
        response = await http.request(op.method, op.url(**objects), json=op.body, headers=auth)
        assert response.status_code in (403, 404), (who, response.status_code, response.text)

    # Nothing changed: the booking still awaits its provider, the service is still offered.
    booking = await http.get(f"/bookings/{objects['booking_id']}", headers=actors.customer_auth)
    assert booking.json()["data"]["status"] == "awaiting_provider"
    service = await http.get(f"/services/{actors.service_id}")
    assert service.json()["data"]["active"] is True
    answers = await pg.fetchval(
        "SELECT count(*) FROM provider_answers WHERE booking_id = $1", objects["booking_id"]
    )
    cancels = await pg.fetchval(
        "SELECT count(*) FROM booking_cancellations WHERE booking_id = $1", objects["booking_id"]
    )
    assert (answers, cancels) == (0, 0)


async def test_a_payment_intent_is_not_handed_to_another_customer(
    http: httpx.AsyncClient, live_api: LiveApi, actors: Actors, pg: asyncpg.Pool
) -> None:
    # The booking's id travels in the body here, not the path.
    booking_id = await insert_booking(
        pg, actors, "payment_action_required", payment="action_required"
    )
    for auth in (live_api.auth(unique("cust-"), "customer"), actors.provider_auth):
        response = await http.post(
            "/payments/intent", json={"booking_id": booking_id}, headers=auth
        )
        assert response.status_code in (403, 404), response.text
        assert "client_secret" not in response.text


async def test_listings_show_only_the_callers_own_bookings(
    http: httpx.AsyncClient, live_api: LiveApi, actors: Actors, pg: asyncpg.Pool
) -> None:
    booking_id = await insert_booking(pg, actors, "awaiting_provider")
    stranger = live_api.auth(unique("cust-"), "customer", "provider")
    for scope in ("customer", "provider", "all"):
        listed = await http.get("/bookings", params={"as": scope}, headers=stranger)
        assert listed.status_code in (200, 403), listed.text
        if listed.status_code == 200:
            assert booking_id not in {b["id"] for b in listed.json()["data"]}
