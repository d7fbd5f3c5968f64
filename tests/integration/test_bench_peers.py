"""The benchmark's peers run the same saga as ours: seven steps, in our order, all durable.

Each peer runs one booking (``python -m bench.peers.<peer>_saga --one``) and reports the steps
three ways: what its workflow returned, what its step code executed (in order), and what its
engine recorded as completed durable steps. All three must be our happy path, or the
benchmark would compare ours against less work than it claims.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from bench import peers
from bench.peers import restate_server, temporal_server
from erynoa import saga
from erynoa.db import drop_database
from erynoa.settings import Settings
from tests.unit.test_saga import Story, happy_path, pending

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _one(peer: str, *args: str) -> dict[str, Any]:
    booking = f"bk-{uuid.uuid4().hex[:12]}"
    done = subprocess.run(
        [sys.executable, "-m", f"bench.peers.{peer}_saga", "--one", booking, *args],
        cwd=ROOT, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def _needs(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed: pip install -e '.[peers]'")


def _ran_the_seven_steps(report: dict[str, Any]) -> None:
    """Each step returned, executed and was recorded once, in our happy path's order."""
    steps = list(peers.STEPS)
    assert (report["returned"], report["executed"], report["recorded"]) == (steps, steps, steps)


# The step of the peers' saga that does the work of each of our saga's actions (the provider's
# deadline is a timer, not a step).
STEP_OF: dict[type[saga.Action], str] = {
    saga.HoldCapacity: "reserve",
    saga.AuthorizePayment: "authorize",
    saga.NotifyProvider: "notify_provider",
    saga.AcceptForProvider: "provider_accepts",
    saga.CapturePayment: "capture",
    saga.ConvertHold: "convert_hold",
    saga.NotifyCustomer: "notify_customer",
}


def test_the_steps_are_our_happy_path_in_order() -> None:
    # Our saga's own rules, walked along a confirmed booking's events: each step in the order
    # an agent is first asked for it.
    story = Story()
    happy_path(story)
    asked: list[str] = []
    state: saga.BookingState | None = None
    for event in story.events:
        state = saga.evolve(state, event)
        for actions in pending(state, event.occurred_at).values():
            steps = [STEP_OF[type(a)] for a in actions if type(a) in STEP_OF]
            asked += [step for step in steps if step not in asked]
    assert tuple(asked) == peers.STEPS


async def test_dbos_saga_runs_the_seven_steps_in_order(settings: Settings) -> None:
    _needs("dbos")
    database = f"t{uuid.uuid4().hex[:10]}_dbos"
    try:
        report = _one("dbos", "--database-url", settings.database_url, "--database", database)
    finally:
        await drop_database(settings.database_url, database)
    _ran_the_seven_steps(report)


def _server_peer(peer: str, package: str, server: ModuleType, present: str | None, how: str) -> Any:
    """A peer that needs its own server, skipped until ``make bench`` has prepared it."""
    return pytest.param(
        peer,
        package,
        marks=pytest.mark.skipif(
            present != server.VERSION,
            reason=f"the {peer} server is not ready yet ({server.BINARY} {server.VERSION}): "
            f"`make bench` {how}, once",
        ),
    )


@pytest.mark.parametrize(
    ("peer", "package"),
    [
        _server_peer(
            "temporal",
            "temporalio",
            temporal_server,
            temporal_server.built_version(),
            "builds it, a few minutes",
        ),
        _server_peer(
            "restate",
            "restate",
            restate_server,
            restate_server.installed_version(),
            "installs it with npm",
        ),
    ],
)
def test_a_server_peers_saga_runs_the_seven_steps_in_order(peer: str, package: str) -> None:
    _needs(package)
    _ran_the_seven_steps(_one(peer))
