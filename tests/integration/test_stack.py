"""The local stack (`erynoa stack`) serves what the project needs: Kafka for aiokafka,
confluent-kafka and Faust, PostgreSQL, Redis, and stripe-mock where it could be built.

Needs the stack up (`erynoa stack up`, or `make test`); settings come from ERYNOA_* variables.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka import Consumer, KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from typer.testing import CliRunner

from cli.main import app
from erynoa.settings import Settings
from erynoa.stack import manager

pytestmark = pytest.mark.integration

REQUIRED = ("kafka", "postgres", "redis", "registry")


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="module", autouse=True)
def _stack_is_up(settings: Settings) -> None:
    down = [s.line() for s in manager.status(settings) if not s.ok]
    if down:
        pytest.fail("the local stack is not up (run `erynoa stack up`): " + "; ".join(down))


@pytest.fixture(scope="module")
def admin(settings: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.kafka_bootstrap})


def _create_topics(admin: AdminClient, *names: str) -> None:
    futures = admin.create_topics([NewTopic(name, num_partitions=1) for name in names])
    for future in futures.values():
        future.result(timeout=30)


def _delete_topics(admin: AdminClient, *names: str) -> None:
    for future in admin.delete_topics(list(names)).values():
        future.result(timeout=30)
    deadline = time.monotonic() + 30
    while set(names) & set(admin.list_topics(timeout=10).topics):
        assert time.monotonic() < deadline, f"topics {names} still listed 30s after deletion"
        time.sleep(0.2)


@pytest.fixture
def topic(admin: AdminClient) -> Iterator[str]:
    name = f"erynoa-test-{uuid.uuid4().hex}"
    _create_topics(admin, name)
    yield name
    _delete_topics(admin, name)


def _consume_one(settings: Settings, topic: str, timeout: float = 60) -> Message:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"erynoa-test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            return msg
    finally:
        consumer.close()
    pytest.fail(f"no message on {topic} within {timeout}s")


def test_status_reports_every_service_healthy(settings: Settings) -> None:
    result = CliRunner().invoke(app, ["stack", "status"])
    assert result.exit_code == 0, result.output
    lines = {line.split(":")[0]: line for line in result.output.splitlines()}
    assert set(lines) == set(manager.SERVICE_NAMES)
    ports = {"kafka": settings.kafka_port, "postgres": settings.postgres_port,
             "redis": settings.redis_port, "registry": settings.registry_port}  # fmt: skip
    for name in REQUIRED:
        words = lines[name].split()
        assert words[1:3] == ["healthy", "pid"], lines[name]
        assert int(words[3]) > 0
        assert words[4:6] == ["port", str(ports[name])]
    assert "healthy" in lines["stripe-mock"] or "unavailable (" in lines["stripe-mock"]
    # Where subscribers find the Schema Registry's Confluent-compatible API.
    assert lines["registry"].endswith(f"http://127.0.0.1:{settings.registry_port}/apis/ccompat/v7")


def test_up_again_changes_nothing(settings: Settings) -> None:
    before = {s.name: s.pid for s in manager.status(settings)}
    result = CliRunner().invoke(app, ["stack", "up"])
    assert result.exit_code == 0, result.output
    after = {s.name: s.pid for s in manager.status(settings)}
    assert after == before
    for name in REQUIRED:
        assert f"{name}: already running (pid {before[name]})" in result.output


async def test_aiokafka_produces_and_consumes(settings: Settings, topic: str) -> None:
    payload = f"aiokafka-{uuid.uuid4()}".encode()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic, payload, key=b"booking-1")
    finally:
        await producer.stop()
    assert (sent.topic, sent.partition, sent.offset) == (topic, 0, 0)

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"erynoa-test-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        received = await asyncio.wait_for(consumer.getone(), timeout=60)
    finally:
        await consumer.stop()
    assert (received.key, received.value) == (b"booking-1", payload)


def test_confluent_kafka_produces_and_consumes(settings: Settings, topic: str) -> None:
    payload = f"confluent-{uuid.uuid4()}".encode()
    delivered: list[Message] = []
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        (errors.append(err) if err else delivered.append(msg))

    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "acks": "all"})
    producer.produce(topic, value=payload, key=b"booking-2", on_delivery=on_delivery)
    assert producer.flush(30) == 0
    assert errors == []
    assert [(m.topic(), m.offset()) for m in delivered] == [(topic, 0)]

    msg = _consume_one(settings, topic)
    assert (msg.key(), msg.value()) == (b"booking-2", payload)


FAUST_APP = textwrap.dedent(
    """
    import os

    import faust

    app = faust.App(
        os.environ["TEST_APP_ID"],
        broker="kafka://" + os.environ["TEST_BOOTSTRAP"],
        store="memory://",
        web_enabled=False,
        topic_replication_factor=1,
        topic_partitions=1,
    )
    source = app.topic(os.environ["TEST_IN_TOPIC"], value_type=bytes, value_serializer="raw")
    sink = app.topic(os.environ["TEST_OUT_TOPIC"], value_type=bytes, value_serializer="raw")


    @app.agent(source)
    async def echo(stream):
        async for value in stream:
            await sink.send(key=b"echo", value=b"faust:" + value)
    """
)


def test_faust_agent_consumes_and_produces(
    settings: Settings, admin: AdminClient, tmp_path: Path
) -> None:
    app_id = f"erynoa-test-faust-{uuid.uuid4().hex[:12]}"
    in_topic, out_topic = f"{app_id}-in", f"{app_id}-out"
    _create_topics(admin, in_topic, out_topic)
    (tmp_path / "stack_faust_app.py").write_text(FAUST_APP)
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "TEST_APP_ID": app_id,
        "TEST_BOOTSTRAP": settings.kafka_bootstrap,
        "TEST_IN_TOPIC": in_topic,
        "TEST_OUT_TOPIC": out_topic,
    }
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "faust", "-A", "stack_faust_app", "worker", "-l", "info"],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        payload = f"faust-{uuid.uuid4()}".encode()
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
        producer.produce(in_topic, value=payload, key=b"booking-3")
        assert producer.flush(30) == 0
        msg = _consume_one(settings, out_topic, timeout=120)
        assert worker.poll() is None, log_path.read_text()[-3000:]
        assert (msg.key(), msg.value()) == (b"echo", b"faust:" + payload)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
        created = [t for t in admin.list_topics(timeout=10).topics if t.startswith(app_id)]
        _delete_topics(admin, *created)


async def test_postgres_answers_select_1(settings: Settings) -> None:
    conn = await asyncpg.connect(settings.database_url, timeout=10)
    try:
        assert await conn.fetchval("SELECT 1") == 1
        database = urlsplit(settings.database_url).path.lstrip("/")
        assert await conn.fetchval("SELECT current_database()") == database
        assert await conn.fetchval("SHOW fsync") == "on"
    finally:
        await conn.close()


async def test_redis_answers_ping(settings: Settings) -> None:
    client = aioredis.from_url(settings.redis_url)
    try:
        assert await client.ping() is True
        key = f"erynoa-test-{uuid.uuid4().hex}"
        assert await client.set(key, b"v", ex=60) is True
        assert await client.get(key) == b"v"
        assert await client.delete(key) == 1
    finally:
        await client.aclose()


def test_stripe_mock_answers_when_available(settings: Settings) -> None:
    state = next(s for s in manager.status(settings) if s.name == "stripe-mock")
    if state.state == "unavailable":
        pytest.skip(f"stripe-mock unavailable on this machine: {state.detail}")
    response = httpx.get(
        f"http://127.0.0.1:{settings.stripe_mock_port}/v1/customers",
        headers={"Authorization": f"Bearer {settings.stripe_api_key}"},
        timeout=10,
    )
    assert response.status_code == 200
    assert response.json()["object"] == "list"


def test_mail_sink_stores_what_it_receives(settings: Settings) -> None:
    import mailbox
    import smtplib
    from email.message import EmailMessage

    subject = f"stack test {uuid.uuid4()}"
    message = EmailMessage()
    message["From"] = "bookings@erynoa.local"
    message["To"] = "someone@example.com"
    message["Subject"] = subject
    message.set_content("Hallo")
    with smtplib.SMTP("127.0.0.1", settings.smtp_port, timeout=10) as smtp:
        smtp.send_message(message)

    stored = mailbox.Maildir(settings.state_dir / "mail", create=False)
    assert subject in [m["Subject"] for m in stored]
