"""The event docs routes: the raw document, the HTML and its assets, and nothing else on disk."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from fastapi import FastAPI

from api.app import API_PREFIX, create_app
from api.envelopes import install_error_handlers
from api.routes.events import events_router
from contracts import DOCUMENT
from erynoa.settings import Settings

SECRET = "not-for-clients"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A rendered site beside files no request may reach."""
    (tmp_path / "secret.txt").write_text(SECRET)
    (tmp_path / "secret.js").write_text(SECRET)
    html = tmp_path / "html"
    (html / "css").mkdir(parents=True)
    (html / "js").mkdir()
    (html / "index.html").write_text('<link href="css/a.css"><script src="js/app.js"></script>')
    (html / "css" / "a.css").write_text("body{}")
    (html / "js" / "app.js").write_text("const schema = {};")
    (html / ".source").write_text("digest")
    (html / "js" / "notes.txt").write_text(SECRET)
    (html / "js" / "link.js").symlink_to(tmp_path / "secret.js")
    (html / "escape").symlink_to(tmp_path)
    return html


async def _client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield client


@pytest.fixture
async def client(site: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(events_router(DOCUMENT, site), prefix=API_PREFIX)
    async for c in _client(app):
        yield c


async def test_the_raw_document_is_served_as_yaml(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/events/asyncapi.yaml")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/yaml")
    assert response.content == DOCUMENT.read_bytes()


async def test_the_page_and_its_assets_are_served_with_a_same_origin_policy(
    client: httpx.AsyncClient,
) -> None:
    redirect = await client.get("/api/v1/events/docs")
    assert redirect.status_code == 308
    assert redirect.headers["location"] == "/api/v1/events/docs/"
    page = await client.get("/api/v1/events/docs/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert (await client.get("/api/v1/events/docs/index.html")).text == page.text
    css = await client.get("/api/v1/events/docs/css/a.css")
    assert (css.status_code, css.headers["content-type"]) == (200, "text/css; charset=utf-8")
    assert (await client.get("/api/v1/events/docs/js/app.js")).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "../secret.txt",
        "%2e%2e/secret.txt",
        "%2e%2e%2fsecret.txt",
        "..%2f..%2fpyproject.toml",
        "css/../../secret.txt",
        "css/%2e%2e/%2e%2e/secret.js",
        "..%5csecret.txt",
        "%2fetc%2fpasswd",
        "/etc/passwd",
        "//etc/passwd",
        "C:%5cWindows%5cwin.ini",
        ".source",
        "js/notes.txt",
        "js/link.js",
        "escape/secret.js",
        "index.html%00.js",
        "js/app.js/",
        "JS/APP.JS",
    ],
)
async def test_no_path_reaches_a_file_the_renderer_did_not_write(site: Path, path: str) -> None:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(events_router(DOCUMENT, site), prefix=API_PREFIX)
    status, body = await _raw_get(app, f"/api/v1/events/docs/{path}")
    assert status == 404, status
    assert SECRET not in body
    assert "root:" not in body
    assert "no such file in the event docs" in body  # refused by the route, not unrouted


async def _raw_get(app: FastAPI, raw_path: str) -> tuple[int, str]:
    """GET ``raw_path`` exactly as a client sent it (an HTTP client would resolve the dots)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": unquote(raw_path),
        "raw_path": raw_path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"api")],
        "client": ("127.0.0.1", 1),
        "server": ("api", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body.decode(errors="replace")


async def test_the_page_says_how_to_render_it_when_it_is_not_rendered(tmp_path: Path) -> None:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(events_router(DOCUMENT, tmp_path / "missing"), prefix=API_PREFIX)
    async for client in _client(app):
        response = await client.get("/api/v1/events/docs/")
        assert response.status_code == 503
        assert "erynoa asyncapi --html" in response.json()["error"]["message"]
        assert str(tmp_path) not in response.text  # no server paths to clients
        assert (await client.get("/api/v1/events/asyncapi.yaml")).status_code == 200


async def test_the_api_serves_the_event_docs_publicly_beside_the_openapi_docs() -> None:
    app = create_app(Settings())
    async for client in _client(app):
        # No token, as for /api/v1/docs: both describe interfaces, not data.
        assert (await client.get("/api/v1/docs")).status_code == 200
        document = await client.get("/api/v1/events/asyncapi.yaml")
        assert document.status_code == 200
        assert document.content == DOCUMENT.read_bytes()
        assert (await client.get("/api/v1/events/docs")).status_code == 308
