"""How a run looks in the terminal: the live progress panel and the final tables (rich).

Builds renderables only; the CLI decides where they go.
"""

from __future__ import annotations

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from loadgen.model import Progress
from loadgen.report import STEP_NOTES, Report
from loadgen.stats import LatencySummary


def progress_panel(p: Progress, via: str) -> Panel:
    grid = Table.grid(padding=(0, 2))
    for _ in range(4):
        grid.add_column(justify="right")
        grid.add_column(justify="left")
    phase = "sending" if p.sending else "draining"
    grid.add_row(
        "elapsed", f"{p.elapsed_s:6.1f} s",
        "sent", f"{p.sent}/{p.planned}",
        "accepted", str(p.acked),
        "failed", str(p.failed),
    )  # fmt: skip
    grid.add_row(
        "settled", str(p.settled),
        "open", str(p.open),
        "settled/s (5 s)", f"{p.settled_per_s:,.0f}",
        "late sends", str(p.late),
    )  # fmt: skip
    grid.add_row(
        "errors", str(p.errors),
        "max lag", str(p.max_lag),
        "open by status", ", ".join(f"{k} {v}" for k, v in sorted(p.statuses.items())) or "-",
        "", "",
    )  # fmt: skip
    return Panel(grid, title=f"erynoa loadgen via {via}: {phase}", expand=False)


def _ms(value: float) -> str:
    return f"{value:,.1f}"


def _latency_row(table: Table, name: str, s: LatencySummary, note: str = "") -> None:
    table.add_row(
        name, str(s.count), _ms(s.p50_ms), _ms(s.p95_ms), _ms(s.p99_ms), _ms(s.max_ms), note
    )


def _latency_table(title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("")
    for column in ("n", "p50 ms", "p95 ms", "p99 ms", "max ms"):
        table.add_column(column, justify="right")
    table.add_column("", style="dim")
    return table


def result_tables(report: Report) -> Group:
    run, tp = report.run, report.throughput
    summary = Table(title="Run", title_justify="left", show_header=False)
    summary.add_column(justify="right")
    summary.add_column()
    target = "max" if run["max_rate"] else f"{run['target_rate_per_s']:g}/s"
    summary.add_row("run", f"{run['run_id']} via {run['via']}, profile {run['profile']}")
    summary.add_row("target", f"{target}; sent {run['sent']} in {run['send_seconds']:.1f} s")
    summary.add_row(
        "bookings",
        f"{run['accepted']} accepted, {run['failed_requests']} failed requests, "
        f"{run['completed']} reached an outcome, {run['settled']} settled",
    )
    summary.add_row("offered", f"{tp['offered_per_s']:,.1f} bookings/s")
    summary.add_row(
        "completed sagas",
        f"{tp['completed_sagas_per_s']:,.1f}/s overall, "
        f"{tp['steady_completed_sagas_per_s']:,.1f}/s steady",
    )
    summary.add_row("saga events", f"{tp['saga_events_per_s']:,.1f}/s ({run['saga_events']})")
    if run["late_sends"]:
        summary.add_row(
            "late sends",
            Text(
                f"{run['late_sends']} (max {run['max_send_lateness_ms']:,.0f} ms): the system "
                "or the in-flight cap held the generator back",
                style="yellow",
            ),
        )
    lag = report.consumer_lag
    summary.add_row(
        "max consumer lag",
        f"{lag['max']} ("
        + ", ".join(f"{g} {v}" for g, v in lag["max_by_group"].items())
        + f"; {lag['samples']} samples)",
    )

    latency = _latency_table("Latency")
    notes = {
        "end_to_end": "request sent → outcome in the read model",
        "end_to_end_confirmed": "the same, confirmed bookings",
        "request_ack": "request sent → 202 / Kafka ack",
        "settled_seen_by_watcher": "→ compensations and notices done (poll-coarse)",
        "event_to_read_model": "event made → recorded by the materializer",
    }
    for name, s in report.latency.items():
        _latency_row(latency, name, s, notes.get(name, ""))
    for status, s in report.latency_by_status.items():
        _latency_row(latency, f"  → {status}", s)

    steps = _latency_table("Saga steps (event occurred_at)")
    for name, s in report.steps.items():
        _latency_row(steps, name, s, STEP_NOTES.get(name, ""))

    outcomes = Table(title="Outcomes by intent", title_justify="left")
    outcomes.add_column("intent")
    outcomes.add_column("profile %", justify="right")
    outcomes.add_column("observed %", justify="right")
    outcomes.add_column("expected")
    outcomes.add_column("ended as")
    o = report.outcomes
    for intent, share in o["profile_share"].items():
        counts = o["by_intent"].get(intent, {})
        outcomes.add_row(
            intent,
            f"{share * 100:.1f}",
            f"{o['observed_share'].get(intent, 0.0) * 100:.1f}",
            o["expected_status"].get(intent, ""),
            ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])),
        )

    parts: list[Table | Text] = [summary, latency, steps, outcomes]
    if report.errors or report.unfinished:
        problems = Table(title="Errors and unfinished sagas", title_justify="left")
        problems.add_column("what")
        problems.add_column("count", justify="right")
        for kind, count in report.errors.items():
            problems.add_row(kind, str(count))
        for status, count in report.unfinished.items():
            problems.add_row(f"unfinished: {status}", str(count))
        parts.append(problems)
        if any(" 429" in kind for kind in report.errors):
            parts.append(
                Text(
                    "429: the API's rate limits applied; raise ERYNOA_RATE_LIMIT_PER_MINUTE_IP "
                    "and ERYNOA_RATE_LIMIT_PER_MINUTE_USER for the API process to load it harder",
                    style="yellow",
                )
            )
    inv = report.invariants
    if not inv.get("checked"):
        parts.append(Text(f"invariants: not checked ({inv.get('error')})", style="yellow"))
    elif inv["violations"]:
        text = Text(f"invariants: {len(inv['violations'])} violation(s)\n", style="bold red")
        for violation in inv["violations"][:20]:
            text.append(f"  {violation}\n", style="red")
        parts.append(text)
    else:
        parts.append(
            Text(f"invariants: hold for all {inv.get('bookings', 0)} bookings", style="green")
        )
    return Group(*parts)
