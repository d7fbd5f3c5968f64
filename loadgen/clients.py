"""How the run talks to the system: the REST API (as customers, providers and Stripe) and Kafka
(as an upstream system).

* ``ApiClient``: one pooled ``httpx.AsyncClient``; development tokens from the local issuer
  (``api.auth.issue_dev_token``, cached per user); every request carries
  ``X-Erynoa-Synthetic: 1`` and an ``X-Request-ID`` naming the run.
* ``RestGateway``: bookings are requested and cancelled through the API.
* ``KafkaGateway``: ``BookingRequested`` and ``BookingCancellationRequested`` are published
  straight to their topic with ``EventPublisher``, with the Kafka header
  ``erynoa-synthetic: 1``; provider answers and Stripe webhooks still go through the API,
  because that is the only way in for them.

The Stripe webhook is signed the way Stripe signs it (``t=<unix>,v1=<HMAC-SHA256>``) with
the local ``ERYNOA_STRIPE_WEBHOOK_SECRET``: the simulated customer "completes 3-D Secure".
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import ssl
import time
import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import Any, Protocol

import httpx

from erynoa import events as ev
from erynoa.kafka import H_REQUEST_ID, H_SYNTHETIC, EventPublisher
from erynoa.settings import Settings
from loadgen.world import Planned

SYNTHETIC_HTTP_HEADER = "X-Erynoa-Synthetic"


class RequestFailed(Exception):
    """A request the system refused or did not answer; ``kind`` groups it in the report."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail


