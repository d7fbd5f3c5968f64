"""The operator console: a small web app at ``/console`` over the admin API's JSON endpoints.

Why static HTML and vanilla ES modules, with no build step and no framework: the console is a
handful of screens (sagas in flight, one saga's timeline, the dead-letter topics, one message,
the replay/retry/cancel dialogs) for a few operators, and every byte of data it shows comes
from endpoints that already exist for machines (``/api/v1/admin/...``). A bundler or a
framework would add a toolchain to install, audit and keep current for a few hundred lines of
code; server-rendered templates would be a second copy of each admin endpoint's shape. Modern
browsers load ES modules natively; building every node with ``textContent`` (``dom.js``)
escapes event payloads (hostile input) by construction; and with no inline script or style
the page runs under a strict Content-Security-Policy (``script-src 'self'``, no
``unsafe-inline``, no ``eval``). The files ship inside this package: nothing comes from a CDN.

Live views poll (``fetch`` every few seconds while *Live* is ticked) rather than use server-sent
events: ``EventSource`` cannot send an ``Authorization`` header, so the token would have to
travel in the URL or a cookie, and a poll of the same JSON endpoints needs no second protocol.

The shell is public (it holds no data); every request for data carries the bearer token the
operator pasted, which the console keeps in memory only (never in a URL or in storage), and
the admin API refuses anything but the ``admin`` role.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse, Response

from api.listed_files import listed_file

STATIC = Path(__file__).parent / "static"

# The files the console is made of (``listed_file`` serves nothing else).
_FILES = {
    "app.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "dom.js": "text/javascript; charset=utf-8",
    "views.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}

router = APIRouter(prefix="/console", include_in_schema=False)


@router.get("")
async def console_root() -> Response:
    # Relative module URLs resolve against the trailing slash.
    return RedirectResponse("/console/", status_code=308, headers=SECURITY_HEADERS)


@router.get("/")
async def console_page() -> Response:
    """The console's one HTML page; the screens are drawn by ``app.js``."""
    return FileResponse(
        STATIC / "index.html",
        media_type="text/html; charset=utf-8",
        headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"},
    )


@router.get("/static/{name}")
async def console_file(name: str) -> Response:
    return listed_file(STATIC, _FILES, name, {**SECURITY_HEADERS, "Cache-Control": "no-cache"})
