"""API7:2023 Server-Side Request Forgery: a customer's ``webhook_url`` must not reach our network.

Each target is tried twice: registered through ``PUT /users/me`` on the live API (422 naming the
field), and sent to by the notification side (``WebhookSender``, and once the whole agent) as if
it had got into the database anyway (DNS changed after registration). Only loopback traffic:
the non-loopback targets are sent through a recording transport that would show any request
that got past the guard, and the loopback ones at a real listener that counts connections.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from erynoa import events as ev
from erynoa import saga
from erynoa.codec import default_codec
from erynoa.db import create_pool
from erynoa.kafka import EventPublisher
from erynoa.outbound import Address, OutboundPolicy, parse_allow_rule
from erynoa.settings import Settings
from erynoa.topics import TopicCatalog, load_catalog
from streams.notification import (
    IDEMPOTENCY_HEADER,
    DeliveryFailed,
    DeliveryUnavailable,
    NotificationAdapter,
    SmtpSender,
    WebhookSender,
    compose,
)
from streams.runtime import AgentRuntime
from tests.conftest import unique
from tests.integration.agents import records
from tests.integration.agents.records import message
from tests.integration.api.conftest import LiveApi, api_settings, running
from tests.integration.saga.harness import create_service, create_user, read_topic
from tests.unit.test_streams_notification import a_state

SSRF_TARGETS = [
    "http://127.0.0.1/hook",
    "http://127.0.0.1:6379/",
    "http://10.0.0.5/hook",
    "http://172.20.1.1/hook",
    "http://192.168.0.1/admin",
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://100.64.0.1/hook",
    "http://0.0.0.0/hook",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[::ffff:169.254.169.254]/latest/meta-data/",
    "http://[fd00::1]/hook",
    "http://[fe80::1]/hook",
    "http://localhost/hook",
    "http://2130706433/hook",  # 127.0.0.1 as one decimal number
    "http://0177.0.0.1/hook",  # 127.0.0.1 in octal
    "http://0x7f.1/hook",
    "http://224.0.0.1/hook",
]
# Public, but on a port nobody serves webhooks on (SSH, Docker, Redis): a scan of the world
# through us. Only registered, never sent to.
NON_STANDARD_PORTS = [
    "https://93.184.215.14:22/hook",
    "https://hooks.example.com:2375/hook",
    "http://hooks.example.com:6379/",
]

CODEC = default_codec()


def notice() -> Any:
    return compose(a_state(), saga.customer_template(saga.Status.CONFIRMED), "customer")


class Recorder:
    """An inner transport that records what the guard let through, and answers 204."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.transport = httpx.MockTransport(self._answer)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(204)


class Listener:
    """A loopback HTTP endpoint: counts connections, records request heads, answers as told."""

    def __init__(self, answer: bytes = b"HTTP/1.1 204 No Content\r\n") -> None:
        self.answer = answer
        self.connections = 0
        self.heads: list[dict[str, str]] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Listener:
        self._server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            lines = head.split("\r\n")[1:]
            headers = {k.lower(): v for k, _, v in (ln.partition(": ") for ln in lines) if v}
            await reader.readexactly(int(headers.get("content-length", "0")))
            self.heads.append(headers)
            writer.write(self.answer + b"content-length: 0\r\nconnection: close\r\n\r\n")
            await writer.drain()
        finally:
            writer.close()


# --- at the API --------------------------------------------------------------------------------


@pytest.mark.parametrize("target", SSRF_TARGETS + NON_STANDARD_PORTS)
async def test_an_internal_or_odd_port_webhook_url_is_refused_at_the_api(
    live_api: LiveApi, http: httpx.AsyncClient, target: str
) -> None:
    auth = live_api.auth(unique("ssrf-"), "customer")
    response = await http.put("/users/me", json={"webhook_url": target}, headers=auth)
    assert response.status_code == 422, response.text
    [detail] = response.json()["error"]["details"]
    assert detail["field"] == "body.webhook_url"
    assert "address" in detail["message"] or "port" in detail["message"]
    stored = await http.get("/users/me", headers=auth)
    assert stored.json()["data"]["webhook_url"] is None


