"""The AsyncAPI document through the official tools: ``asyncapi validate`` and the HTML docs.

The tools are npm packages (``contracts.tools`` installs them, pinned, into a per-user cache the
first time, which takes minutes); the tests are skipped only where Node.js or npm is missing.
The HTML is rendered into the build directory the API serves (``make setup`` does the same),
only when the document changed since the last rendering.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
import yaml

from api.app import create_app
from contracts import DOCS_PATH, DOCUMENT, HTML_DIR
from contracts.html import digest, ensure_rendered, is_current
from contracts.tools import ToolUnavailable, node_available
from contracts.validate import validate_with_cli
from erynoa.settings import Settings

MISSING = node_available()
pytestmark = pytest.mark.skipif(
    MISSING is not None, reason=f"the AsyncAPI tools need Node.js and npm: {MISSING}"
)


def test_the_official_cli_finds_the_document_valid() -> None:
    report = validate_with_cli(DOCUMENT)
    assert "is valid" in report


def test_the_official_cli_refuses_a_broken_document(tmp_path: Path) -> None:
    document = yaml.safe_load(DOCUMENT.read_text())
    document["operations"]["api.send.bookings"]["channel"] = {"$ref": "#/channels/no-such-topic"}
    broken = tmp_path / "asyncapi.yaml"
    broken.write_text(yaml.safe_dump(document))
    with pytest.raises(ToolUnavailable, match="no-such-topic"):
        validate_with_cli(broken)


@pytest.fixture(scope="module")
def rendered() -> Path:
    ensure_rendered(DOCUMENT, HTML_DIR)
    return HTML_DIR


@pytest.fixture
async def api(rendered: Path) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(Settings()))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        yield client


class _References(HTMLParser):
    """Every URL the page makes the browser load (scripts, styles, images, frames)."""

    def __init__(self) -> None:
        super().__init__()
        self.base: str | None = None
        self.loads: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "base":
            self.base = values.get("href")
        for name in ("src", "href") if tag in ("script", "img", "iframe", "link") else ("src",):
            url = values.get(name)
            if url and not url.startswith("data:"):
                self.loads.append(url)


def test_the_rendering_shows_the_current_document(rendered: Path) -> None:
    assert is_current(DOCUMENT, rendered)
    assert (rendered / ".source").read_text().strip() == digest(DOCUMENT)
    page = (rendered / "index.html").read_text()
    for channel in yaml.safe_load(DOCUMENT.read_text())["channels"].values():
        assert f">{channel['address']}<" in page, channel["address"]


async def test_the_api_serves_the_page_and_every_asset_it_loads_from_itself(
    api: httpx.AsyncClient,
) -> None:
    page = await api.get(DOCS_PATH)
    assert page.status_code == 200
    parser = _References()
    parser.feed(page.text)
    assert parser.base == DOCS_PATH
    assert parser.loads, "the page loads no scripts or styles?"
    for reference in parser.loads:
        url = urljoin(f"http://api.test{DOCS_PATH}", reference)
        assert urlsplit(url).netloc == "api.test", f"{reference} is loaded from another host"
        asset = await api.get(url)
        assert asset.status_code == 200, reference
        assert asset.content, reference
        if reference.endswith(".css"):
            # A stylesheet may pull more in: fonts and imports from elsewhere are refused too.
            for inner in re.findall(r"url\(([^)]+)\)|@import\s+['\"]([^'\"]+)", asset.text):
                target = (inner[0] or inner[1]).strip("'\"")
                assert target.startswith("data:") or not urlsplit(target).netloc, target
    script = (await api.get(f"{DOCS_PATH}js/app.js")).text
    for address in yaml.safe_load(DOCUMENT.read_text())["channels"]:
        assert f'"{address}"' in script
