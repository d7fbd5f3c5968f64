"""OWASP API3:2023 Broken Object Property Level Authorization (mass assignment): request bodies
carrying fields the caller may not set — roles, status, price, owner ids — are refused (422),
and nothing they name is changed."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import unique
from tests.integration.api.conftest import Actors, LiveApi, booking_body

pytestmark = pytest.mark.integration


def refused_for(response: httpx.Response, field: str) -> None:
    assert response.status_code == 422, response.text
    fields = {d.get("field", "") for d in response.json()["error"]["details"]}
    assert any(field in f for f in fields), fields


async def test_a_profile_update_cannot_grant_roles_or_change_identity(
    http: httpx.AsyncClient, live_api: LiveApi
) -> None:
    sub = unique("cust-")
    auth = live_api.auth(sub, "customer")
    for extra in ({"roles": ["admin"]}, {"id": "someone-else"}, {"created_at": "2000-01-01"}):
        body: dict[str, Any] = {"display_name": "Mallory", **extra}
        refused_for(await http.put("/users/me", json=body, headers=auth), next(iter(extra)))
    me = await http.get("/users/me", headers=auth)
    assert me.json()["data"]["roles"] == ["customer"]
    assert me.json()["data"]["display_name"] is None
    # An admin route still says no: roles come from the token only.
    assert (await http.get("/users", headers=auth)).status_code == 403


async def test_a_booking_request_cannot_set_its_status_price_or_customer(
    http: httpx.AsyncClient, actors: Actors
) -> None:
    extras: list[dict[str, Any]] = [
        {"status": "confirmed"},
        {"price": {"amount": 1, "currency": "EUR"}},
        {"amount_minor": 1},
        {"customer_id": actors.admin},
        {"provider_id": actors.customer},
        {"payment": "captured"},
    ]
    for extra in extras:
        body = {**booking_body(actors.service_id), **extra}
        response = await http.post("/bookings", json=body, headers=actors.customer_auth)
        refused_for(response, next(iter(extra)))


async def test_a_service_cannot_be_given_to_another_provider(
    http: httpx.AsyncClient, actors: Actors
) -> None:
    body = {
        "name": "Stolen",
        "price": {"amount": 100, "currency": "EUR"},
        "duration_minutes": 30,
        "capacity_per_slot": 1,
        "provider_id": actors.customer,
    }
    refused_for(
        await http.post("/services", json=body, headers=actors.provider_auth), "provider_id"
    )
    update = {"provider_id": actors.customer, "name": "Mine now"}
    response = await http.put(
        f"/services/{actors.service_id}", json=update, headers=actors.provider_auth
    )
    refused_for(response, "provider_id")
    service = (await http.get(f"/services/{actors.service_id}")).json()["data"]
    assert service["provider_id"] == actors.provider
    assert service["name"] != "Mine now"


async def test_an_answer_or_cancel_cannot_carry_a_decision_or_an_amount(
    http: httpx.AsyncClient, actors: Actors
) -> None:
    booking_id = unique()
    for action, extra in (
        ("accept", {"decision": "reject"}),
        ("cancel", {"refund": {"amount": 999999, "currency": "EUR"}}),
        ("cancel", {"requested_by_role": "operator"}),
    ):
        response = await http.post(
            f"/bookings/{booking_id}/{action}", json=extra, headers=actors.customer_auth
        )
        refused_for(response, next(iter(extra)))


async def test_a_payment_intent_request_cannot_name_an_amount(
    http: httpx.AsyncClient, actors: Actors
) -> None:
    body = {"booking_id": unique(), "amount": {"amount": 1, "currency": "EUR"}}
    refused_for(
        await http.post("/payments/intent", json=body, headers=actors.customer_auth), "amount"
    )
