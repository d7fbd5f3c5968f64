"""OWASP API4:2023 Unrestricted Resource Consumption: oversize and malformed bodies, unbounded
pagination and search, state that grows without bound (idempotency keys, repeated cancels), and
getting around the per-address rate limit with ``X-Forwarded-For``."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from erynoa import events as ev
from tests.conftest import unique
from tests.integration.api.conftest import (
    Actors,
    LiveApi,
    Probe,
    api_settings,
    book,
    events_of,
    insert_booking,
    running,
)

pytestmark = pytest.mark.integration


# --- bodies ---------------------------------------------------------------------------------


async def test_an_oversize_body_is_refused_before_it_is_read(
    http: httpx.AsyncClient, live_api: LiveApi, actors: Actors
) -> None:
    big = b'{"notes": "' + b"x" * (live_api.settings.max_body_bytes + 1) + b'"}'
    response = await http.post(
        "/bookings",
        content=big,
        headers={**actors.customer_auth, "Content-Type": "application/json"},
    )
    assert response.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(live_api.settings.max_body_bytes // 1024 + 2):
            yield b" " * 1024

    chunked = await http.post(
        "/bookings",
        content=chunks(),
        headers={**actors.customer_auth, "Content-Type": "application/json"},
    )
    assert chunked.status_code == 413


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b'{"service_id": ',
        b"[" * 5000 + b"]" * 5000,
        b'{"a":' * 2000 + b"1" + b"}" * 2000,
        b"\xff\xfe\x00",
        b'{"service_id": "' + b"\\u0000" * 10 + b'"}',
        b"NaN",
    ],
    ids=["open", "cut", "deep-array", "deep-object", "not-utf8", "nul", "nan"],
)
async def test_a_malformed_body_is_a_4xx_not_a_crash(
    http: httpx.AsyncClient, actors: Actors, body: bytes
) -> None:
    response = await http.post(
        "/bookings",
        content=body,
        headers={**actors.customer_auth, "Content-Type": "application/json"},
    )
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["code"]


# --- pagination and search ------------------------------------------------------------------


async def test_pages_are_bounded_in_size_and_depth(http: httpx.AsyncClient, actors: Actors) -> None:
    assert (await http.get("/services", params={"per_page": 1000})).status_code == 422
    # Deep offsets make PostgreSQL produce and throw away every row before the page.
    deep = await http.get("/services", params={"page": 10_000, "per_page": 100})
    assert deep.status_code == 422, deep.text
    assert "narrow" in deep.json()["error"]["details"][0]["message"]
    deep_bookings = await http.get(
        "/bookings", params={"page": 5_000, "per_page": 100}, headers=actors.customer_auth
    )
    assert deep_bookings.status_code == 422
    assert (await http.get("/services", params={"page": 2, "per_page": 100})).status_code == 200


async def test_search_wildcards_are_literal(http: httpx.AsyncClient) -> None:
    for q in ("%", "_", "%%%%%%%%%%%%%%%%%%%%", "\\"):
        response = await http.get("/services", params={"q": q, "per_page": 5})
        assert response.status_code == 200, response.text


async def test_a_migrated_database_has_a_trigram_index_for_name_search(live_api: LiveApi) -> None:
    from erynoa.db import create_migrated_database, drop_database

    name = f"sec{uuid.uuid4().hex[:10]}"
    url = await create_migrated_database(live_api.settings.database_url, name)
    try:
        conn = await asyncpg.connect(url)
        try:
            definitions = await conn.fetch(
                "SELECT indexdef FROM pg_indexes WHERE tablename = 'services'"
            )
            plan = await conn.fetchval(
                "EXPLAIN (FORMAT TEXT) SELECT id FROM services WHERE name ILIKE '%haircut%'"
            )
        finally:
            await conn.close()
    finally:
        await drop_database(live_api.settings.database_url, name)
    assert any("gin_trgm_ops" in d["indexdef"] for d in definitions), definitions
    assert plan is not None


# --- growth ---------------------------------------------------------------------------------


async def book_with_a_fresh_key(
    http: httpx.AsyncClient, actors: Actors
) -> tuple[dict[str, str], httpx.Response]:
    """Book with a new ``Idempotency-Key``: the headers that repeat the request, and its answer."""
    keyed = {"Idempotency-Key": unique("key-")}
    return keyed, await book(http, actors, keyed)


async def test_an_expired_idempotency_key_is_refused_not_replayed(
    http: httpx.AsyncClient, live_api: LiveApi, actors: Actors, pg: asyncpg.Pool
) -> None:
    keyed, first = await book_with_a_fresh_key(http, actors)
    key = keyed["Idempotency-Key"]
    assert first.status_code == 202, first.text
    ttl = live_api.settings.idempotency_key_ttl_seconds
    await pg.execute(
        "UPDATE idempotency_keys SET created_at = now() - make_interval(secs => $3) "
        "WHERE customer_id = $1 AND key = $2",
        actors.customer,
        key,
        float(ttl + 60),
    )
    expired = await book(http, actors, keyed)
    assert expired.status_code == 422, expired.text
    assert expired.json()["error"]["code"] == "IDEMPOTENCY_KEY_EXPIRED"

    from api.readmodel import delete_expired_idempotency_keys

    # Cleaned up, the key is still not a new booking (its booking exists): the same answer.
    deleted = await delete_expired_idempotency_keys(pg, ttl)
    assert deleted >= 1
    remaining = await pg.fetchval(
        "SELECT count(*) FROM idempotency_keys WHERE customer_id = $1 AND key = $2",
        actors.customer,
        key,
    )
    assert remaining == 0
    again = await book(http, actors, keyed)
    assert again.status_code == 422, again.text
    assert again.json()["error"]["code"] == "IDEMPOTENCY_KEY_EXPIRED"
    bookings = await pg.fetchval(
        "SELECT count(*) FROM bookings WHERE customer_id = $1", actors.customer
    )
    assert bookings == 1


async def test_a_fresh_idempotency_key_is_kept_by_the_cleanup(
    http: httpx.AsyncClient, live_api: LiveApi, actors: Actors, pg: asyncpg.Pool
) -> None:
    keyed, first = await book_with_a_fresh_key(http, actors)
    from api.readmodel import delete_expired_idempotency_keys

    await delete_expired_idempotency_keys(pg, live_api.settings.idempotency_key_ttl_seconds)
    again = await book(http, actors, keyed)
    assert again.status_code == 202
    assert again.json()["workflow_id"] == first.json()["workflow_id"]


async def test_repeated_cancels_publish_one_event(
    http: httpx.AsyncClient, actors: Actors, pg: asyncpg.Pool, probe_topic: Probe
) -> None:
    bookings_topic = await probe_topic("bookings")
    booking_id = await insert_booking(pg, actors, "awaiting_provider")
    for auth in [actors.customer_auth] * 10 + [actors.admin_auth] * 5:
        response = await http.post(f"/bookings/{booking_id}/cancel", headers=auth)
        assert response.status_code == 202, response.text
    cancels = events_of(
        await bookings_topic.events(), ev.BookingCancellationRequested, booking_id=booking_id
    )
    assert len(cancels) == 1
    recorded = await pg.fetchval(
        "SELECT count(*) FROM booking_cancellations WHERE booking_id = $1", booking_id
    )
    assert recorded == 1


# --- rate limits and X-Forwarded-For --------------------------------------------------------


@pytest.fixture
def limited_server(key_file: Path) -> Iterator[str]:
    # Its own topic prefix gives it its own counters (every test shares 127.0.0.1).
    settings = api_settings(
        key_file, rate_limit_per_minute_ip=3, topic_prefix=f"sec{unique()[:8]}-"
    )
    with running(settings) as server:
        yield f"{server.base_url}/api/v1"


async def test_x_forwarded_for_does_not_buy_a_fresh_limit(limited_server: str) -> None:
    async with httpx.AsyncClient(base_url=limited_server) as http:
        statuses = [
            (
                await http.get("/services", headers={"X-Forwarded-For": f"198.51.100.{n}"})
            ).status_code
            for n in range(6)
        ]
    assert statuses == [200] * 3 + [429] * 3


@pytest.fixture
def proxied_server(key_file: Path) -> Iterator[str]:
    settings = api_settings(
        key_file,
        rate_limit_per_minute_ip=3,
        topic_prefix=f"sec{unique()[:8]}-",
        trusted_proxies=["127.0.0.0/8"],
    )
    with running(settings) as server:
        yield f"{server.base_url}/api/v1"


async def test_behind_a_trusted_proxy_each_client_has_its_own_limit(proxied_server: str) -> None:
    async with httpx.AsyncClient(base_url=proxied_server) as http:

        async def status(forwarded: str) -> int:
            return (await http.get("/services", headers={"X-Forwarded-For": forwarded})).status_code

        assert [await status("203.0.113.7") for _ in range(4)] == [200, 200, 200, 429]
        # Another client behind the same proxy is not affected.
        assert await status("203.0.113.8") == 200
        # A client cannot prepend addresses: the right-most untrusted entry is the client.
        assert await status("192.0.2.1, 203.0.113.7") == 429


async def test_ipv6_clients_are_counted_per_64(proxied_server: str) -> None:
    async with httpx.AsyncClient(base_url=proxied_server) as http:
        # Every address of one /64 (one subscriber rotating privacy addresses): one bucket.
        statuses = [
            (
                await http.get(
                    "/services", headers={"X-Forwarded-For": f"2001:db8:7:8::{n:x}:{n:x}"}
                )
            ).status_code
            for n in range(1, 6)
        ]
        assert statuses == [200] * 3 + [429] * 2
        other = await http.get("/services", headers={"X-Forwarded-For": "2001:db8:7:9::1"})
        assert other.status_code == 200
