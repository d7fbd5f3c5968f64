"""OWASP API5:2023 Broken Function Level Authorization: every operation that takes a token is
tried with each set of roles it does not allow, by a caller who owns every object involved (so
a refusal can only come from the role). Operations are read from the app: one missing from
``ALLOWED`` fails the test until someone decides who may call it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from tests.conftest import unique
from tests.integration.api.conftest import (
    Actors,
    LiveApi,
    create_service,
    future_slot,
    insert_booking,
)
from tests.security.operations import Operation, operations

pytestmark = pytest.mark.integration

ANY = frozenset({"customer", "provider", "admin", ""})  # "" : a verified token with no role
CUSTOMER, PROVIDER, ADMIN = "customer", "provider", "admin"

# Who may call each operation that takes a token (ownership is checked on top of this).
ALLOWED: dict[str, frozenset[str]] = {
    "POST /api/v1/auth/refresh": ANY,
    "POST /api/v1/auth/logout": ANY,
    "GET /api/v1/auth/userinfo": ANY,
    "GET /api/v1/users/me": ANY,
    "PUT /api/v1/users/me": frozenset({CUSTOMER, PROVIDER, ADMIN}),
    "GET /api/v1/users": frozenset({ADMIN}),
    "GET /api/v1/users/{user_id}": frozenset({ADMIN}),
    "POST /api/v1/services": frozenset({PROVIDER, ADMIN}),
    "PUT /api/v1/services/{service_id}": frozenset({PROVIDER, ADMIN}),
    "DELETE /api/v1/services/{service_id}": frozenset({PROVIDER, ADMIN}),
    "POST /api/v1/bookings": frozenset({CUSTOMER}),
    "GET /api/v1/bookings": ANY,
    "GET /api/v1/bookings/{booking_id}": ANY,
    "POST /api/v1/bookings/{booking_id}/accept": frozenset({PROVIDER}),
    "POST /api/v1/bookings/{booking_id}/reject": frozenset({PROVIDER}),
    "POST /api/v1/bookings/{booking_id}/cancel": frozenset({CUSTOMER, ADMIN}),
    "POST /api/v1/payments/intent": frozenset({CUSTOMER}),
    "GET /api/v1/payments/{payment_id}": ANY,
    "GET /api/v1/admin/stats": frozenset({ADMIN}),
    "GET /api/v1/admin/workflows": frozenset({ADMIN}),
    "GET /api/v1/admin/workflows/{booking_id}": frozenset({ADMIN}),
    "POST /api/v1/admin/workflows/{booking_id}": frozenset({ADMIN}),
    "GET /api/v1/admin/dlq": frozenset({ADMIN}),
    "POST /api/v1/admin/dlq/messages": frozenset({ADMIN}),
    "GET /api/v1/admin/dlq/messages/{topic}/{partition}/{offset}": frozenset({ADMIN}),
    "POST /api/v1/admin/dlq/replay": frozenset({ADMIN}),
}

SECURED = [op for op in operations() if op.secured]
DEAD_LETTER = {"topic": "payment.dlq", "partition": "0", "offset": "0"}


def test_every_operation_with_a_token_has_its_roles_decided() -> None:
    undecided = sorted({op.key for op in SECURED} - set(ALLOWED))
    assert not undecided, f"decide who may call: {undecided}"


@pytest.mark.parametrize(
    "op", [op for op in SECURED if ALLOWED.get(op.key, ANY) != ANY], ids=lambda op: op.key
)
async def test_a_role_that_is_not_allowed_is_refused(
    op: Operation, http: httpx.AsyncClient, live_api: LiveApi, pg: asyncpg.Pool
) -> None:
    refused = sorted(ANY - ALLOWED[op.key])
    for role in refused:
        sub = unique("caller-")
        # The caller owns everything the request names: the service, and the booking as both
        # its customer and its provider.
        service = await create_service(http, live_api.auth(sub, "provider"))
        payment_id = f"pi_test_{unique()[:12]}"
        actors = Actors(sub, sub, sub, service["id"], {}, {}, {})
        booking_id = await insert_booking(
            pg,
            actors,
            "payment_action_required",
            payment="action_required",
            payment_id=payment_id,
            provider_deadline_at=datetime.now(UTC) + timedelta(hours=1),
        )
        body = op.body
        if op.key == "POST /api/v1/bookings":
            body = {
                "service_id": service["id"],
                "slot_start": future_slot(),
                "payment_method": "pm_card_visa",
            }
        elif op.key == "POST /api/v1/payments/intent":
            body = {"booking_id": booking_id}
        url = op.url(
            booking_id=booking_id,
            payment_id=payment_id,
            service_id=service["id"],
            user_id=sub,
            **DEAD_LETTER,
        )
        roles = (role,) if role else ()
        token = live_api.token(sub, *roles) if roles else _roleless(live_api, sub)
        response = await http.request(
            op.method, url, json=body, headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 403, (role or "no role", response.text)


def _roleless(live_api: LiveApi, sub: str) -> str:
    # LiveApi.token gives "customer" when no role is named; an IdP user may have none at all.
    from api.auth import issue_dev_token

    return issue_dev_token(live_api.settings, sub, [], 600)


async def test_admin_routes_are_refused_to_everyone_else(
    http: httpx.AsyncClient, live_api: LiveApi, actors: Actors
) -> None:
    admin_ops = [op for op in SECURED if op.path.startswith("/api/v1/admin")]
    assert admin_ops
    caller = live_api.auth(unique("x-"), "customer", "provider")
    for op in admin_ops:
        url = op.url(booking_id=unique(), **DEAD_LETTER)
        response = await http.request(op.method, url, json=op.body, headers=caller)
        assert response.status_code == 403, (op.key, response.text)
        unauthenticated = await http.request(op.method, url, json=op.body)
        assert unauthenticated.status_code == 401, (op.key, unauthenticated.text)


async def test_a_provider_cannot_book_its_own_service(
    http: httpx.AsyncClient, live_api: LiveApi
) -> None:
    # Booking yourself and accepting would move money and capacity with no customer at all.
    sub = unique("selfie-")
    service = await create_service(http, live_api.auth(sub, "provider"))
    both = live_api.auth(sub, "customer", "provider")
    response = await http.post(
        "/bookings",
        json={
            "service_id": service["id"],
            "slot_start": future_slot(),
            "payment_method": "pm_card_visa",
        },
        headers=both,
    )
    assert response.status_code == 403, response.text


async def test_a_provider_cannot_accept_a_booking_it_made_itself(
    http: httpx.AsyncClient, live_api: LiveApi, pg: asyncpg.Pool
) -> None:
    sub = unique("selfie-")
    service = await create_service(http, live_api.auth(sub, "provider"))
    actors = Actors(sub, sub, sub, service["id"], {}, {}, {})
    booking_id = await insert_booking(
        pg,
        actors,
        "awaiting_provider",
        provider_deadline_at=datetime.now(UTC) + timedelta(hours=1),
    )
    both = live_api.auth(sub, "customer", "provider")
    response = await http.post(f"/bookings/{booking_id}/accept", headers=both)
    assert response.status_code == 403, response.text