def _error_code(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return str(code) if code else ""


def _failed(operation: str, response: httpx.Response) -> RequestFailed:
    code = _error_code(response)
    kind = f"{operation} {response.status_code}" + (f" {code}" if code else "")
    return RequestFailed(kind, response.text[:300])


class HttpPool:
    """``size`` httpx clients with one connection each, lent out one request at a time.

    One ``httpx.AsyncClient`` got slower here as connections were added to its pool, measured
    against a trivial endpoint, while separate one-connection clients scaled. A load
    generator must not be the bottleneck it measures.
    """

    def __init__(
        self,
        base_url: str,
        size: int,
        timeout_s: float = 15.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._idle: asyncio.Queue[httpx.AsyncClient] = asyncio.Queue()
        # Each client would otherwise load the CA store into its own SSL context (tens of
        # milliseconds apiece); one shared context serves them all.
        tls = ssl.create_default_context()
        self._clients = [
            httpx.AsyncClient(
                base_url=base_url.rstrip("/"),
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                timeout=timeout_s,
                headers=headers,
                verify=tls,
            )
            for _ in range(size)
        ]
        for client in self._clients:
            self._idle.put_nowait(client)

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        client = await self._idle.get()
        try:
            return await client.request(method, path, **kwargs)
        finally:
            self._idle.put_nowait(client)

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()


class Tokens:
    """Development tokens per user, issued once per run.

    ``warm`` issues them before the first send: signing takes about half a millisecond and
    the first one loads the key and the API package, which would otherwise stall the event
    loop in the middle of the measured traffic.
    """

    def __init__(self, settings: Settings, ttl_seconds: int) -> None:
        self._settings = settings
        self._ttl = max(60, min(ttl_seconds, 86_400))
        self._cache: dict[str, str] = {}

    def __call__(self, sub: str, role: str) -> str:
        token = self._cache.get(sub)
        if token is None:
            # Imported here: the API package is only needed when a run talks to the API.
            from api.auth import issue_dev_token

            token = issue_dev_token(self._settings, sub, [role], self._ttl)
            self._cache[sub] = token
        return token

    def warm(self, users: Iterable[tuple[str, str]]) -> None:
        """Issue the tokens of ``(sub, role)`` pairs now."""
        for sub, role in users:
            self(sub, role)


class ApiClient:
    """The run's HTTP side: bookings, answers, cancels, webhooks, reads."""

    def __init__(
        self,
        base_url: str,
        tokens: Tokens,
        webhook_secret: str,
        run_id: str,
        max_connections: int = 64,
        timeout_s: float = 15.0,
    ) -> None:
        self._http = HttpPool(
            base_url, max_connections, timeout_s, headers={SYNTHETIC_HTTP_HEADER: "1"}
        )
        self._tokens = tokens
        self._webhook_secret = webhook_secret
        self._run_id = run_id
        self._requests = 0

    async def close(self) -> None:
        await self._http.aclose()

    async def warm(self) -> None:
        """Open a first connection (and fail early if the API does not answer)."""
        try:
            response = await self._http.request("GET", "/api/v1/health/live")
        except httpx.HTTPError as exc:
            raise RequestFailed("GET /health/live", str(exc)) from exc
        if response.status_code != 200:
            raise _failed("GET /health/live", response)

    def _headers(self, sub: str, role: str) -> dict[str, str]:
        self._requests += 1
        return {
            "Authorization": f"Bearer {self._tokens(sub, role)}",
            "X-Request-ID": f"lg-{self._run_id}-{self._requests}",
        }

    async def _post(
        self, operation: str, path: str, headers: dict[str, str], **kwargs: object
    ) -> httpx.Response:
        try:
            response = await self._http.request("POST", path, headers=headers, **kwargs)
        except httpx.TimeoutException as exc:
            raise RequestFailed(f"{operation} timeout", str(exc)) from exc
        except httpx.HTTPError as exc:
            raise RequestFailed(f"{operation} {type(exc).__name__}", str(exc)) from exc
        return response

    async def create_booking(self, plan: Planned) -> str:
        """``POST /bookings`` as the plan's customer; the booking id from the 202."""
        response = await self._post(
            "POST /bookings",
            "/api/v1/bookings",
            self._headers(plan.customer_id, "customer"),
            json={
                "service_id": plan.service.id,
                "slot_start": plan.slot_start.isoformat(),
                "payment_method": plan.payment_method,
            },
        )
        if response.status_code != 202:
            raise _failed("POST /bookings", response)
        booking_id = response.json().get("workflow_id")
        if not isinstance(booking_id, str):
            raise RequestFailed("POST /bookings 202 without workflow_id", response.text[:300])
        return booking_id

    async def answer(self, booking_id: str, provider_id: str, decision: str) -> None:
        """The provider accepts or rejects (``POST /bookings/{id}/accept|reject``)."""
        operation = f"POST /bookings/{{id}}/{decision}"
        response = await self._post(
            operation,
            f"/api/v1/bookings/{booking_id}/{decision}",
            self._headers(provider_id, "provider"),
        )
        if response.status_code != 202:
            raise _failed(operation, response)

    async def cancel(self, booking_id: str, customer_id: str) -> None:
        operation = "POST /bookings/{id}/cancel"
        response = await self._post(
            operation,
            f"/api/v1/bookings/{booking_id}/cancel",
            self._headers(customer_id, "customer"),
            json={"reason": "load test: the customer changed their mind"},
        )
        if response.status_code != 202:
            raise _failed(operation, response)

    async def complete_payment_action(self, booking_id: str, payment_id: str) -> None:
        """Stripe tells us the customer finished 3-D Secure (a signed webhook)."""
        payload = json.dumps(
            {
                "id": f"evt_lg_{uuid.uuid4().hex}",
                "object": "event",
                "type": "payment_intent.amount_capturable_updated",
                "data": {
                    "object": {
                        "id": payment_id,
                        "object": "payment_intent",
                        "status": "requires_capture",
                        "metadata": {"booking_id": booking_id},
                    }
                },
            },
            separators=(",", ":"),
        ).encode()
        response = await self._post(
            "POST /webhooks/stripe",
            "/api/v1/webhooks/stripe",
            {
                "Stripe-Signature": stripe_signature(payload, self._webhook_secret),
                "Content-Type": "application/json",
            },
            content=payload,
        )
        if response.status_code != 200:
            raise _failed("POST /webhooks/stripe", response)

    async def booking_status(self, booking_id: str, customer_id: str) -> str:
        """The status ``GET /bookings/{id}`` shows the customer."""
        try:
            response = await self._http.request(
                "GET",
                f"/api/v1/bookings/{booking_id}",
                headers=self._headers(customer_id, "customer"),
            )
        except httpx.HTTPError as exc:
            raise RequestFailed(f"GET /bookings/{{id}} {type(exc).__name__}", str(exc)) from exc
        if response.status_code != 200:
            raise _failed("GET /bookings/{id}", response)
        return str(response.json()["data"]["status"])


def stripe_signature(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header Stripe would send for ``payload``."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


class Gateway(Protocol):
    """Where the run's customers' requests enter the system."""

    via: str

    async def request(self, plan: Planned) -> str:
        """Request the booking; its id once the system acknowledged it."""
        ...

    async def cancel(self, booking_id: str, plan: Planned) -> None: ...


class RestGateway:
    via = "rest"

    def __init__(self, api: ApiClient) -> None:
        self._api = api

    async def request(self, plan: Planned) -> str:
        return await self._api.create_booking(plan)

    async def cancel(self, booking_id: str, plan: Planned) -> None:
        await self._api.cancel(booking_id, plan.customer_id)


class KafkaGateway:
    """An upstream system that publishes the booking requests itself."""

    via = "kafka"

    def __init__(self, publisher: EventPublisher, run_id: str) -> None:
        self._publisher = publisher
        self._run_id = run_id
        self._correlation: dict[str, str] = {}

    def _headers(self, correlation_id: str) -> dict[str, str]:
        return {H_SYNTHETIC: "1", H_REQUEST_ID: correlation_id}

    async def request(self, plan: Planned) -> str:
        booking_id = str(uuid.uuid4())
        correlation_id = f"lg-{self._run_id}-{plan.index}"
        event = ev.make(
            ev.BookingRequested,
            booking_id=booking_id,
            producer=f"loadgen-{self._run_id}",
            correlation_id=correlation_id,
            customer_id=plan.customer_id,
            service_id=plan.service.id,
            provider_id=plan.service.provider_id,
            slot_start=plan.slot_start,
            slot_end=plan.slot_start + timedelta(minutes=plan.service.duration_minutes),
            price=ev.Money(plan.service.price_minor, plan.service.currency),
            payment_method=plan.payment_method,
            notes=None,
            response_deadline_seconds=plan.service.response_deadline_seconds,
            idempotency_key=None,
        )
        await self._publisher.publish(event, self._headers(correlation_id))
        self._correlation[booking_id] = correlation_id
        return booking_id

    async def cancel(self, booking_id: str, plan: Planned) -> None:
        correlation_id = self._correlation.get(booking_id, f"lg-{self._run_id}-{plan.index}")
        event = ev.make(
            ev.BookingCancellationRequested,
            booking_id=booking_id,
            producer=f"loadgen-{self._run_id}",
            correlation_id=correlation_id,
            requested_by=plan.customer_id,
            requested_by_role="customer",
            reason="load test: the customer changed their mind",
        )
        await self._publisher.publish(event, self._headers(correlation_id))