async def test_a_public_webhook_url_is_accepted_at_the_api(
    live_api: LiveApi, http: httpx.AsyncClient
) -> None:
    auth = live_api.auth(unique("ssrf-"), "customer")
    for target in ("https://93.184.215.14/hooks", "https://hooks.example.com:443/erynoa"):
        response = await http.put("/users/me", json={"webhook_url": target}, headers=auth)
        assert response.status_code == 200, response.text


async def test_the_allow_setting_admits_loopback_at_the_api(key_file: Any) -> None:
    settings = api_settings(key_file, outbound_allow=["127.0.0.1"])
    with running(settings) as server:
        api = LiveApi(settings, server.base_url)
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.put(
                api.url("/users/me"),
                json={"webhook_url": "http://127.0.0.1:18080/hook"},
                headers=api.auth(unique("dev-"), "customer"),
            )
    assert response.status_code == 200, response.text


# --- at send time ------------------------------------------------------------------------------


@pytest.mark.parametrize("target", SSRF_TARGETS)
async def test_an_internal_webhook_is_refused_before_any_request_at_send_time(target: str) -> None:
    recorder = Recorder()
    sender = WebhookSender("s3cret", policy=OutboundPolicy(), transport=recorder.transport)
    await sender.start()
    try:
        with pytest.raises(DeliveryFailed, match="webhook refused"):
            await sender.send(notice(), target)
    finally:
        await sender.close()
    assert recorder.requests == []


async def test_a_loopback_webhook_is_refused_without_opening_a_connection() -> None:
    async with Listener() as listener:
        # Its port allowed: the refusal is for the address, not for the port.
        sender = WebhookSender("s3cret", policy=OutboundPolicy(ports=frozenset({listener.port})))
        await sender.start()
        try:
            for host in ("127.0.0.1", "localhost", "[::ffff:127.0.0.1]", "2130706433"):
                with pytest.raises(DeliveryFailed, match="loopback"):
                    await sender.send(notice(), f"http://{host}:{listener.port}/hook")
        finally:
            await sender.close()
    assert listener.connections == 0


async def test_an_allowed_target_is_delivered() -> None:
    async with Listener() as listener:
        policy = OutboundPolicy(allow=(parse_allow_rule("127.0.0.1"),))
        sender = WebhookSender("s3cret", policy=policy)
        await sender.start()
        try:
            sent = notice()
            await sender.send(sent, f"http://127.0.0.1:{listener.port}/hook")
        finally:
            await sender.close()
    assert [h[IDEMPOTENCY_HEADER.lower()] for h in listener.heads] == [sent.notification_id]


async def test_the_connection_goes_to_the_checked_address_with_the_name_as_host() -> None:
    lookups: list[str] = []

    async def rebinding(host: str, port: int) -> list[Address]:
        # First answer allowed, every later one internal: a second lookup would be caught.
        lookups.append(host)
        first = len(lookups) == 1
        return [ipaddress.ip_address("127.0.0.1" if first else "10.0.0.1")]

    async with Listener() as listener:
        policy = OutboundPolicy(allow=(parse_allow_rule("127.0.0.1"),), resolver=rebinding)
        sender = WebhookSender("s3cret", policy=policy)
        await sender.start()
        try:
            await sender.send(notice(), f"http://hooks.erynoa.test:{listener.port}/hook")
        finally:
            await sender.close()
    assert lookups == ["hooks.erynoa.test"]
    assert [h["host"] for h in listener.heads] == [f"hooks.erynoa.test:{listener.port}"]


async def test_a_redirect_is_not_followed() -> None:
    answer = b"HTTP/1.1 302 Found\r\nlocation: http://169.254.169.254/latest/meta-data/\r\n"
    async with Listener(answer) as listener:
        policy = OutboundPolicy(allow=(parse_allow_rule("127.0.0.1"),))
        sender = WebhookSender("s3cret", policy=policy)
        await sender.start()
        try:
            with pytest.raises(DeliveryFailed, match="302"):
                await sender.send(notice(), f"http://127.0.0.1:{listener.port}/hook")
        finally:
            await sender.close()
    assert listener.connections == 1


