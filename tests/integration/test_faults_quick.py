"""The quick fault subset (``erynoa faults --quick``) against a private copy of the system.

PostgreSQL stopped 15 s, the broker killed and restarted, one agent killed: each under steady
load through the API, on the harness's own stack (never the default one). Every row must end
with no checker violation, no acknowledged request lost, nothing parked in a dead-letter
topic, no saga waiting for an operator, every booking ended as its client intended, and the
bookings settled within a minute of recovery (``faults.report.verdict``).
"""

from __future__ import annotations

import pytest

from erynoa.settings import Settings
from faults import injectors, report
from faults.matrix import QUICK_TIMING, run_matrix

pytestmark = pytest.mark.integration

QUICK_ROWS = [fault.name for fault in injectors.quick_matrix()]


@pytest.fixture(scope="module")
def matrix(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, report.RowResult]:
    out = tmp_path_factory.mktemp("faults")
    rows = run_matrix(injectors.quick_matrix(), settings, QUICK_TIMING, out / "logs", print)
    written = report.write(rows, {"quick": True}, out / "faults-quick")
    assert all(path.exists() for path in written)
    print(report.markdown(rows))
    print(report.details(rows))
    return {row.name: row for row in rows}


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", QUICK_ROWS)
def test_the_saga_comes_through_the_fault_with_nothing_lost_parked_or_stuck(
    name: str, matrix: dict[str, report.RowResult]
) -> None:
    row = matrix[name]
    assert row.skipped is None
    assert row.acknowledged.get("create", 0) > 0
    problems = report.verdict(row)
    assert problems == [], f"{name}: {problems}\n{report.details([row])}"
