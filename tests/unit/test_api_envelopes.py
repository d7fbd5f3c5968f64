"""The response shapes and the middleware, on a small in-memory app (no stack needed)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel

from api.envelopes import ApiError, Envelope, accepted, install_error_handlers, ok
from api.middleware import BodyGuardMiddleware, RequestContextMiddleware


class Thing(BaseModel):
    name: str


def make_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/ok", response_model=Envelope[Thing])
    async def good(request: Request) -> Envelope[Thing]:
        return ok(request, Thing(name="x"))

    @app.post("/things", response_model=Envelope[Thing])
    async def create(request: Request, body: Thing) -> Envelope[Thing]:
        return ok(request, body)

    @app.post("/accept")
    async def accept() -> object:
        return accepted("/api/v1/bookings/b1", "b1", datetime(2030, 1, 1, 12, tzinfo=UTC))

    @app.get("/conflict")
    async def conflict() -> None:
        raise ApiError(409, "not now", code="NOT_NOW", details=[{"status": "confirmed"}])

    @app.get("/bug")
    async def bug() -> None:
        raise RuntimeError("a bug")

    app.add_middleware(BodyGuardMiddleware, max_bytes=100)
    app.add_middleware(RequestContextMiddleware)
    return app


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(make_app(), raise_server_exceptions=False) as c:
        yield c


def assert_envelope(response: object, status: int, code: str) -> dict[str, object]:
    assert getattr(response, "status_code") == status  # noqa: B009 - typed loosely on purpose
    body = response.json()["error"]  # type: ignore[attr-defined]
    assert body["code"] == code
    assert body["request_id"] == response.headers["x-request-id"]  # type: ignore[attr-defined]
    assert isinstance(body["details"], list)
    return dict(body)


def test_success_has_data_and_meta(client: TestClient) -> None:
    response = client.get("/ok", headers={"X-Request-ID": "abc-1"})
    assert response.json()["data"] == {"name": "x"}
    assert response.json()["meta"]["request_id"] == "abc-1"
    assert response.json()["meta"]["timestamp"].endswith("Z")
    assert response.headers["x-request-id"] == "abc-1"


def test_accepted_has_the_seed_body_and_headers(client: TestClient) -> None:
    response = client.post("/accept")
    assert response.status_code == 202
    assert response.json() == {
        "status": "processing",
        "workflow_id": "b1",
        "poll_url": "/api/v1/bookings/b1",
        "estimated_completion": "2030-01-01T12:00:00Z",
    }
    assert response.headers["location"] == "/api/v1/bookings/b1"
    assert response.headers["retry-after"] == "1"


def test_route_errors_use_the_envelope(client: TestClient) -> None:
    body = assert_envelope(client.get("/conflict"), 409, "NOT_NOW")
    assert body["details"] == [{"status": "confirmed"}]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("GET", "/missing", {}, 404, "NOT_FOUND"),
        ("DELETE", "/ok", {}, 405, "METHOD_NOT_ALLOWED"),
        ("POST", "/things", {"json": {"name": 3}}, 422, "VALIDATION_ERROR"),
        (
            "POST",
            "/things",
            {"content": b"{", "headers": {"content-type": "application/json"}},
            422,
            "VALIDATION_ERROR",
        ),
        (
            "POST",
            "/things",
            {"content": b'"\xff"', "headers": {"content-type": "application/json"}},
            422,
            "VALIDATION_ERROR",
        ),
        (
            "POST",
            "/things",
            {"content": b"name=x", "headers": {"content-type": "text/plain"}},
            415,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        ("POST", "/things", {"json": {"name": "x" * 200}}, 413, "PAYLOAD_TOO_LARGE"),
        ("GET", "/bug", {}, 500, "INTERNAL_ERROR"),
    ],
)
def test_framework_errors_use_the_envelope(
    client: TestClient, method: str, path: str, kwargs: dict[str, object], status: int, code: str
) -> None:
    assert_envelope(client.request(method, path, **kwargs), status, code)  # type: ignore[arg-type]


def test_a_bug_does_not_leak_its_message(client: TestClient) -> None:
    response = client.get("/bug")
    assert "a bug" not in response.text


def test_validation_details_name_the_field_without_echoing_input(client: TestClient) -> None:
    response = client.post("/things", json={"name": 3, "secret": "hunter2"})
    details = response.json()["error"]["details"]
    assert {
        "field": "body.name",
        "message": "Input should be a valid string",
        "type": "string_type",
    } in details
    assert "hunter2" not in response.text


@pytest.mark.parametrize("given", [b"has space", b"x" * 129, b"", "ünï".encode()])
def test_unusable_request_ids_are_replaced(client: TestClient, given: bytes) -> None:
    response = client.get("/ok", headers={"X-Request-ID": given})
    assert response.headers["x-request-id"].startswith("req_")
