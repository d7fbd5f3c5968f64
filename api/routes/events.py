"""The event contracts for other systems: ``asyncapi.yaml`` and its HTML docs (public).

Public like the OpenAPI docs beside them (``/api/v1/docs``): both describe interfaces, not data,
and a subscriber reads them before it has any credentials. Only files the renderer wrote are
served: a request names one of them by its exact relative path or gets a 404, so no path a
client sends is ever joined onto the file system. The page loads nothing from other hosts (its
CSS and JS are served here); its Content-Security-Policy says so to the browser too.

The HTML is a build output (``erynoa asyncapi --html``, run by ``make setup``); until it exists
the page answers 503 saying how to render it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, RedirectResponse

from api.envelopes import ApiError, request_id_of
from contracts import DOCUMENT, HTML_DIR

# The template's page needs inline styles (its React components set them); nothing else.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self'; connect-src 'self'; base-uri 'self'; "
    "form-action 'none'; frame-ancestors 'none'"
)
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "application/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
}


def _served_files(html_dir: Path) -> dict[str, Path]:
    """Every renderer output a client may fetch, by its path relative to ``html_dir``."""
    if not html_dir.is_dir():
        return {}
    root = html_dir.resolve()
    files = {}
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        # Regular files only (no symlinks out of the tree), of known types, none hidden.
        if (
            path.is_file()
            and not path.is_symlink()
            and path.suffix in MEDIA_TYPES
            and not any(part.startswith(".") for part in relative.parts)
        ):
            files[relative.as_posix()] = path
    return files


def events_router(document: Path = DOCUMENT, html_dir: Path = HTML_DIR) -> APIRouter:
    router = APIRouter(prefix="/events", tags=["events"])

    @router.get("/asyncapi.yaml", response_class=Response)
    async def asyncapi_document() -> Response:
        """The AsyncAPI 3.0 document of every topic, message and operation (YAML)."""
        return FileResponse(
            document,
            media_type="application/yaml; charset=utf-8",
            headers={"Cache-Control": "public, max-age=300"},
        )

    @router.get("/docs", include_in_schema=False)
    async def docs_root(request: Request) -> Response:
        # The page's assets are relative to the directory: /docs/ is its one address.
        return RedirectResponse(request.url.path + "/", status_code=308)

    @router.get("/docs/{asset:path}", include_in_schema=False)
    async def docs(request: Request, asset: str) -> Response:
        files = _served_files(html_dir)
        if not files:
            return ApiError(
                503,
                f"the event docs are not rendered on this server: run `erynoa asyncapi --html` "
                f"(or `make setup`) to render them into {html_dir.name}/",
            ).response(request_id_of(request))
        path = files.get(asset or "index.html")
        if path is None:
            return ApiError(404, "no such file in the event docs").response(request_id_of(request))
        return FileResponse(
            path,
            media_type=MEDIA_TYPES[path.suffix],
            headers={
                "Cache-Control": "public, max-age=300",
                "Content-Security-Policy": CSP,
                "X-Content-Type-Options": "nosniff",
            },
        )

    return router
