"""``erynoa loadgen``: push synthetic booking traffic into the running system and measure it.

    erynoa loadgen --via kafka --rate 200 --duration 30s
    erynoa loadgen --via rest --rate 50 --count 500 --profile loadgen/profiles/default.yaml
    erynoa loadgen --via kafka --max --count 5000 --profile happy

Needs the system running (``make run``) on this machine; it refuses any non-loopback API,
Kafka or PostgreSQL. Through REST the API's rate limits apply: raise
``ERYNOA_RATE_LIMIT_PER_MINUTE_IP`` (and ``_USER``) for the API process to go beyond them.
Writes ``<out>/loadgen-<time>-<run>.json`` and ``.png``; exit code 1 when the invariant
checker found a violation (or the run could not start).
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live

from erynoa.settings import get_settings
from erynoa.topics import parse_duration_ms
from loadgen.engine import SystemUnavailable, run
from loadgen.model import Progress, RunOptions, RunRefused, Via
from loadgen.plot import write_plot
from loadgen.profile import ProfileError, load_profile, resolve_profile
from loadgen.render import progress_panel, result_tables
from loadgen.report import Report


def parse_rate(text: str) -> float:
    """``200``, ``200/s`` or ``12000/m`` → bookings per second."""
    value = text.strip().lower()
    per = 1.0
    if value.endswith("/s"):
        value = value[:-2]
    elif value.endswith("/m"):
        value, per = value[:-2], 60.0
    try:
        rate = float(value) / per
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a rate like 200 or 200/s") from None
    if rate <= 0:
        raise typer.BadParameter("the rate must be positive")
    return rate


def parse_seconds(text: str) -> float:
    """``30`` (seconds), ``30s``, ``2m`` or ``500ms`` → seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        ms = parse_duration_ms(text.strip())
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if ms <= 0:
        raise typer.BadParameter("a duration must be positive")
    return ms / 1000


def write_results(report: Report, out_dir: Path) -> tuple[Path, Path]:
    """The JSON file and the PNG plot of a run; returns their paths."""
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    base = out_dir / f"loadgen-{stamp}-{report.run['run_id']}"
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = base.with_suffix(".json")
    json_path.write_text(json.dumps(report.to_json(), indent=2, default=str) + "\n")
    return json_path, write_plot(report, base.with_suffix(".png"))


def loadgen(
    via: Annotated[
        str, typer.Option("--via", help="rest: through the API; kafka: into the bookings topic")
    ] = "rest",
    rate: Annotated[
        str | None, typer.Option("--rate", help="target bookings per second, e.g. 200 or 200/s")
    ] = None,
    max_rate: Annotated[
        bool, typer.Option("--max", help="as fast as the in-flight cap allows")
    ] = False,
    duration: Annotated[
        str | None, typer.Option("--duration", help="how long to send, e.g. 30s or 2m")
    ] = None,
    count: Annotated[
        int | None, typer.Option("--count", min=1, help="how many bookings to send")
    ] = None,
    profile: Annotated[
        str, typer.Option("--profile", help="a bundled profile (default, happy) or a YAML file")
    ] = "default",
    in_flight: Annotated[
        int, typer.Option("--in-flight", min=1, help="sagas open at once before sending waits")
    ] = 2000,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, help="requests on the wire at once")
    ] = 64,
    drain: Annotated[
        str | None,
        typer.Option("--drain", help="how long to wait for open sagas after sending stops"),
    ] = None,
    api_url: Annotated[
        str | None, typer.Option("--api-url", help="default: ERYNOA_PUBLIC_BASE_URL")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="where the JSON and PNG go")] = Path(
        "loadgen-results"
    ),
    seed: Annotated[int | None, typer.Option("--seed", help="repeat a run's choices")] = None,
    invariants: Annotated[
        bool, typer.Option("--invariants/--no-invariants", help="run the invariant checker")
    ] = True,
    quiet: Annotated[bool, typer.Option("--quiet", help="no live progress")] = False,
) -> None:
    """Push synthetic bookings at a rate (or --max) for a duration or count; report and plot."""
    console = Console()
    if via not in ("rest", "kafka"):
        raise typer.BadParameter("choose rest or kafka", param_hint="--via")
    if (rate is None) == (not max_rate):
        raise typer.BadParameter("give exactly one of --rate N or --max", param_hint="--rate")
    if duration is None and count is None:
        raise typer.BadParameter(
            "give --duration or --count (or both): a run is always bounded",
            param_hint="--duration",
        )
    try:
        loaded = load_profile(resolve_profile(profile))
    except ProfileError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    via_value: Via = "rest" if via == "rest" else "kafka"
    options = RunOptions(
        via=via_value,
        profile=loaded,
        rate=None if max_rate else parse_rate(str(rate)),
        count=count,
        duration_s=parse_seconds(duration) if duration is not None else None,
        in_flight=in_flight,
        concurrency=concurrency,
        drain_s=parse_seconds(drain) if drain is not None else None,
        api_url=api_url,
        seed=seed,
        check_invariants=invariants,
    )
    settings = get_settings()
    live = None if quiet else Live(console=console, refresh_per_second=4, transient=True)

    def show(progress: Progress) -> None:
        if live is not None:
            live.update(progress_panel(progress, via))

    try:
        if live is not None:
            live.start()
        report = asyncio.run(run(settings, options, on_progress=show))
    except RunRefused as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    except SystemUnavailable as exc:
        console.print(f"[red]{exc}; is the system running (make run)?[/red]")
        raise typer.Exit(1) from None
    finally:
        if live is not None:
            live.stop()
    console.print(result_tables(report))
    json_path, png_path = write_results(report, out)
    console.print(f"results: {json_path}\nplot:    {png_path}")
    if report.violations:
        raise typer.Exit(1)
