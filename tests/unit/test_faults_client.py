"""The fault harness's client: how it reads answers and when it retries (pure parts)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from faults.client import (
    MAX_DELAY_S,
    Answer,
    Client,
    Intent,
    StatusWatch,
    classify,
    intent_of,
    next_delay,
    parse_retry_after,
)
from loadgen.profile import Outcomes, Profile
from loadgen.world import Planner, World

NOW = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("2", 2.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("Fri, 04 Dec 2026 12:00:05 GMT", 5.0),
        ("Fri, 04 Dec 2026 11:59:00 GMT", 0.0),  # a date in the past: now
        ("3600", MAX_DELAY_S),  # capped: a client never sleeps through the whole row
        (None, None),
        ("", None),
        ("soon", None),
        ("-1", None),
    ],
)
def test_retry_after_is_read_as_seconds_or_an_http_date(
    header: str | None, expected: float | None
) -> None:
    assert parse_retry_after(header, NOW) == expected


def test_a_retry_never_comes_sooner_than_the_server_asked() -> None:
    rng = random.Random(1)
    assert all(next_delay(0, 2.0, rng) >= 2.0 for _ in range(100))


def test_backoff_grows_with_attempts_and_is_capped() -> None:
    rng = random.Random(1)
    first = [next_delay(0, None, rng) for _ in range(50)]
    later = [next_delay(5, None, rng) for _ in range(50)]
    assert max(first) <= 0.25
    assert min(later) > max(first)
    assert all(next_delay(40, None, rng) <= MAX_DELAY_S for _ in range(50))


def _error(code: str, **details: str) -> dict[str, object]:
    return {"error": {"code": code, "message": "x", "details": [details] if details else []}}


@pytest.mark.parametrize(
    ("operation", "status", "body", "answer"),
    [
        ("create", 202, {"workflow_id": "b"}, Answer.ACK),
        ("create", 503, _error("SERVICE_UNAVAILABLE"), Answer.RETRY),
        ("create", 429, _error("RATE_LIMITED"), Answer.RETRY),
        ("create", 502, None, Answer.RETRY),
        ("create", 422, _error("VALIDATION_ERROR"), Answer.REFUSED),
        ("create", 404, _error("NOT_FOUND"), Answer.REFUSED),
        ("accept", 202, {}, Answer.ACK),
        ("accept", 409, _error("ALREADY_ANSWERED", decision="accept"), Answer.ACK),
        ("accept", 409, _error("ALREADY_ANSWERED", decision="reject"), Answer.REFUSED),
        ("accept", 409, _error("NOT_AWAITING_PROVIDER", status="reserved"), Answer.RETRY),
        ("accept", 409, _error("NOT_AWAITING_PROVIDER", status="expired"), Answer.REFUSED),
        ("accept", 409, _error("DEADLINE_PASSED"), Answer.REFUSED),
        ("accept", 404, _error("NOT_FOUND"), Answer.RETRY),
        ("cancel", 409, _error("BOOKING_ENDED", status="confirmed"), Answer.REFUSED),
        ("cancel", 503, _error("SERVICE_UNAVAILABLE"), Answer.RETRY),
    ],
)
def test_each_answer_is_acknowledged_retried_or_refused(
    operation: str, status: int, body: object, answer: Answer
) -> None:
    got, label = classify(operation, status, body)  # type: ignore[arg-type]
    assert got is answer
    assert label.startswith(str(status))


def test_every_tenth_customer_cancels() -> None:
    intents = [intent_of(i) for i in range(100)]
    assert intents.count(Intent.CANCEL) == 10
    assert intents[9] is Intent.CANCEL
    assert intents[0] is Intent.ACCEPT


def test_the_watch_remembers_when_each_booking_first_settled_and_survives_failed_reads() -> None:
    answers: list[Mapping[str, str] | Exception] = [
        {"a": "reserved", "b": "awaiting_provider"},
        OSError("connection refused"),
        {"a": "confirmed", "b": "awaiting_provider"},
        {"a": "confirmed", "b": "expired"},
    ]
    now = [0.0]

    async def fetch(ids: list[str]) -> Mapping[str, str]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    watch = StatusWatch(fetch, lambda: now[0])

    async def run() -> list[bool]:
        results = []
        for t in (1.0, 2.0, 3.0, 4.0):
            now[0] = t
            results.append(await watch.poll(["a", "b"]))
        return results

    assert asyncio.run(run()) == [True, False, True, True]
    assert watch.polls_failed == 1
    assert watch.settled_at == {"a": 3.0, "b": 4.0}
    assert watch.unsettled(["a", "b", "c"]) == ["c"]


def test_a_date_without_zone_is_read_as_utc() -> None:
    later = (NOW + timedelta(seconds=3)).strftime("%a, %d %b %Y %H:%M:%S")
    assert parse_retry_after(later, NOW) == 3.0


class FakeApi:
    """Answers each POST from a script (a response, or an exception to raise), and records
    the headers every attempt carried."""

    def __init__(self, script: list[httpx.Response | Exception]) -> None:
        self.script = script
        self.seen: list[dict[str, str]] = []

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        self.seen.append(dict(kwargs.get("headers") or {}))
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


def _client(api: FakeApi) -> Client:
    profile = Profile(outcomes=Outcomes(provider_accepts=1))
    world = World.build(profile, "unit", 1, NOW)
    tokens: Any = lambda sub, role: f"token-{sub}"  # noqa: E731
    client = Client(api, tokens, Planner(world, 1), "unit", lambda: 0.0)  # type: ignore[arg-type]
    client.rng = random.Random(0)
    return client


def _response(status: int, body: object, retry_after: str | None = None) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after else {}
    return httpx.Response(status, json=body, headers=headers)


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The client's waits between attempts, recorded instead of waited."""
    waits: list[float] = []

    async def no_sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", no_sleep)
    return waits


