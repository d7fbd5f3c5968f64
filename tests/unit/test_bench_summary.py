"""The benchmark's target table: each target judged from one run's results."""

from __future__ import annotations

from typing import Any

from bench import summary

LATENCY = {"p50_ms": 5.0, "p99_ms": 20.0}


def _results(peers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "saga": {
            "probe_capacity_per_s": 250.0,
            "max_sustained": {"completed_per_s": 90.0},
            "half_rate": {"rate_per_s": 45.0, "e2e_confirmed_p99_ms": 240.0},
            "cpu_ms_per_booking_saturated": {"total": 9.0},
            "cpu_ms_per_booking": {"total": 12.0},
        },
        "http": {
            "api_closed": {"requests_per_s": 600.0, "latency_ms": LATENCY},
            "trivial_closed": {"requests_per_s": 1000.0, "latency_ms": LATENCY},
        },
        "peers": {"rows": peers},
    }


def test_each_target_is_judged_against_the_best_peer_of_the_same_run() -> None:
    peers: list[dict[str, Any]] = [
        {"peer": "temporal", "completed_per_s": 12.0},
        {"peer": "restate", "completed_per_s": 20.0},
        {"peer": "dbos", "unavailable": "not installed"},
    ]
    rows = summary.targets(_results(peers))

    verdicts = [(row["what"].split(",")[0], row["met"]) for row in rows]
    assert verdicts == [
        ("completed bookings/s at saturation vs the best peer", True),  # 12.5 x
        ("completed bookings/s sustained vs the best peer's saturated rate", False),  # 4.5 x
        ("CPU per completed booking", True),
        ("CPU per completed booking", False),
        ("end-to-end p99", True),
        ("POST /bookings requests/s vs a trivial FastAPI endpoint", True),
    ]
    assert rows[0]["measured"] == "250.0 vs 20.0 (Restate)"
    assert rows[1]["ratio"] == "4.50 x"


def test_without_a_measured_peer_the_peer_targets_are_not_judged() -> None:
    unmeasured: list[dict[str, Any]] = [{"peer": "temporal", "unavailable": "no Go"}]
    rows = summary.targets(_results(unmeasured))

    assert [row["met"] for row in rows[:2]] == [None, None]
    assert "no peer" in rows[0]["measured"]
