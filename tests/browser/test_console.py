"""The operator console in a real browser against a real running system.

A booking whose payment keeps failing (the sandbox gateway has an outage for its card) parks in
``payment.dlq`` and its saga sits in ``reserved``: stuck. An operator logs in with an admin
token, finds it among the stuck sagas, reads its timeline, opens the dead letter, dry-runs its
replay, fixes the cause, replays, and watches the saga reach ``confirmed``. Around that: a
non-admin is refused, hostile event fields stay text, a stale dry run is not executed, a
revoked token ends the session, the console survives the API going away, and Swagger UI
renders without asking any other host for anything. For the same sagas the console, the admin
API and ``erynoa saga ls|show`` name the same stuck ones, for the same reasons, and show the
same timelines.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
import typer
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait
from typer.testing import CliRunner

from cli.ops import saga_app
from erynoa import events as ev
from erynoa import kafka as k
from erynoa.kafka import EventPublisher
from tests.browser.conftest import Running
from tests.conftest import eventually
from tests.integration.api.conftest import ServerThread, free_port
from tests.integration.materializing import raw_producer
from tests.integration.saga.harness import Service, User, a_slot, create_service, create_user

pytestmark = pytest.mark.integration

FLAKY_CARD = "pm_card_mastercard"
HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
T = TypeVar("T")


@dataclass(frozen=True)
class Parked:
    stuck: str  # a booking whose payment dead-lettered; its saga waits in ``reserved``
    hostile: str  # the same, with markup in its customer id and notes


def wait(driver: WebDriver, condition: Callable[[WebDriver], T], within: float = 30) -> T:
    # Elements re-drawn by a refresh between find and read are simply looked up again.
    return WebDriverWait(driver, within, 0.2, (StaleElementReferenceException,)).until(condition)


def shown(css: str) -> Callable[[WebDriver], WebElement | bool]:
    def find(driver: WebDriver) -> WebElement | bool:
        found = driver.find_elements(By.CSS_SELECTOR, css)
        return found[0] if found and found[0].is_displayed() else False

    return find


def text_of(css: str, contains: str) -> Callable[[WebDriver], WebElement | bool]:
    def find(driver: WebDriver) -> WebElement | bool:
        for element in driver.find_elements(By.CSS_SELECTOR, css):
            if contains in element.text:
                return element
        return False

    return find


def click(driver: WebDriver, css: str) -> None:
    """Click the first element matching ``css``, looked up again if a refresh redrew it."""

    def clicked(d: WebDriver) -> bool:
        found = d.find_elements(By.CSS_SELECTOR, css)
        if not found or not found[0].is_displayed():
            return False
        found[0].click()
        return True

    wait(driver, clicked)


def text(driver: WebDriver, css: str) -> str:
    """The text of the first element matching ``css`` (looked up again if redrawn)."""
    return wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, css).text or False)


def go(driver: WebDriver, screen: str) -> None:
    """Another screen of the console in the same page (the token lives in its memory)."""
    driver.execute_script("window.location.hash = arguments[0]", screen)


def log_in(driver: WebDriver, system: Running, token: str) -> None:
    driver.get(f"{system.base_url}/console/")
    box = wait(driver, shown("#token"))
    assert isinstance(box, WebElement)
    box.send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()


def log_in_as_an_operator(driver: WebDriver, system: Running) -> str:
    """Log in with a fresh admin token and wait for the sagas table; returns the token."""
    token = system.token(f"op-{uuid.uuid4()}", "admin")
    log_in(driver, system, token)
    wait(driver, shown("table[data-testid=sagas]"))
    return token


def requested_urls(driver: WebDriver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def policy_violations(driver: WebDriver) -> list[str]:
    """What the browser refused under the page's Content-Security-Policy (its console log)."""
    return [
        e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]
    ]