# --- the notification agent --------------------------------------------------------------------


async def test_the_agent_records_a_refused_webhook_as_failed_without_the_remote_error(
    isolated: Settings, pool: asyncpg.Pool
) -> None:
    catalog: TopicCatalog = load_catalog(
        isolated.topics_file, isolated.topics_environment, isolated.topic_prefix
    )
    async with Listener() as listener:
        # The URL got in before the guard existed, or its name now points inward.
        own = isolated.model_copy(update={"outbound_allow": [], "outbound_ports": [listener.port]})
        customer = await create_user(
            pool, "customer", email=False, webhook_url=f"http://localhost:{listener.port}/x"
        )

        async def connect_pool() -> asyncpg.Pool:
            return await create_pool(own, min_size=1, max_size=2)

        adapter = NotificationAdapter(
            SmtpSender("127.0.0.1", 9, "bookings@example.test"),
            WebhookSender(own.webhook_signing_secret, policy=OutboundPolicy.from_settings(own)),
        )
        runtime = AgentRuntime(
            adapter=adapter,
            consumer=catalog.consumer("notification"),
            codec=CODEC,
            policy=saga.Policy(),
            connect_pool=connect_pool,
            make_publisher=lambda: EventPublisher.create(
                own.kafka_bootstrap, "test-ssrf", CODEC, catalog
            ),
        )
        await runtime.start()
        try:
            service = await create_service(pool)
            requested = records.requested(customer, service)
            rejected = records.rejected(requested)
            # The first attempt, not the last: a refusal is permanent, never retried.
            await runtime.process(
                [message(catalog, requested, 0, []), message(catalog, rejected, 1, [])]
            )
        finally:
            await runtime.stop()
    assert listener.connections == 0
    topic = catalog.topics[catalog.topic_for("NotificationFailed")]
    [failed] = [
        CODEC.decode(r.value)
        for r in await read_topic(isolated.kafka_bootstrap, topic.name, topic.partitions)
    ]
    assert isinstance(failed, ev.NotificationFailed)
    assert failed.channel == "webhook"
    # What happened, in our words: no URL, port or remote error text.
    assert failed.reason.endswith("webhook refused: points to a loopback address")
    assert str(listener.port) not in failed.reason


def _self_signed(name: str, directory: Any) -> tuple[str, str]:
    """A certificate for ``name`` (and its key) as PEM files: the receiver's identity."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_file), str(key_file)


async def test_https_to_the_checked_address_still_verifies_the_certificate_of_the_name(
    tmp_path: Any,
) -> None:
    name = "hooks.erynoa.test"
    cert_file, key_file = _self_signed(name, tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert_file, key_file)
    client_tls = ssl.create_default_context(cafile=cert_file)

    async def to_loopback(host: str, port: int) -> list[Address]:
        return [ipaddress.ip_address("127.0.0.1")]

    listener = Listener()
    server = await asyncio.start_server(listener.handle, "127.0.0.1", 0, ssl=server_tls)
    port = server.sockets[0].getsockname()[1]
    policy = OutboundPolicy(allow=(parse_allow_rule("127.0.0.1"),), resolver=to_loopback)
    sender = WebhookSender(
        "s3cret", policy=policy, transport=httpx.AsyncHTTPTransport(verify=client_tls)
    )
    await sender.start()
    try:
        await sender.send(notice(), f"https://{name}:{port}/hook")
        # The same address under another name: its certificate does not match, so no send.
        with pytest.raises(DeliveryUnavailable):
            await sender.send(notice(), f"https://other.erynoa.test:{port}/hook")
    finally:
        await sender.close()
        server.close()
        await server.wait_closed()
    assert [h["host"] for h in listener.heads] == [f"{name}:{port}"]
