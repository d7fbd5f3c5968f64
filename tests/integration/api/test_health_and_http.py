"""Health and readiness, and what every response shares: request ids, the error envelope for
every status, rate limits, CORS, gzip and the body limit."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.builders import service_body
from tests.conftest import unique
from tests.integration.api.conftest import (
    Actors,
    LiveApi,
    api_settings,
    booking_body,
    free_port,
    insert_booking,
    running,
)

pytestmark = pytest.mark.integration


def closed_port() -> str:
    """A loopback address where nothing listens: the dependency is down."""
    return f"127.0.0.1:{free_port()}"


@contextlib.asynccontextmanager
async def second_server(
    key_file: Path, live_api: LiveApi, **down: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a second server with the ``down`` settings (a dependency that does not
    answer), while the shared stack keeps running. It has the shared server's issuer and key,
    so the shared server's tokens work there too."""
    settings = api_settings(key_file, oidc_issuer=live_api.settings.oidc_issuer, **down)
    with running(settings) as server:
        async with httpx.AsyncClient(base_url=f"{server.base_url}/api/v1") as client:
            yield client


async def test_health_live_and_version(http: httpx.AsyncClient) -> None:
    health = await http.get("/health")
    assert health.status_code == 200
    assert health.json()["data"]["status"] == "ok"
    assert health.json()["data"]["kafka_connected"] is True
    live = await http.get("/health/live")
    assert live.json()["data"] == {"status": "alive"}
    version = await http.get("/version")
    assert version.json()["data"]["api_version"] == "v1"
    assert set(version.json()["meta"]) == {"timestamp", "request_id"}


async def test_ready_when_kafka_postgres_redis_and_the_registry_answer(
    http: httpx.AsyncClient,
) -> None:
    ready = await http.get("/health/ready")
    assert ready.status_code == 200, ready.text
    checks = ready.json()["data"]["checks"]
    assert {name: check["ok"] for name, check in checks.items()} == {
        "kafka": True,
        "postgres": True,
        "redis": True,
        "schema_registry": True,
    }


async def test_not_ready_names_exactly_the_component_that_is_down(
    key_file: Path, actors: Actors, live_api: LiveApi, http: httpx.AsyncClient
) -> None:
    async with second_server(key_file, live_api, kafka_bootstrap=closed_port()) as down:
        ready = await down.get("/health/ready")
        assert ready.status_code == 503, ready.text
        assert ready.headers["retry-after"]
        error = ready.json()["error"]
        assert error["code"] == "NOT_READY"
        assert [d["component"] for d in error["details"]] == ["kafka"]
        assert "kafka" in error["message"]
        assert (await down.get("/health/live")).status_code == 200

        # A booking is accepted all the same: its event waits in the outbox...
        key = {"Idempotency-Key": unique("key-")}
        body = booking_body(actors.service_id)
        booked = await down.post("/bookings", json=body, headers=actors.customer_auth | key)
        assert booked.status_code == 202, booked.text
        # ... while a change that publishes straight to Kafka is refused whole (503).
        provider = unique("prov-")
        service = await down.post(
            "/services",
            json=service_body(name="Never"),
            headers=live_api.auth(provider, "provider"),
        )
        assert service.status_code == 503
        assert service.json()["error"]["details"][0]["component"] == "kafka"
        listed = await down.get("/services", params={"provider_id": provider})
        assert listed.json()["meta"]["total"] == 0

    # The same Idempotency-Key on the healthy server is the same booking, whose event the
    # healthy server's outbox relay publishes.
    retried = await http.post("/bookings", json=body, headers=actors.customer_auth | key)
    assert retried.status_code == 202
    assert retried.json()["workflow_id"] == booked.json()["workflow_id"]
    poll = await http.get(
        retried.headers["location"].removeprefix("/api/v1"), headers=actors.customer_auth
    )
    assert poll.json()["data"]["status"] == "requested"


