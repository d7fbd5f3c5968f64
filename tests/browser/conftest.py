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
import yaml
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.remote.webdriver import WebDriver

from api.auth import issue_dev_token
from erynoa.codec import default_codec
from erynoa.db import create_pool
from erynoa.kafka import EventPublisher
from erynoa.settings import PROJECT_ROOT, Settings
from erynoa.supervisor import System, commands
from erynoa.topics import TopicCatalog, load_catalog
from tests.conftest import own_namespace
from tests.integration.api.conftest import ServerThread, api_settings

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
    spec = yaml.safe_load((PROJECT_ROOT / "topics.yaml").read_text())
    spec["consumers"]["payment"]["retry"] = ["1s"]
    topics_file = folder / "topics.yaml"
    topics_file.write_text(yaml.safe_dump(spec))
    async with own_namespace(settings.model_copy(update={"topics_file": topics_file})) as ns:
        env = {
            **os.environ,
            "ERYNOA_TOPICS_FILE": str(topics_file),
            "ERYNOA_TOPIC_PREFIX": ns.topic_prefix,
            "ERYNOA_DATABASE_URL": ns.database_url,
            "ERYNOA_KAFKA_BOOTSTRAP": ns.kafka_bootstrap,
            "ERYNOA_PAYMENT_GATEWAY": "sandbox",
            "ERYNOA_METRICS_PORT_BASE": "0",
        }
        workers = System(
            {name: argv for name, argv in commands().items() if name != "api"},
            env=env,
            log_dir=folder / "logs",
        )
        workers.start()
        api = api_settings(
            folder / "dev-signing-key.pem",
            topics_file=topics_file,
            topic_prefix=ns.topic_prefix,
            database_url=ns.database_url,
        )
        server = ServerThread(api)
        server.start()
        try:
            yield Running(api, server.base_url, env, server)
        finally:
            server.stop()
            workers.stop()


@pytest.fixture(scope="package")
async def pool(system: Running) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(system.settings, min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture(scope="package")
async def publisher(system: Running) -> AsyncIterator[EventPublisher]:
    s = system.settings
    pub = EventPublisher.create(s.kafka_bootstrap, "test-console", default_codec(), system.catalog)
    await pub.start()
    yield pub
    await pub.stop()


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
