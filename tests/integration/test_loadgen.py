"""``erynoa loadgen`` against the real system, both ways in: a short smoke run each.

The system (API, four agents, materializer as subprocesses, ``erynoa.supervisor.System``)
runs with its own topics and API port (``loadgen.system.LocalSystem``). Each run must print
its tables, write the JSON and the PNG, and leave no invariant violated. No timing
assertions: this proves the tool works, the benchmark measures.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import typer
from typer.testing import CliRunner

from erynoa.settings import Settings, get_settings
from loadgen.cli import loadgen
from loadgen.system import LocalSystem

pytestmark = pytest.mark.integration


def _unreachable(settings: Settings) -> str | None:
    db = urlsplit(settings.database_url)
    host, port = settings.kafka_bootstrap.split(",")[0].rsplit(":", 1)
    for target in ((host, int(port)), (db.hostname or "", db.port or 5432)):
        try:
            socket.create_connection(target, timeout=2).close()
        except OSError:
            return f"{target[0]}:{target[1]}"
    return None


@pytest.fixture(scope="module")
def system(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    down = _unreachable(settings)
    if down is not None:
        pytest.skip(f"the local stack is not running ({down} unreachable): run `make stack`")
    with LocalSystem(settings, tmp_path_factory.mktemp("loadgen-system")) as running:
        yield running


@pytest.fixture
def cli_env(system: LocalSystem, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The command reads its settings from the environment, as it does from a shell."""
    for name, value in system.env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def run_loadgen(args: list[str]) -> tuple[int, str]:
    app = typer.Typer()
    app.command()(loadgen)
    result = CliRunner().invoke(app, args, terminal_width=200)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


@pytest.mark.parametrize("via", ["kafka", "rest"])
@pytest.mark.usefixtures("cli_env")
def test_a_short_run_reports_tables_json_and_plot_with_no_violation(
    via: str, system: LocalSystem, tmp_path: Path
) -> None:
    code, output = run_loadgen(
        [
            "--via", via,
            "--rate", "10",
            "--count", "20",
            "--profile", "default",
            "--api-url", system.api_url,
            "--out", str(tmp_path),
            "--quiet",
        ]
    )  # fmt: skip
    assert code == 0, output
    for heading in ("Run", "Latency", "Saga steps", "Outcomes by intent", "invariants: hold"):
        assert heading in output, output

    [json_file] = tmp_path.glob("loadgen-*.json")
    [png_file] = tmp_path.glob("loadgen-*.png")
    assert png_file.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(json_file.read_text())
    run = report["run"]
    assert run["via"] == via
    assert run["accepted"] == 20
    assert run["completed"] == 20, report["unfinished"]
    assert report["invariants"]["checked"] is True
    assert report["invariants"]["violations"] == []
    assert report["latency_ms"]["end_to_end"]["count"] == 20
    assert sum(report["outcomes"]["status_counts"].values()) == 20
    if via == "rest":
        assert run["get_checked"] > 0
        assert "GET /bookings/{id} disagrees with the read model" not in report["errors"]