async def test_with_the_registry_down_the_api_starts_and_refuses_only_new_events(
    key_file: Path, actors: Actors, live_api: LiveApi, pg: asyncpg.Pool
) -> None:
    registry = f"http://{closed_port()}/apis/ccompat/v7"
    async with second_server(key_file, live_api, registry_url=registry) as down:
        ready = await down.get("/health/ready")
        assert ready.status_code == 503, ready.text
        error = ready.json()["error"]
        assert [d["component"] for d in error["details"]] == ["schema_registry"]
        assert "127.0.0.1" not in ready.text  # no hosts in a public answer
        assert (await down.get("/health/live")).status_code == 200
        assert (await down.get("/services")).status_code == 200

        key = {"Idempotency-Key": unique("key-")}
        body = booking_body(actors.service_id)
        booked = await down.post("/bookings", json=body, headers=actors.customer_auth | key)
        assert booked.status_code == 503, booked.text
        assert booked.json()["error"]["details"] == [{"component": "schema_registry"}]
        assert "127.0.0.1" not in booked.text
        # An operator's request is an event too.
        booking_id = await insert_booking(pg, actors, "awaiting_provider")
        cancel = await down.post(
            f"/admin/workflows/{booking_id}",
            json={"action": "cancel"},
            headers=actors.admin_auth,
        )
        assert cancel.status_code == 503, cancel.text
        assert cancel.json()["error"]["details"] == [{"component": "schema_registry"}]


