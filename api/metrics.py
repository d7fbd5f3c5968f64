"""The API's Prometheus metrics, served on their own port (``erynoa.metrics``, part ``api``),
never on the API's: the public port must not show traffic, routes and process details::

    erynoa_http_requests_total{method, route, status}         counter
    erynoa_http_request_duration_seconds{method, route}       histogram
    erynoa_http_requests_in_flight                            gauge

``route`` is the matched route's template (``/api/v1/bookings/{booking_id}``), never the raw
path, so ids in URLs cannot blow up the number of series; a request no route matches is
``<unmatched>``. Consumer lag per group is in ``GET /api/v1/admin/stats``; each agent and the
materializer serve their own ``/metrics`` (``erynoa.metrics``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi.routing import iter_route_contexts
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.routing import BaseRoute, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from erynoa.metrics import LATENCY_BUCKETS, UNMATCHED_ROUTE, bounded

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ApiMetrics:
    """The API process's metrics, in the registry its metrics port serves."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "erynoa_http_requests_total",
            "HTTP requests answered, by method, route template and status code",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "erynoa_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response, by route template",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "erynoa_http_requests_in_flight",
            "HTTP requests being handled now",
            registry=registry,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(frozen=True)
class _Template:
    regex: re.Pattern[str]
    template: str
    methods: frozenset[str] | None


class RouteTable:
    """Every route's full template (router prefixes included), for labels and span names.

    FastAPI puts the matched route in ``scope["route"]``, but that is the route as declared in
    its router (``/bookings/{booking_id}``), without the prefix it was included under; the
    effective routes (``/api/v1/bookings/{booking_id}``) come from ``iter_route_contexts``.
    """

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self._by_route: dict[int, str] = {}
        self._templates: list[_Template] = []
        for context in iter_route_contexts(routes):
            path, template = context.path, context.path_format
            if path is None or template is None:
                continue
            self._by_route[id(context.original_route)] = template
            methods = context.methods
            regex, _, _ = compile_path(path)
            self._templates.append(
                _Template(regex, template, frozenset(methods) if methods else None)
            )

    def template(self, scope: Scope) -> str:
        """The template of the route that served (or would serve) this request."""
        route = scope.get("route")
        if route is not None and id(route) in self._by_route:
            return self._by_route[id(route)]
        # Nothing routed it (refused by a middleware first, a CORS preflight, a 404): find the
        # route its path belongs to, without running it.
        path = scope.get("path", "")
        partial: str | None = None
        for candidate in self._templates:
            if candidate.regex.match(path):
                if candidate.methods is None or scope.get("method") in candidate.methods:
                    return candidate.template
                partial = partial or candidate.template
        return partial or UNMATCHED_ROUTE


def route_template(scope: Scope) -> str:
    """The template of this request's route, from the app's (cached) ``RouteTable``."""
    app = scope.get("app")
    state = getattr(app, "state", None)
    if state is None:
        return UNMATCHED_ROUTE
    table: RouteTable | None = getattr(state, "route_table", None)
    if table is None:
        # Built on first use: every route is registered by then (create_app is done).
        table = RouteTable(app.router.routes)  # type: ignore[union-attr]
        state.route_table = table
    return table.template(scope)


class MetricsMiddleware:
    """Counts and times every HTTP request by route template (the outermost middleware, so an
    answer given by any other middleware — a 413, a 429, the last-resort 500 — is counted)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_recording_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        method = bounded(scope["method"], _METHODS)
        began = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            self.metrics.in_flight.dec()
            route = route_template(scope)
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - began)
