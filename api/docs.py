"""The API's interactive documentation (Swagger UI), served with its assets from this process.

FastAPI's default page loads Swagger UI from a public CDN: on a machine without internet (ours,
or an operator's locked-down network) it renders blank. The assets come from the
``swagger-ui-py`` distribution instead, which ships Swagger UI's ``dist`` files, and are served
under ``<docs>/assets/``; nothing on the page asks any other host for anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
    swagger_ui_default_parameters,
)
from fastapi.responses import HTMLResponse, Response

from api.listed_files import listed_file

# The files the page loads, by name (``listed_file`` serves nothing else).
_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
# The validator badge would ask validator.swagger.io to fetch our document: switched off.
_PARAMETERS: dict[str, Any] = {**swagger_ui_default_parameters, "validatorUrl": None}


def swagger_ui_dir() -> Path:
    """Where the installed ``swagger-ui-py`` keeps Swagger UI's ``dist`` files."""
    import swagger_ui

    return Path(swagger_ui.__file__).parent / "static"


def install_docs(app: FastAPI, *, docs_url: str, openapi_url: str, title: str) -> None:
    """Serve Swagger UI at ``docs_url``, its assets at ``docs_url/assets/<file>``."""
    assets = f"{docs_url}/assets"
    oauth2_redirect_url = f"{docs_url}/oauth2-redirect"
    folder = swagger_ui_dir()

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon-32x32.png",
            oauth2_redirect_url=oauth2_redirect_url,
            swagger_ui_parameters=_PARAMETERS,
        )

    @app.get(oauth2_redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(f"{assets}/{{name}}", include_in_schema=False)
    async def swagger_ui_asset(name: str) -> Response:
        return listed_file(folder, _ASSETS, name, {"Cache-Control": "public, max-age=86400"})