async def book(
    publisher: EventPublisher, service: Service, customer_id: str, notes: str | None = None
) -> str:
    booking_id = str(uuid.uuid4())
    start = a_slot()
    await publisher.publish(
        ev.make(
            ev.BookingRequested,
            booking_id=booking_id,
            producer="api",
            customer_id=customer_id,
            service_id=service.id,
            provider_id=service.provider.id,
            slot_start=start,
            slot_end=start + timedelta(hours=1),
            price=service.price,
            payment_method=FLAKY_CARD,
            notes=notes,
            response_deadline_seconds=service.response_deadline_seconds,
        )
    )
    return booking_id


@pytest.fixture(scope="module")
async def parked(system: Running, pool: asyncpg.Pool, publisher: EventPublisher) -> Parked:
    service = await create_service(pool, capacity=5)
    customer: User = await create_user(pool, "customer", email=False)
    await pool.execute(
        "INSERT INTO sandbox_outages (payment_method, reason) VALUES ($1, 'test outage') "
        "ON CONFLICT DO NOTHING",
        FLAKY_CARD,
    )
    stuck = await book(publisher, service, customer.id)
    hostile = await book(publisher, service, f"cust-{HOSTILE}", notes=HOSTILE)
    admin = {"Authorization": f"Bearer {system.token('fixture-admin', 'admin')}"}
    async with httpx.AsyncClient(base_url=f"{system.base_url}/api/v1", timeout=30) as http:
        for booking in (stuck, hostile):

            async def dead_lettered(booking: str = booking) -> bool:
                r = await http.post(
                    "/admin/dlq/messages",
                    json={"topics": ["payment"], "booking_id": booking},
                    headers=admin,
                )
                assert r.status_code == 200, r.text
                return bool(r.json()["data"]["messages"])

            await eventually(dead_lettered)
    return Parked(stuck, hostile)


def test_a_non_admin_is_refused_with_a_clear_message(browser: WebDriver, system: Running) -> None:
    log_in(browser, system, system.token(f"cust-{uuid.uuid4()}", "customer"))
    error = wait(browser, shown("#login-error"))
    assert isinstance(error, WebElement)
    assert "does not hold the admin role" in error.text
    assert not browser.find_element(By.ID, "view").is_displayed()


def test_swagger_docs_render_without_any_external_request(
    browser: WebDriver, system: Running
) -> None:
    browser.get(f"{system.base_url}/api/v1/docs")
    wait(browser, text_of(".swagger-ui .info .title", "Erynoa Booking API"))
    wait(browser, shown(".swagger-ui .opblock-tag"))
    urls = requested_urls(browser)
    assert any(u.endswith("/api/v1/openapi.json") for u in urls), urls
    outside = [u for u in urls if not u.startswith(system.base_url) and not u.startswith("data:")]
    assert outside == []


