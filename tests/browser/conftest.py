"""A real system and a real browser for the operator console's tests.

``system``: its own topics and database (``own_namespace``) on the local stack, the agents and
the materializer as worker processes (the payment agent retries once after 1 s, then
dead-letters), and the API in a thread, all wired to that namespace. ``browser``: Debian's
``chromium`` driven through its ``chromedriver`` (``erynoa/stack/system-packages.sh`` installs
both), headless and offline apart from the API. A failing test leaves a screenshot and the
page's HTML in ``test-output/browser/`` (``ERYNOA_TEST_OUTPUT`` moves it).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.remote.webdriver import WebDriver

from api.auth import issue_dev_token
from erynoa.kafka import EventPublisher
from erynoa.settings import PROJECT_ROOT, Settings
from erynoa.topics import TopicCatalog, load_catalog
from tests.integration.api.conftest import ServerThread, api_settings
from tests.integration.materializing import pool_for, publisher_for
from tests.integration.worker_system import workers_running

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
OUTPUT = Path(os.environ.get("ERYNOA_TEST_OUTPUT", PROJECT_ROOT / "test-output")) / "browser"

pytestmark = pytest.mark.integration


@dataclass
class Running:
    settings: Settings  # the API's, wired to the test's namespace
    base_url: str
    env: dict[str, str]
    server: ServerThread

    def token(self, sub: str, *roles: str, ttl: int = 3600) -> str:
        return issue_dev_token(self.settings, sub, roles, ttl)

    @property
    def catalog(self) -> TopicCatalog:
        s = self.settings
        return load_catalog(s.topics_file, s.topics_environment, s.topic_prefix)


@pytest.fixture(scope="package")
async def system(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Running]:
    folder = tmp_path_factory.mktemp("console")
    async with workers_running(settings, folder) as workers:
        api = api_settings(
            folder / "dev-signing-key.pem",
            topics_file=workers.topics_file,
            topic_prefix=workers.settings.topic_prefix,
            database_url=workers.settings.database_url,
        )
        server = ServerThread(api)
        server.start()
        try:
            yield Running(api, server.base_url, workers.env, server)
        finally:
            server.stop()


@pytest.fixture(scope="package")
async def pool(system: Running) -> AsyncIterator[asyncpg.Pool]:
    async with pool_for(system.settings, max_size=4) as pool:
        yield pool


@pytest.fixture(scope="package")
async def publisher(system: Running) -> AsyncIterator[EventPublisher]:
    async with publisher_for(system.settings, "test-console") as publisher:
        yield publisher


def chromium_options() -> webdriver.ChromeOptions:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    # Every request the page makes, read back with get_log("performance").
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return options


@pytest.fixture(scope="package")
def chromium() -> Iterator[WebDriver]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(
            "the browser tests need Debian's chromium and chromium-driver: "
            "run `make setup` (erynoa/stack/system-packages.sh installs them)"
        )
    driver = webdriver.Chrome(
        service=ChromeService(executable_path=str(CHROMEDRIVER)), options=chromium_options()
    )
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def browser(chromium: WebDriver, request: pytest.FixtureRequest) -> Iterator[WebDriver]:
    """The package's browser on a blank page; a screenshot and the HTML when the test fails."""
    chromium.get("about:blank")
    chromium.get_log("performance")  # drop what earlier tests left
    chromium.get_log("browser")
    yield chromium
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        OUTPUT.mkdir(parents=True, exist_ok=True)
        name = request.node.name.replace("/", "_")
        chromium.save_screenshot(str(OUTPUT / f"{name}.png"))
        (OUTPUT / f"{name}.html").write_text(chromium.page_source)
        print(f"browser state saved: {OUTPUT / name}.png and .html")
