"""``erynoa faults``: the fault matrix from the command line (``make faults``).

    erynoa faults                       # every row, results in bench/results/faults-<date>.*
    erynoa faults --quick               # the subset ``make test`` runs
    erynoa faults --only pg,agent-kill  # rows by name or prefix

Exits 1 when a row that ran does not pass (skipped rows are listed, not failed).
"""

from __future__ import annotations

import os
import signal
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from erynoa.settings import PROJECT_ROOT, Settings
from faults import injectors, report
from faults.matrix import QUICK_TIMING, Timing, run_matrix

RESULTS_DIR = PROJECT_ROOT / "bench" / "results"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # so the private stack is torn down on SIGTERM too


def faults(
    only: Annotated[
        str | None,
        typer.Option(help="Comma-separated rows (or prefixes, e.g. agent-kill) to run."),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="PostgreSQL 15 s, one broker restart, one agent kill.")
    ] = False,
    rate: Annotated[float, typer.Option(help="Bookings per second.", min=0.5, max=50)] = 5.0,
    out: Annotated[Path, typer.Option(help="Where faults-<date>.{json,md,png} go.")] = RESULTS_DIR,
    list_rows: Annotated[bool, typer.Option("--list", help="List the rows and exit.")] = False,
) -> None:
    """Run load through the API while faults are injected into a private copy of the system,
    then check that every acknowledged request took effect; print the matrix."""
    chosen = injectors.quick_matrix() if quick else injectors.full_matrix()
    if list_rows:
        for fault in chosen:
            typer.echo(f"{fault.name:30} {fault.title}")
        return
    names = [n.strip() for n in (only or "").split(",") if n.strip()]
    selected = injectors.select(chosen, names)
    if not selected:
        known = ", ".join(f.name for f in chosen)
        typer.secho(f"no row matches {only!r}; the rows are: {known}", fg="red", err=True)
        raise typer.Exit(2)
    timing = QUICK_TIMING if quick else Timing()
    timing = Timing(
        rate_per_s=rate,
        warmup_s=timing.warmup_s,
        after_s=timing.after_s,
        drain_s=timing.drain_s,
        response_deadline_s=timing.response_deadline_s,
    )
    started = datetime.now(UTC)
    log_dir = Path(tempfile.mkdtemp(prefix="erynoa-faults-"))
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        rows = run_matrix(selected, Settings(), timing, log_dir, lambda m: typer.echo(m, err=True))
    finally:
        signal.signal(signal.SIGTERM, previous)
    meta = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "rows": ",".join(f.name for f in selected),
        "quick": quick,
        "rate_per_s": rate,
        "cpus": os.cpu_count(),
        "logs": str(log_dir),
    }
    stem = out / f"faults-{started.strftime('%Y-%m-%d')}"
    written = report.write(rows, meta, stem)
    typer.echo(report.markdown(rows))
    typer.echo(report.details(rows))
    typer.echo("written: " + ", ".join(str(p) for p in written))
    if any(not r.skipped and not report.passed(r) for r in rows):
        raise typer.Exit(1)