def cli_json(system: Running, app: typer.Typer, *args: str) -> Any:
    """``erynoa saga ...`` as an operator runs it, over the console's system."""
    env = {
        name: system.env[name]
        for name in (
            "ERYNOA_TOPICS_FILE",
            "ERYNOA_TOPIC_PREFIX",
            "ERYNOA_DATABASE_URL",
            "ERYNOA_KAFKA_BOOTSTRAP",
        )
    }
    result = CliRunner().invoke(app, [*args, "--json"], env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def without_idle_time(reason: str | None) -> str | None:
    # "no event for 7s in step reserved": the idle time grows between one face's answer and
    # the next; the rest of the reason must be the same.
    return re.sub(r"no event for \S+ in", "no event for … in", reason) if reason else reason


def test_the_cli_the_admin_api_and_the_console_report_the_same_stuck_sagas_and_timelines(
    browser: WebDriver, system: Running, parked: Parked
) -> None:
    token = log_in_as_an_operator(browser, system)
    click(browser, "#live")  # still: what is compared is one answer, not a moving one
    click(browser, "#f-stuck")
    after = browser.find_element(By.ID, "f-after")
    after.clear()
    after.send_keys("2")
    click(browser, "form.filters button[type=submit]")
    wait(browser, shown(f"tr[data-booking-id='{parked.hostile}'][data-stuck=true]"))
    console_rows = browser.execute_script(
        "return [...document.querySelectorAll('table[data-testid=sagas] tbody tr')]"
        ".map(r => [r.dataset.bookingId, r.dataset.status, r.dataset.stuck,"
        " r.querySelector('[data-stuck-reason]').dataset.stuckReason])"
    )
    console_stuck = [[b, s, stuck, without_idle_time(why)] for b, s, stuck, why in console_rows]
    api = httpx.Client(
        base_url=f"{system.base_url}/api/v1",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    with api:
        listed = api.get(
            "/admin/workflows",
            params={"stuck": "true", "stuck_after_seconds": 2, "per_page": 50},
        ).json()["data"]
        api_stuck = [
            [s["id"], s["status"], str(s["stuck"]).lower(), without_idle_time(s["stuck_reason"])]
            for s in listed
        ]
        cli_listed = cli_json(system, saga_app, "ls", "--stuck", "--stuck-after", "2s")
        cli_stuck = [
            [
                s["booking_id"],
                s["status"],
                str(s["stuck"]).lower(),
                without_idle_time(s["stuck_reason"]),
            ]
            for s in cli_listed["sagas"]
        ]
        assert console_stuck == api_stuck == cli_stuck
        cli_count = f"{cli_listed['total']:,}{'+' if cli_listed['total_capped'] else ''}"
        console_count = browser.find_element(By.CSS_SELECTOR, "[data-testid=saga-count]").text
        assert console_count.startswith(f"{cli_count} in flight matching"), console_count
        assert {parked.stuck, parked.hostile} <= {row[0] for row in console_stuck}
        assert all(row[3] for row in console_stuck)  # idle past 2 s: each says why

        for booking in (parked.stuck, parked.hostile):
            go(browser, f"#/sagas/{booking}")
            wait(browser, shown("table[data-testid=timeline] tr[data-event-id]"))
            console_timeline = browser.execute_script(
                "return [...document.querySelectorAll('table[data-testid=timeline] tbody tr')]"
                ".map(r => [r.dataset.eventId, r.cells[3].textContent, r.dataset.kind])"
            )
            console_waiting = browser.execute_script(
                "return [...document.querySelectorAll('[data-testid=waiting] li')]"
                ".map(li => [li.dataset.who, li.dataset.what])"
            )
            workflow = api.get(f"/admin/workflows/{booking}").json()["data"]
            shown_by_cli = cli_json(system, saga_app, "show", booking)
            assert (
                console_timeline
                == [[e["event_id"], e["event_type"], e["kind"]] for e in workflow["timeline"]]
                == [[e["event_id"], e["event_type"], e["kind"]] for e in shown_by_cli["entries"]]
            )
            assert (
                console_waiting
                == [[w["who"], w["what"]] for w in workflow["waiting"]]
                == [[w["who"], w["what"]] for w in shown_by_cli["waiting"]]
            )
            assert console_waiting  # a parked saga waits for its payment
            assert (
                text(browser, "[data-testid=saga-status]")
                == workflow["status"]
                == shown_by_cli["status"]
            )


async def test_an_operator_finds_a_stuck_saga_and_replays_its_dead_letter(
    browser: WebDriver,
    system: Running,
    parked: Parked,
    pool: asyncpg.Pool,
    publisher: EventPublisher,
) -> None:
    log_in_as_an_operator(browser, system)

    # The stuck saga: idle for a few seconds counts as stuck here.
    click(browser, "#f-stuck")
    after = browser.find_element(By.ID, "f-after")
    after.clear()
    after.send_keys("2")
    click(browser, "form.filters button[type=submit]")
    row = f"table[data-testid=sagas] tr[data-booking-id='{parked.stuck}']"
    wait(browser, text_of(row, "stuck"))
    assert "reserved" in text(browser, row)
    click(browser, f"{row} a")

    # Its timeline, and what it waits for.
    wait(browser, text_of("table[data-testid=timeline]", "ReservationHeld"))
    assert text(browser, "[data-testid=saga-status]") == "reserved"
    assert "payment" in text(browser, "[data-testid=waiting]")

    # The dead letter that stopped it.
    click(browser, "#nav a[data-screen=dead-letters]")
    topic = f"{system.settings.topic_prefix}payment.dlq"
    assert int(text(browser, f"tr[data-topic='{topic}'] [data-testid=depth]")) >= 1
    click(browser, f"a[data-topic='{topic}']")
    message_row = f"table[data-testid=messages] tr[data-booking-id='{parked.stuck}']"
    wait(browser, text_of(message_row, "GatewayUnavailable"))
    click(browser, f"{message_row} [data-testid=message-link]")
    wait(browser, text_of("table[data-testid=failure]", "GatewayUnavailable"))
    assert "erynoa-origin-topic" in text(browser, "table[data-testid=headers]")
    assert parked.stuck in text(browser, "[data-testid=event]")

    # Dry run first: it shows the plan and changes nothing.
    click(browser, "[data-testid=replay-one]")
    wait(browser, text_of("[data-testid=plan-summary]", "Would replay 1 of 1"))
    assert "reserved" in text(browser, "table[data-testid=plan]")
    assert await pool.fetchval("SELECT count(*) FROM dlq_replays") == 0

    # The cause is fixed; the replay completes the saga.
    await pool.execute("DELETE FROM sandbox_outages WHERE payment_method = $1", FLAKY_CARD)
    click(browser, "[data-testid=confirm-replay]")
    wait(browser, text_of("[data-testid=replay-result]", "1 replayed"))
    operator = await pool.fetchval(
        "SELECT operator FROM dlq_replays WHERE booking_id = $1", parked.stuck
    )
    assert operator.startswith("op-")
    click(browser, "dialog button:not(.danger)")

    go(browser, f"#/sagas/{parked.stuck}")
    wait(browser, text_of("[data-testid=saga-status]", "awaiting_provider"), within=60)
    row = await pool.fetchrow(
        "SELECT provider_id, correlation_id FROM bookings WHERE id = $1::uuid", parked.stuck
    )
    await publisher.publish(
        ev.make(
            ev.ProviderAnswerSubmitted,
            booking_id=parked.stuck,
            producer="api",
            correlation_id=row["correlation_id"],
            provider_id=row["provider_id"],
            decision="accept",
        )
    )
    # The live refresh shows it finish.
    wait(browser, text_of("[data-testid=saga-status]", "confirmed"), within=60)
    wait(browser, text_of("[data-testid=waiting]", "finished"), within=30)
    assert policy_violations(browser) == []


async def test_hostile_event_fields_and_headers_are_shown_as_text(
    browser: WebDriver, system: Running, parked: Parked
) -> None:
    # A forged dead letter: markup in its failure headers, a body that does not decode.
    key = str(uuid.uuid4())
    async with raw_producer(system.settings, "test-forger") as raw:
        await raw.send_and_wait(
            f"{system.settings.topic_prefix}payment.dlq",
            HOSTILE.encode(),
            key=key.encode(),
            headers=[(k.H_ERROR, HOSTILE.encode()), (k.H_ERROR_CLASS, HOSTILE.encode())],
        )

    log_in_as_an_operator(browser, system)
    go(browser, f"#/sagas/{parked.hostile}")
    wait(browser, text_of("table[data-testid=saga-facts]", HOSTILE))
    wait(browser, text_of("table[data-testid=timeline]", f"notes={HOSTILE}"))
    go(browser, f"#/dead-letters/all?booking_id={key}")
    click(browser, "table[data-testid=messages] [data-testid=message-link]")
    wait(browser, text_of("[data-testid=error-text]", HOSTILE))
    wait(browser, text_of("table[data-testid=headers]", HOSTILE))
    go(browser, "#/dead-letters")
    wait(browser, text_of("table[data-testid=dlq-topics]", f"{HOSTILE} \N{MULTIPLICATION SIGN} 1"))
    assert browser.execute_script("return window.__pwned === undefined")
    injected = "return document.querySelectorAll('body img, main script').length"
    assert browser.execute_script(injected) == 0
    assert policy_violations(browser) == []


def test_a_replay_after_a_stale_dry_run_is_refused_and_shows_the_new_plan(
    browser: WebDriver, system: Running, parked: Parked
) -> None:
    log_in_as_an_operator(browser, system)
    go(browser, f"#/dead-letters/all?booking_id={parked.hostile}")
    click(browser, "table[data-testid=messages] [data-testid=message-link]")
    click(browser, "[data-testid=replay-one]")
    wait(browser, text_of("[data-testid=plan-summary]", "Would replay 1"))

    # Someone else replays it meanwhile (the command line, another console).
    selection = {"booking_id": parked.hostile, "topics": ["payment"]}
    auth = {"Authorization": f"Bearer {system.token('other-operator', 'admin')}"}
    url = f"{system.base_url}/api/v1/admin/dlq/replay"
    dry = httpx.post(url, json={**selection, "dry_run": True}, headers=auth, timeout=60)
    done = httpx.post(
        url,
        json={**selection, "dry_run": False, "plan_id": dry.json()["data"]["plan_id"]},
        headers=auth,
        timeout=60,
    )
    assert done.status_code == 200, done.text

    click(browser, "[data-testid=confirm-replay]")
    wait(browser, text_of("[data-testid=stale]", "out of date"))
    wait(browser, text_of("[data-testid=plan-summary]", "Would replay 0"))
    plan = browser.find_element(By.CSS_SELECTOR, "table[data-testid=plan]")
    assert "already replayed" in plan.text
    assert not browser.find_element(By.CSS_SELECTOR, "[data-testid=confirm-replay]").is_enabled()


def test_a_revoked_token_ends_the_session_mid_way(browser: WebDriver, system: Running) -> None:
    token = log_in_as_an_operator(browser, system)
    revoked = httpx.post(
        f"{system.base_url}/api/v1/auth/logout",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert revoked.status_code == 200, revoked.text
    # The next live refresh is refused: back to the login, saying why, data gone.
    error = wait(browser, text_of("#login-error", "session ended"))
    assert isinstance(error, WebElement)
    assert "revoked" in error.text
    assert browser.find_elements(By.CSS_SELECTOR, "table[data-testid=sagas]") == []


def test_the_console_keeps_its_last_data_while_the_api_is_down(
    browser: WebDriver, system: Running
) -> None:
    # A second API process over the same system, stopped under the console's feet.
    server = ServerThread(system.settings.model_copy(update={"api_port": free_port()}))
    server.start()
    try:
        base = server.base_url
        browser.get(f"{base}/console/")
        box = wait(browser, shown("#token"))
        assert isinstance(box, WebElement)
        box.send_keys(system.token(f"op-{uuid.uuid4()}", "admin"))
        browser.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()
        wait(browser, shown("table[data-testid=sagas]"))
    finally:
        server.stop()
    banner = wait(browser, text_of("#banner", "cannot be reached"))
    assert isinstance(banner, WebElement)
    assert browser.find_element(By.CSS_SELECTOR, "table[data-testid=sagas]").is_displayed()


def test_an_operator_cancels_a_saga_after_its_dry_run(
    browser: WebDriver, system: Running, parked: Parked
) -> None:
    log_in_as_an_operator(browser, system)
    go(browser, f"#/sagas/{parked.hostile}")
    wait(browser, shown("table[data-testid=timeline]"))
    browser.find_element(By.ID, "cancel-reason").send_keys("customer called support")
    click(browser, "[data-testid=cancel]")
    plan = wait(browser, text_of("[data-testid=action-plan]", "→ cancelled"))
    assert isinstance(plan, WebElement)
    assert "BookingCancellationRequested" in plan.text
    click(browser, "[data-testid=confirm-action]")
    wait(browser, shown("[data-testid=action-done]"))
    click(browser, "dialog button:not(.danger)")
    wait(browser, text_of("[data-testid=saga-status]", "cancelled"), within=60)
    wait(browser, text_of("table[data-testid=timeline]", "customer called support"))
    # Refused once the saga is over: nothing to cancel.
    click(browser, "[data-testid=cancel]")
    wait(browser, text_of("[data-testid=action-plan]", "Refused"))
    assert not browser.find_element(By.CSS_SELECTOR, "[data-testid=confirm-action]").is_enabled()
