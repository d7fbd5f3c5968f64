"""OWASP API8:2023 Security Misconfiguration: unsafe defaults, an incomplete production mode,
responses that leak internals, ports published to the world, secrets copied into images.

The start-up checks are tried on ``create_app`` and on the real ``erynoa`` commands (as
subprocesses, pointed at closed ports so nothing else is touched); the leaks against a real
API server on loopback whose dependencies are closed ports.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
import yaml
from pydantic import ValidationError

from api.app import create_app
from api.auth import issue_dev_token
from erynoa.settings import PROJECT_ROOT, Settings, UnsafeConfiguration
from tests.conftest import unique
from tests.integration.api.conftest import LiveApi, api_settings, free_port, running

# --- the development token issuer: explicit environment, loopback only ---------------------


def _unset_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test session declares itself (tests/conftest.py); these tests need a process that
    # did not.
    monkeypatch.delenv("ERYNOA_ENVIRONMENT", raising=False)


def test_the_dev_issuer_refuses_to_start_without_an_explicit_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _unset_environment(monkeypatch)
    settings = Settings(_env_file=None, dev_signing_key_file=tmp_path / "key.pem")  # type: ignore[call-arg]
    assert settings.environment is None
    with pytest.raises(UnsafeConfiguration) as refused:
        create_app(settings)
    assert "ERYNOA_ENVIRONMENT" in str(refused.value)
    assert "ERYNOA_DEV_ISSUER_ENABLED=false" in str(refused.value)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "api.example.com"])
@pytest.mark.parametrize("environment", ["development", "test"])
def test_the_dev_issuer_refuses_to_listen_beyond_loopback(
    host: str, environment: str, tmp_path: Path
) -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        environment=environment,  # type: ignore[arg-type]
        api_host=host,
        dev_signing_key_file=tmp_path / "key.pem",
    )
    with pytest.raises(UnsafeConfiguration) as refused:
        create_app(settings)
    assert f"ERYNOA_API_HOST={host}" in str(refused.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_the_dev_issuer_runs_on_loopback_in_development(host: str, tmp_path: Path) -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        environment="development",
        api_host=host,
        dev_signing_key_file=tmp_path / "key.pem",
    )
    create_app(settings)  # builds; connects to nothing until its lifespan starts


def test_without_the_dev_issuer_the_api_may_listen_anywhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _unset_environment(monkeypatch)
    create_app(Settings(_env_file=None, api_host="0.0.0.0", dev_issuer_enabled=False))  # type: ignore[call-arg]


def _erynoa(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``erynoa <args>`` from this tree, with no declared environment and every dependency a
    closed port: a refusal exits at once, and a start that should not happen touches nothing."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ERYNOA_")}
    dead = free_port()
    base.update(
        PYTHONPATH=str(PROJECT_ROOT),
        ERYNOA_API_PORT=str(free_port()),
        ERYNOA_KAFKA_BOOTSTRAP=f"127.0.0.1:{dead}",
        ERYNOA_DATABASE_URL=f"postgresql://nobody@127.0.0.1:{dead}/none",
        ERYNOA_REDIS_URL=f"redis://127.0.0.1:{dead}/0",
        ERYNOA_METRICS_PORT_BASE="0",
        ERYNOA_DEV_SIGNING_KEY_FILE=str(cwd / "key.pem"),
    )
    base.update(env)
    # cwd outside the project: no .env of a developer's is read.
    return subprocess.run(
        [sys.executable, "-m", "erynoa", *args],
        cwd=cwd,
        env=base,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_erynoa_api_on_all_interfaces_without_an_environment_refuses_to_start(
    tmp_path: Path,
) -> None:
    try:
        answer = _erynoa(["api"], tmp_path, ERYNOA_API_HOST="0.0.0.0")
    except subprocess.TimeoutExpired:
        pytest.fail("erynoa api started on 0.0.0.0 with the development issuer on")
    assert answer.returncode == 1, answer.stderr
    assert "ERYNOA_ENVIRONMENT" in answer.stderr
    assert "ERYNOA_API_HOST=0.0.0.0" in answer.stderr
    assert "Traceback" not in answer.stderr


def test_erynoa_run_on_all_interfaces_refuses_before_starting_anything(tmp_path: Path) -> None:
    # What `ERYNOA_API_HOST=0.0.0.0 make run` ends in, with or without an environment.
    for environment in ({}, {"ERYNOA_ENVIRONMENT": "development"}):
        try:
            answer = _erynoa(["run"], tmp_path, ERYNOA_API_HOST="0.0.0.0", **environment)
        except subprocess.TimeoutExpired:
            pytest.fail(f"erynoa run started on 0.0.0.0 ({environment})")
        assert answer.returncode == 1, answer.stderr
        assert "ERYNOA_API_HOST=0.0.0.0" in answer.stderr
        assert "starting" not in answer.stderr


def _make_run_commands(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ERYNOA_")}
    shown = subprocess.run(
        ["make", "-n", "--no-print-directory", "run"],
        cwd=PROJECT_ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return shown.stdout


def test_make_run_declares_the_development_environment_unless_one_is_set() -> None:
    # A fresh machine with nothing set: `make run` is the local development system.
    run_line = _make_run_commands().splitlines()[-1]
    assert "ERYNOA_ENVIRONMENT=development" in run_line
    assert "erynoa run" in run_line
    # An environment the user chose wins (here it would then refuse to start, as it should).
    chosen = _make_run_commands(ERYNOA_ENVIRONMENT="production").splitlines()[-1]
    assert "ERYNOA_ENVIRONMENT=development" not in chosen


# --- compose.yaml ---------------------------------------------------------------------------

COMPOSE = PROJECT_ROOT / "compose.yaml"


def _compose_services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


def _host_ip(port: object) -> str | None:
    """The host address a compose port entry publishes on (None: every interface)."""
    if isinstance(port, dict):
        host_ip = port.get("host_ip")
        return str(host_ip) if host_ip is not None else None
    text = str(port)
    # HOST_IP:HOST_PORT:CONTAINER_PORT, the host IP possibly [bracketed] IPv6.
    match = re.fullmatch(r"(\[[^\]]+\]|[^:]+):[^:]+:[^:]+", text)
    return match.group(1).strip("[]") if match else None


def test_compose_publishes_every_port_on_loopback_only() -> None:
    published = 0
    for name, service in _compose_services().items():
        for port in service.get("ports", []):
            assert _host_ip(port) == "127.0.0.1", f"compose service {name} publishes {port!r}"
            published += 1
        assert "network_mode" not in service, f"compose service {name} shares a network"
    assert published >= 1  # the API at least


def test_the_compose_api_passes_the_start_up_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    _unset_environment(monkeypatch)
    env = _compose_services()["api"]["environment"]
    values = {
        key.removeprefix("ERYNOA_").lower(): value
        for key, value in env.items()
        if key.startswith("ERYNOA_")
    }
    settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
    assert settings.environment == "development"
    settings.require_safe_dev_issuer()


# --- .dockerignore --------------------------------------------------------------------------


def _docker_excluded(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent directories
    decides; ``!`` re-includes; ``*`` stays within a path segment, ``**`` crosses them (``**/``
    also matches no directory at all)."""
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.removeprefix("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "\x01").replace(r"\*\*", "\x00")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        regex = regex.replace("\x01", "(?:.*/)?").replace("\x00", ".*")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def _dockerignore() -> list[str]:
    path = PROJECT_ROOT / ".dockerignore"
    assert path.is_file(), "no .dockerignore: `COPY . .` would take every local file"
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        ".env.production",
        ".stack/dev-signing-key.pem",
        ".stack/postgres/data/pg_hba.conf",
        ".stack-faults/dev-signing-key.pem",
        ".stack-faults-3/kafka/meta.properties",
        ".venv/bin/python",
        ".git/config",
        "secrets/stripe.key",
        "deploy/tls.pem",
        "id_rsa",
        "bench/results/2026-01-28.json",
    ],
)
def test_docker_builds_leave_local_state_and_secrets_out(path: str) -> None:
    assert _docker_excluded(path, _dockerignore()), f"{path} would be copied into the image"


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "erynoa/settings.py",
        "api/app.py",
        "streams/payment.py",
        "consumers/materializer.py",
        "schemas/BookingRequested.v1.avsc",
        "migrations/0001_catalog.sql",
        "topics.yaml",
    ],
)
def test_docker_builds_keep_what_the_image_needs(path: str) -> None:
    assert not _docker_excluded(path, _dockerignore()), f"{path} would be missing from the image"