async def test_request_id_is_echoed_or_generated(http: httpx.AsyncClient) -> None:
    mine = await http.get("/version", headers={"X-Request-ID": "client-req_42.a"})
    assert mine.headers["x-request-id"] == "client-req_42.a"
    assert mine.json()["meta"]["request_id"] == "client-req_42.a"
    for bad in ("has spaces", "x" * 129, "semi;colon"):
        response = await http.get("/version", headers={"X-Request-ID": bad})
        generated = response.headers["x-request-id"]
        assert generated != bad
        assert generated.startswith("req_")
        assert response.json()["meta"]["request_id"] == generated


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("GET", "/no-such-thing", {}, 404, "NOT_FOUND"),
        ("DELETE", "/health", {}, 405, "METHOD_NOT_ALLOWED"),
        ("GET", "/services/not-a-uuid", {}, 422, "VALIDATION_ERROR"),
        (
            "POST",
            "/auth/token",
            {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
            422,
            "VALIDATION_ERROR",
        ),
        ("POST", "/auth/token", {"json": [1, 2, 3]}, 422, "VALIDATION_ERROR"),
        (
            "POST",
            "/auth/token",
            {"content": b"sub=x", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
            415,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        (
            "POST",
            "/auth/token",
            {"content": b"x" * 70_000, "headers": {"Content-Type": "application/json"}},
            413,
            "PAYLOAD_TOO_LARGE",
        ),
        ("GET", "/users/me", {}, 401, "UNAUTHORIZED"),
    ],
)
async def test_every_error_uses_the_envelope(
    http: httpx.AsyncClient,
    method: str,
    path: str,
    kwargs: dict[str, object],
    status: int,
    code: str,
) -> None:
    response = await http.request(method, path, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert isinstance(error["details"], list)
    assert error["request_id"] == response.headers["x-request-id"]


async def test_chunked_bodies_are_limited_too(http: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"x" * 1000

    # No Content-Length: httpx sends a generator chunked.
    response = await http.post(
        "/auth/token", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


async def test_large_responses_are_gzipped(http: httpx.AsyncClient, actors: Actors) -> None:
    response = await http.get(
        "/services", params={"per_page": 50, "active": "true"}, headers={"Accept-Encoding": "gzip"}
    )
    assert response.status_code == 200
    if len(response.content) >= 1000:
        assert response.headers["content-encoding"] == "gzip"


async def test_cors_allows_configured_origins_only(key_file: Path) -> None:
    settings = api_settings(key_file, cors_origins=["https://app.erynoa.test"])
    with running(settings) as server:
        async with httpx.AsyncClient(base_url=f"{server.base_url}/api/v1") as http:
            preflight = await http.options(
                "/bookings",
                headers={
                    "Origin": "https://app.erynoa.test",
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "Authorization, Idempotency-Key",
                },
            )
            assert preflight.status_code == 200
            assert preflight.headers["access-control-allow-origin"] == "https://app.erynoa.test"
            simple = await http.get("/version", headers={"Origin": "https://app.erynoa.test"})
            assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()
            other = await http.get("/version", headers={"Origin": "https://evil.test"})
            assert "access-control-allow-origin" not in other.headers


async def test_rate_limits_answer_429_with_retry_after(key_file: Path) -> None:
    settings = api_settings(key_file, rate_limit_per_minute_user=3)
    with running(settings) as server:
        async with httpx.AsyncClient(base_url=f"{server.base_url}/api/v1") as http:
            from api.auth import issue_dev_token

            auth = {
                "Authorization": "Bearer "
                + issue_dev_token(settings, unique("u-"), ["customer"], 600)
            }
            statuses = [
                (await http.get("/auth/userinfo", headers=auth)).status_code for _ in range(5)
            ]
            assert statuses[:3] == [200, 200, 200]
            assert statuses[3:] == [429, 429]
            limited = await http.get("/auth/userinfo", headers=auth)
            assert limited.status_code == 429
            assert 1 <= int(limited.headers["retry-after"]) <= 120
            error = limited.json()["error"]
            assert error["code"] == "RATE_LIMITED"
            assert error["details"] == [{"limit_per_minute": 3, "scope": "user"}]
            # Another user is not affected.
            other = {
                "Authorization": "Bearer "
                + issue_dev_token(settings, unique("u-"), ["customer"], 600)
            }
            assert (await http.get("/auth/userinfo", headers=other)).status_code == 200


async def test_per_ip_rate_limit(key_file: Path) -> None:
    # Its own topic prefix gives this server its own counters (every test shares 127.0.0.1).
    settings = api_settings(key_file, rate_limit_per_minute_ip=5, topic_prefix=f"rl{unique()[:8]}-")
    with running(settings) as server:
        async with httpx.AsyncClient(base_url=f"{server.base_url}/api/v1") as http:
            statuses = [(await http.get("/services")).status_code for _ in range(6)]
            assert statuses == [200] * 5 + [429]
            limited = await http.get("/services")
            assert limited.json()["error"]["details"][0]["scope"] == "client address"
            assert int(limited.headers["retry-after"]) >= 1
            # Probes are never limited.
            assert (await http.get("/health/live")).status_code == 200


async def test_the_address_limit_counts_authenticated_requests_once_whatever_their_token(
    key_file: Path,
) -> None:
    # Authenticated routes count the address in the same Redis round trip as the token's
    # revocation check and the user's limit; every request still counts exactly once.
    settings = api_settings(key_file, rate_limit_per_minute_ip=4, topic_prefix=f"rl{unique()[:8]}-")
    with running(settings) as server:
        async with httpx.AsyncClient(base_url=f"{server.base_url}/api/v1") as http:
            from api.auth import issue_dev_token

            def auth(token: str) -> dict[str, str]:
                return {"Authorization": f"Bearer {token}"}

            valid = issue_dev_token(settings, unique("u-"), ["customer"], 600)
            statuses = [
                (await http.get("/auth/userinfo")).status_code,
                (await http.get("/auth/userinfo", headers=auth("not-a-token"))).status_code,
                (await http.get("/auth/userinfo", headers=auth(valid))).status_code,
                (await http.post("/bookings", json={}, headers=auth(valid))).status_code,
                (await http.get("/auth/userinfo", headers=auth(valid))).status_code,
                (await http.get("/auth/userinfo", headers=auth("not-a-token"))).status_code,
            ]
            assert statuses == [401, 401, 200, 422, 429, 429]
            limited = await http.post("/bookings", json={}, headers=auth(valid))
            assert limited.status_code == 429
            assert limited.json()["error"]["details"][0]["scope"] == "client address"


async def test_an_authenticated_request_asks_redis_once(key_file: Path) -> None:
    settings = api_settings(key_file)
    with running(settings) as server:
        redis = server.server.config.app.state.runtime.redis
        asked: list[str] = []
        pipeline, execute_command = redis.pipeline, redis.execute_command

        def counting_pipeline(*args: Any, **kwargs: Any) -> Any:
            asked.append("pipeline")
            return pipeline(*args, **kwargs)

        async def counting_command(*args: Any, **kwargs: Any) -> Any:
            asked.append(str(args[0]))
            return await execute_command(*args, **kwargs)

        redis.pipeline, redis.execute_command = counting_pipeline, counting_command
        async with httpx.AsyncClient(base_url=f"{server.base_url}/api/v1") as http:
            from api.auth import issue_dev_token

            token = issue_dev_token(settings, unique("u-"), ["customer"], 600)
            auth = {"Authorization": f"Bearer {token}"}
            assert (await http.get("/auth/userinfo", headers=auth)).status_code == 200
            assert asked == ["pipeline"]  # address limit, revocation and user limit together


async def test_a_revoked_token_does_not_use_up_its_owners_rate_limit(key_file: Path) -> None:
    settings = api_settings(key_file, rate_limit_per_minute_user=3)
    with running(settings) as server:
        async with httpx.AsyncClient(base_url=f"{server.base_url}/api/v1") as http:
            from api.auth import issue_dev_token

            sub = unique("u-")
            old = {"Authorization": "Bearer " + issue_dev_token(settings, sub, ["customer"], 600)}
            assert (await http.post("/auth/logout", headers=old)).status_code == 200  # 1 of 3
            for _ in range(5):
                refused = await http.get("/auth/userinfo", headers=old)
                assert refused.status_code == 401
                assert "revoked" in refused.json()["error"]["message"]
            new = {"Authorization": "Bearer " + issue_dev_token(settings, sub, ["customer"], 600)}
            statuses = [
                (await http.get("/auth/userinfo", headers=new)).status_code for _ in range(3)
            ]
            assert statuses == [200, 200, 429]


async def test_with_redis_down_tokens_cannot_be_checked_but_public_reads_go_on(
    key_file: Path,
) -> None:
    nobody_listens = free_port()
    settings = api_settings(key_file, redis_url=f"redis://127.0.0.1:{nobody_listens}/0")
    with running(settings) as server:
        async with httpx.AsyncClient(base_url=f"{server.base_url}/api/v1", timeout=30) as http:
            from api.auth import issue_dev_token

            token = issue_dev_token(settings, unique("u-"), ["customer"], 600)
            checked = await http.get("/auth/userinfo", headers={"Authorization": f"Bearer {token}"})
            assert checked.status_code == 503
            assert checked.json()["error"]["details"][0]["component"] == "redis"
            assert (await http.get("/auth/userinfo")).status_code == 401
            assert (await http.get("/services")).status_code == 200  # the limit fails open


async def test_openapi_document_has_examples_and_tags(
    live_api: LiveApi, http: httpx.AsyncClient
) -> None:
    document = (await http.get("/openapi.json")).json()
    operations = [
        (path, method, op)
        for path, item in document["paths"].items()
        for method, op in item.items()
    ]
    assert len(operations) >= 30
    for path, method, op in operations:
        assert op.get("tags"), (method, path)
        assert op.get("summary") or op.get("description"), (method, path)
        if method in ("post", "put"):
            content = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            schema = content.get("schema", {})
            ref = schema.get("$ref") or next(
                (s.get("$ref") for s in schema.get("anyOf", []) if "$ref" in s), None
            )
            has_example = (
                "example" in schema
                or "examples" in content
                or (
                    ref is not None
                    and "examples" in document["components"]["schemas"][ref.rsplit("/", 1)[1]]
                )
            )
            assert not op.get("requestBody") or has_example, (method, path)
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")):
                example = response["content"]["application/json"].get("example") or {}
                assert "error" in example, (method, path, status)
