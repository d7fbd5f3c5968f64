"""The fault matrix's verdicts and outputs, from hand-made measured rows."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from erynoa.settings import Settings
from faults import injectors, report
from faults.private import PORT_OFFSET, private_settings
from faults.report import RowResult, Second


def clean_row(name: str = "pg") -> RowResult:
    return RowResult(
        name,
        "PostgreSQL stopped",
        fault_start_s=10,
        fault_end_s=41,
        load_end_s=56,
        finished_s=60,
        sent=280,
        acknowledged={"create": 270, "accept": 243, "cancel": 27},
        refused=150,
        settled=270,
        as_expected=270,
        outcomes={"confirmed": 243, "cancelled": 27},
        recovery_to_settled_s=4.5,
        series=[Second(t, 5, 0, 0, 4, 1) for t in range(60)],
    )


def test_a_clean_row_passes() -> None:
    assert report.verdict(clean_row()) == []
    assert report.passed(clean_row())


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"violations": ["invariant 1 [b]: stuck in reserved"]}, "1 checker violations"),
        ({"lost": ["b: accept acknowledged, ended expired"]}, "1 acknowledged requests lost"),
        ({"parked": {"reservation.dlq": 40, "payment.dlq": 2}}, "42 messages parked"),
        ({"needing_operator": ["b: awaiting_provider"]}, "1 sagas need an operator"),
        ({"unexpected": ["b: intended confirmed, ended failed"]}, "1 bookings ended other"),
        ({"recovery_to_settled_s": 75.0}, "settled 75 s after recovery"),
        ({"acknowledged": {"create": 0}}, "no booking was acknowledged"),
    ],
)
def test_each_criterion_fails_the_row_on_its_own(change: dict[str, object], problem: str) -> None:
    row = replace(clean_row(), **change)  # type: ignore[arg-type]
    problems = report.verdict(row)
    assert len(problems) == 1
    assert problems[0].startswith(problem)
    assert not report.passed(row)


def test_a_skipped_row_is_neither_passed_nor_counted_as_run() -> None:
    row = RowResult("broker-of-3", "one of three", skipped="skipped: needs --brokers 3")
    assert report.verdict(row) == ["skipped: needs --brokers 3"]
    assert not report.passed(row)
    assert "skipped: needs --brokers 3" in report.markdown([row])


def test_the_table_has_one_line_per_row_with_the_numbers() -> None:
    failing = replace(clean_row("redis"), parked={"reservation.dlq": 3})
    table = report.markdown([clean_row(), failing]).splitlines()
    assert len(table) == 4
    assert table[2].startswith("| pg | 270/243/27 | 150 | 270/270 | 0 | 0 | 0 | 0 | 4.5 | ok |")
    assert "| redis |" in table[3]
    assert "FAIL: 3 messages parked" in table[3]


def test_json_and_markdown_and_png_are_written(tmp_path: Path) -> None:
    failing = replace(clean_row("redis"), lost=["b: cancel acknowledged, ended confirmed"])
    written = report.write([clean_row(), failing], {"date": "2026-12-04"}, tmp_path / "f")
    assert sorted(p.suffix for p in written) == [".json", ".md", ".png"]
    data = json.loads((tmp_path / "f.json").read_text())
    assert [r["passed"] for r in data["rows"]] == [True, False]
    assert data["rows"][1]["verdict"] == ["1 acknowledged requests lost"]
    assert "cancel acknowledged, ended confirmed" in (tmp_path / "f.md").read_text()
    assert (tmp_path / "f.png").stat().st_size > 0


def test_rows_are_selected_by_name_or_prefix() -> None:
    rows = injectors.full_matrix()
    chosen = [f.name for f in injectors.select(rows, ["pg", "agent-kill"])]
    assert chosen == [
        "pg",
        "agent-kill-reservation",
        "agent-kill-payment",
        "agent-kill-notification",
        "agent-kill-provider-response",
    ]
    assert injectors.select(rows, ["nothing"]) == []
    assert [f.name for f in injectors.quick_matrix()] == [
        "pg",
        "kafka-restart",
        "agent-kill-payment",
    ]


def test_the_private_stack_never_shares_a_port_or_state_dir_with_the_default() -> None:
    base = Settings()
    private = private_settings(base, Path("/tmp/x"))
    fields = ("kafka_port", "kafka_controller_port", "postgres_port", "redis_port",
              "stripe_mock_port", "smtp_port")  # fmt: skip
    for field in fields:
        assert getattr(private, field) == getattr(base, field) + PORT_OFFSET
    assert private.state_dir != base.state_dir
    assert private.kafka_bootstrap == f"127.0.0.1:{private.kafka_port}"
    assert f":{private.postgres_port}/" in private.database_url
    assert f":{private.redis_port}/" in private.redis_url