# --- production mode ------------------------------------------------------------------------


def _production(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "production",
        "dev_issuer_enabled": False,
        "payment_gateway": "stripe",
        "stripe_api_key": "sk_live_" + "a1B2c3D4" * 3,
        "stripe_webhook_secret": "whsec_" + "Zx9Yw8Vu" * 4,
        "webhook_signing_secret": "s3cr3t-" * 6,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_a_complete_production_configuration_is_accepted() -> None:
    assert _production().environment == "production"
    assert _production(stripe_api_key="rk_live_" + "a1B2c3D4" * 3).payment_gateway == "stripe"


@pytest.mark.parametrize(
    ("override", "variable"),
    [
        ({"payment_gateway": "sandbox"}, "ERYNOA_PAYMENT_GATEWAY"),
        ({"stripe_api_key": "sk_test_" + "a1B2c3D4" * 3}, "ERYNOA_STRIPE_API_KEY"),
        ({"stripe_api_key": "rk_test_" + "a1B2c3D4" * 3}, "ERYNOA_STRIPE_API_KEY"),
        ({"stripe_api_key": "pk_live_" + "a1B2c3D4" * 3}, "ERYNOA_STRIPE_API_KEY"),
        ({"stripe_api_key": "sk_live_x"}, "ERYNOA_STRIPE_API_KEY"),
        ({"stripe_webhook_secret": "my-own-webhook-secret-of-enough-length"}, "WEBHOOK_SECRET"),
        ({"stripe_webhook_secret": "whsec_short"}, "ERYNOA_STRIPE_WEBHOOK_SECRET"),
        ({"stripe_webhook_secret": "whsec_dev"}, "ERYNOA_STRIPE_WEBHOOK_SECRET"),
        ({"webhook_signing_secret": "dev-secret"}, "ERYNOA_WEBHOOK_SIGNING_SECRET"),
        ({"webhook_signing_secret": "correct-horse-battery"}, "ERYNOA_WEBHOOK_SIGNING_SECRET"),
        ({"dev_issuer_enabled": True}, "ERYNOA_DEV_ISSUER_ENABLED"),
    ],
)
def test_production_refuses_test_money_and_weak_secrets(
    override: dict[str, Any], variable: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        _production(**override)
    # What `erynoa` prints (cli.startup.load_settings): names the problem, never the secret.
    message = "; ".join(str(error["msg"]) for error in refused.value.errors())
    assert variable in message
    for value in override.values():
        if isinstance(value, str) and value not in ("sandbox",):
            assert value not in message


# --- responses that leak internals (a real server) --------------------------------------------

LEAK_MARKERS = ("127.0.0.1", "Errno", "refused", "Connect call", "Traceback", "asyncpg", "redis://")


@pytest.mark.integration
async def test_503_bodies_name_the_component_never_its_address(
    key_file: Path, live_api: LiveApi
) -> None:
    ports = {"kafka": free_port(), "postgres": free_port(), "redis": free_port()}
    settings = api_settings(
        key_file,
        kafka_bootstrap=f"127.0.0.1:{ports['kafka']}",
        database_url=f"postgresql://erynoa@127.0.0.1:{ports['postgres']}/erynoa",
        redis_url=f"redis://127.0.0.1:{ports['redis']}/0",
    )
    token = issue_dev_token(settings, unique("u-"), ["customer"], 600)
    auth = {"Authorization": f"Bearer {token}"}
    with running(settings) as server:
        async with httpx.AsyncClient(base_url=f"{server.base_url}/api/v1", timeout=30) as http:
            answers = {
                "ready": await http.get("/health/ready"),
                "userinfo": await http.get("/auth/userinfo", headers=auth),
                "services": await http.get("/services"),
            }
    for what, answer in answers.items():
        assert answer.status_code == 503, f"{what}: {answer.text}"
        details = answer.json()["error"]["details"]
        assert details, answer.text
        assert all(d["component"] in ports for d in details), answer.text
        for marker in (*LEAK_MARKERS, *(str(port) for port in ports.values())):
            assert marker not in answer.text, f"{what} leaks {marker!r}: {answer.text}"
    ready = answers["ready"].json()["error"]["details"]
    assert sorted(d["component"] for d in ready) == ["kafka", "postgres", "redis"]


@pytest.mark.integration
async def test_version_does_not_reveal_the_runtime(http: httpx.AsyncClient) -> None:
    version = await http.get("/version")
    assert version.status_code == 200
    assert set(version.json()["data"]) == {"version", "api_version"}
    assert "python" not in version.text.lower()


@pytest.mark.integration
async def test_metrics_are_not_served_on_the_public_api_port(live_api: LiveApi) -> None:
    async with httpx.AsyncClient(base_url=live_api.base_url, timeout=30) as client:
        for path in ("/metrics", "/metrics/", "/api/v1/metrics"):
            answer = await client.get(path)
            assert answer.status_code == 404, f"{path}: {answer.status_code}"
            assert "erynoa_http_requests_total" not in answer.text


@pytest.mark.integration
async def test_the_placeholder_stripe_secret_verifies_nothing_outside_development(
    key_file: Path, live_api: LiveApi
) -> None:
    # Anyone can sign with `whsec_dev` (it is in the source): a server that has not declared
    # itself a development or test environment must not take such an event as Stripe's.
    settings = api_settings(
        key_file,
        environment=None,
        dev_issuer_enabled=False,
        oidc_issuer=live_api.settings.oidc_issuer,
        stripe_webhook_secret="whsec_dev",
    )
    event = {
        "id": f"evt_{unique().replace('-', '')}",
        "object": "event",
        "type": "payment_intent.succeeded",
        "data": {"object": {"id": "pi_forged", "metadata": {"booking_id": unique()}}},
    }
    payload = json.dumps(event)
    signature = stripe.WebhookSignature.generate_signature_header(payload, "whsec_dev")
    with running(settings) as server:
        async with httpx.AsyncClient(base_url=f"{server.base_url}/api/v1", timeout=30) as http:
            forged = await http.post(
                "/webhooks/stripe",
                content=payload,
                headers={"Stripe-Signature": signature, "Content-Type": "application/json"},
            )
    assert forged.status_code == 503, forged.text
    assert forged.json()["error"]["code"] == "WEBHOOK_NOT_CONFIGURED"
    assert "whsec_dev" not in forged.text