def test_a_create_is_retried_with_the_same_idempotency_key_until_acknowledged(
    slept: list[float],
) -> None:
    api = FakeApi(
        [
            _response(503, _error("SERVICE_UNAVAILABLE"), retry_after="2"),
            httpx.ConnectError("refused"),
            _response(202, {"workflow_id": "b-1"}),
        ]
    )
    client = _client(api)
    booking_id = asyncio.run(client.create(client.planner.plan(0)))
    assert booking_id == "b-1"
    keys = {attempt["Idempotency-Key"] for attempt in api.seen}
    assert len(api.seen) == 3
    assert len(keys) == 1
    assert slept[0] >= 2.0  # Retry-After honoured
    assert [e.outcome for e in client.ledger.ended] == ["acknowledged"]
    assert len(client.ledger.refusals) == 1
    assert len(client.ledger.failures) == 1


@pytest.mark.usefixtures("slept")
def test_an_accept_answered_already_counts_as_acknowledged() -> None:
    api = FakeApi(
        [
            httpx.ReadError("the API died mid-request"),
            _response(409, _error("ALREADY_ANSWERED", decision="accept")),
        ]
    )
    client = _client(api)
    assert asyncio.run(client.accept("b-1", "p-1"))
    assert client.ledger.acknowledged("accept") == {"b-1": 0.0}


@pytest.mark.usefixtures("slept")
def test_a_request_out_of_time_ends_refused_after_a_503_and_unknown_after_silence() -> None:
    api = FakeApi([_response(503, _error("SERVICE_UNAVAILABLE"), retry_after="5")])
    client = _client(api)
    client.answer_budget_s = 1.0  # less than the Retry-After: one attempt only
    assert not asyncio.run(client.cancel("b-1", "c-1"))
    api.script = [httpx.ConnectTimeout("no answer")]
    client.request_budget_s = 0.0
    assert asyncio.run(client.create(client.planner.plan(1))) is None
    assert [e.outcome for e in client.ledger.ended] == ["refused", "unknown"]
    assert client.ledger.abandoned == [("cancel", "b-1"), ("create", "faults-unit-1")]
