"""``erynoa token``: prints a development token, refuses unknown roles and a disabled issuer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import typer
from typer.testing import CliRunner

from api import cli
from api.auth import DevIssuer
from erynoa.settings import Settings, get_settings


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[typer.Typer]:
    monkeypatch.setenv("ERYNOA_DEV_SIGNING_KEY_FILE", str(tmp_path / "key.pem"))
    get_settings.cache_clear()
    app = typer.Typer()
    app.command("token")(cli.token)
    app.command("api")(cli.serve)
    yield app
    get_settings.cache_clear()


def test_token_prints_a_token_for_the_roles(app: typer.Typer) -> None:
    result = CliRunner().invoke(
        app, ["token", "--sub", "alice", "--role", "customer", "--role", "provider", "--ttl", "120"]
    )
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert (claims["sub"], sorted(claims["roles"]), claims["exp"] - claims["iat"]) == (
        "alice",
        ["customer", "provider"],
        120,
    )
    assert jwt.get_unverified_header(token)["kid"] == DevIssuer.from_settings(Settings()).kid


def test_token_refuses_unknown_roles(app: typer.Typer) -> None:
    result = CliRunner().invoke(app, ["token", "--sub", "alice", "--role", "boss"])
    assert result.exit_code == 2
    assert "unknown role" in result.output


def test_token_refuses_when_the_dev_issuer_is_off(
    app: typer.Typer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ERYNOA_DEV_ISSUER_ENABLED", "false")
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["token", "--sub", "alice", "--role", "admin"])
    assert result.exit_code == 1
    assert "disabled" in result.output
