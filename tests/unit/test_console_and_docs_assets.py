"""The console's and the API docs' static parts, served without the runtime (no lifespan, no
network): security headers, a closed set of files, and pages that name no other host."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.console import STATIC
from erynoa.settings import Settings


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    # Not entered as a context manager: the lifespan (Postgres, Kafka, Redis) never starts,
    # and the routes under test need none of it.
    return TestClient(create_app(Settings()), base_url="http://127.0.0.1")


def test_the_console_page_carries_a_strict_content_security_policy(client: TestClient) -> None:
    response = client.get("/console/")
    assert response.status_code == 200
    policy = response.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["default-src"] == "'none'"
    assert "unsafe-inline" not in policy
    assert "unsafe-eval" not in policy
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


def test_console_redirects_to_its_page(client: TestClient) -> None:
    response = client.get("/console", follow_redirects=False)
    assert response.status_code == 308
    assert response.headers["location"] == "/console/"


@pytest.mark.parametrize("name", ["app.js", "api.js", "dom.js", "views.js", "console.css"])
def test_every_console_file_is_served_with_the_policy(client: TestClient, name: str) -> None:
    response = client.get(f"/console/static/{name}")
    assert response.status_code == 200
    assert "content-security-policy" in response.headers
    assert response.content == (STATIC / name).read_bytes()


@pytest.mark.parametrize("name", ["index.html", "..%2Fapp.py", "%2E%2E/__init__.py", "nope.js"])
def test_nothing_else_is_served_from_the_console(client: TestClient, name: str) -> None:
    assert client.get(f"/console/static/{name}").status_code == 404


def test_the_console_has_no_inline_script_style_or_html_sink() -> None:
    page = (STATIC / "index.html").read_text()
    assert re.findall(r"<script(?![^>]*\bsrc=)", page) == []
    assert " style=" not in page
    assert "<style" not in page
    assert re.findall(r"\bon[a-z]+=", page) == []
    for script in STATIC.glob("*.js"):
        code = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in code, f"{script.name} uses {sink}"


def test_the_console_and_its_files_name_no_other_host() -> None:
    for path in STATIC.iterdir():
        assert re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", path.read_text()) == [], path


def test_swagger_ui_loads_only_from_this_server(client: TestClient) -> None:
    page = client.get("/api/v1/docs")
    assert page.status_code == 200
    assert re.findall(r"https?://", page.text) == []
    for asset in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        assert asset.startswith("/api/v1/docs/assets/"), asset
        assert client.get(asset).status_code == 200
    assert client.get("/api/v1/docs/assets/index.html").status_code == 404
    assert client.get("/api/v1/docs/oauth2-redirect").status_code == 200


def _console_calls() -> set[tuple[str, str]]:
    """(method, path) of every admin endpoint ``api.js`` calls, a ``${...}`` as ``{}``."""
    source = (STATIC / "api.js").read_text()
    calls = re.findall(r"this\.(get|post)\(\s*[`\"](/admin/[^`\"]*)[`\"]\s*[,)]", source)
    multi = re.findall(r"this\.(get|post)\(`(/admin/[^`]*)`\s*\+\s*`([^`]*)`", source)
    found = {(m.upper(), p) for m, p in calls} | {(m.upper(), a + b) for m, a, b in multi}
    return {(m, re.sub(r"\$\{[^}]*\}", "{}", p)) for m, p in found}


def test_the_console_calls_only_the_admin_api_every_other_face_uses(client: TestClient) -> None:
    # One set of admin endpoints: the console has none of its own, so what it shows is what
    # the admin API (and ``erynoa saga|dlq``, over the same ops) answers.
    schema = client.get("/api/v1/openapi.json").json()
    admin = {
        (method.upper(), re.sub(r"\{[^}]*\}", "{}", path.removeprefix("/api/v1")))
        for path, item in schema["paths"].items()
        if path.startswith("/api/v1/admin/")
        for method in item
    }
    calls = _console_calls()
    assert ("POST", "/admin/dlq/replay") in calls
    assert calls <= admin, sorted(calls - admin)
