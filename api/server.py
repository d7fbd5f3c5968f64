"""Run the API with uvicorn: ``serve(settings)`` (what ``erynoa api`` calls).

JSON logs go to stderr (one line per request from the access-log middleware, so uvicorn's own
access log is off); ``X-Forwarded-For`` is honoured only from ``settings.trusted_proxies``
(none by default: then the TCP peer is the client, whatever the header says).
Traces are exported as ``ERYNOA_TRACING_EXPORTER`` says (off by default); metrics are served
on a port of their own (``ERYNOA_METRICS_PORT_BASE`` + 5 on ``ERYNOA_METRICS_HOST``), never on
the public API port.
"""

from __future__ import annotations

import gc
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from api.app import create_app
from erynoa import metrics, tracing
from erynoa.logs import configure
from erynoa.settings import Settings


def serve(settings: Settings) -> None:
    """Serve the API on ``settings.api_host:settings.api_port`` until interrupted."""
    configure("api", settings.log_level)
    tracing.configure(settings, "erynoa-api")
    app = create_app(settings)
    metrics.serve(
        app.state.metrics.registry, settings.metrics_host, metrics.port_for(settings, "api")
    )
    # Everything imported and built so far lives as long as the process. Without this, every
    # full (oldest-generation) garbage collection walks it all again while the event loop
    # stands still and every request in flight waits. Frozen, a full collection looks only
    # at what came later.
    gc.freeze()
    config = uvicorn_config(app, settings, log_config=None, timeout_graceful_shutdown=10)
    uvicorn.Server(config).run()


def uvicorn_config(app: ASGIApp, settings: Settings, **options: Any) -> uvicorn.Config:
    """How uvicorn serves ``app`` (the tests' servers use it too, so they run what ships).

    uvicorn's proxy handling rewrites the client address from ``X-Forwarded-For`` when the
    peer is a trusted proxy, taking the right-most address that is not one. Its default trusts
    127.0.0.1 (and ``$FORWARDED_ALLOW_IPS``), so anything on the host could claim any address;
    here only the configured proxies are trusted, and with none the header is not read at all.
    """
    trusted = [str(network) for network in settings.trusted_proxies]
    return uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        access_log=False,
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or None,
        server_header=False,
        **options,
    )
