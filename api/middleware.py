"""Plain ASGI middleware: request ids, trace spans and access logs, and the request-body guard.

Pure ASGI rather than ``BaseHTTPMiddleware`` so streaming responses pass through untouched
and the body guard can answer before any route code runs.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from opentelemetry.trace import SpanKind, StatusCode
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.envelopes import ApiError, new_request_id
from api.metrics import route_template
from erynoa import tracing

access_log = logging.getLogger("erynoa.api.access")
log = logging.getLogger("erynoa.api")

# A client's own id is kept only if it is short and harmless in logs and Kafka headers.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _state(scope: Scope) -> dict[str, Any]:
    state: dict[str, Any] = scope.setdefault("state", {})
    return state


class RequestContextMiddleware:
    """Gives every request an id (the client's ``X-Request-ID`` if valid), echoes it in the
    response, logs one JSON line per request, and turns an unhandled exception into the
    500 error envelope (the bug is logged with its traceback).

    While tracing is on, the request runs in a server span that continues the caller's
    ``traceparent`` (or starts a trace); the events it publishes carry that span's context."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else new_request_id()
        state = _state(scope)
        state["request_id"] = request_id
        if not tracing.enabled():
            await self._serve(scope, receive, send, request_id)
            return
        method = scope["method"]
        with tracing.span(
            "erynoa.api",
            method,  # renamed to "METHOD /route/{template}" once routed
            kind=SpanKind.SERVER,
            parent=tracing.extract(headers),
            attributes={"http.request.method": method, "request_id": request_id},
        ) as span:
            await self._serve(scope, receive, send, request_id)
            if span is not None:
                route = route_template(scope)
                status = int(state.get("response_status", 500))
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(StatusCode.ERROR)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        state = _state(scope)
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        began = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error", extra={"request_id": request_id})
            if started:
                raise
            response = ApiError(500, "internal error; it has been logged").response(request_id)
            await response(scope, receive, send_with_id)
        finally:
            state["response_status"] = status
            client = scope.get("client")
            access_log.info(
                "%s %s %s",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": scope["path"],
                    "route": route_template(scope),
                    "status": status,
                    "duration_ms": round((time.perf_counter() - began) * 1000, 2),
                    "user": state.get("user_id"),
                    "client_ip": client[0] if client else None,
                },
            )


class BodyGuardMiddleware:
    """Refuses request bodies that are too large (413), not JSON (415) or not UTF-8 (422).

    The body is read here, up to the limit, before the route runs: that also bounds chunked
    bodies (no ``Content-Length``), and a refusal never leaves a route half-way through.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = str(_state(scope).get("request_id") or new_request_id())
        length_header = headers.get("content-length")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        try:
            declared = int(length_header) if length_header is not None else None
        except ValueError:
            declared = None
        if declared is not None and declared > self.max_bytes:
            await self._refuse(request_id, scope, receive, send, 413)
            return
        has_body = chunked or (declared or 0) > 0
        if has_body and not _is_json(headers.get("content-type")):
            await self._refuse(request_id, scope, receive, send, 415)
            return

        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                if not message.get("more_body", False):
                    receive = _ended(receive)
                await self._refuse(request_id, scope, receive, send, 413)
                return
            chunks.append(chunk)
            more = bool(message.get("more_body", False))

        body = b"".join(chunks)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            # JSON is UTF-8 (RFC 8259); anything else is malformed input, a 422 like bad JSON.
            response = ApiError(
                422,
                "Invalid input",
                details=[
                    {"field": "body", "message": f"not UTF-8: {exc.reason}", "type": "json_invalid"}
                ],
            ).response(request_id)
            await response(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(
        self, request_id: str, scope: Scope, receive: Receive, send: Send, status: int
    ) -> None:
        # Read (and drop) what the client is still sending, up to a bound: answering while it
        # writes would make the server close on unread data, and the client would see a
        # connection reset instead of the answer. Past the bound, answer and close.
        drained = await _drain(receive, DRAIN_LIMIT_BYTES)
        message = (
            f"the request body exceeds {self.max_bytes} bytes"
            if status == 413
            else "the request body must be application/json"
        )
        response = ApiError(
            status, message, headers=None if drained else {"Connection": "close"}
        ).response(request_id)
        await response(scope, receive, send)


DRAIN_LIMIT_BYTES = 1024 * 1024


async def _drain(receive: Receive, budget: int) -> bool:
    """Consume the rest of the request body; False if it was longer than ``budget``."""
    while budget >= 0:
        message = await receive()
        if message["type"] != "http.request":
            return False
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return budget >= 0
    return False


def _ended(receive: Receive) -> Receive:
    """A receive whose body has already been read to the end (nothing left to drain)."""
    done = False

    async def wrapped() -> Message:
        nonlocal done
        if not done:
            done = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return await receive()

    return wrapped


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )
