"""``erynoa dlq ...`` and ``erynoa saga ...``: the operator's commands.

Thin: each command parses its options, calls the library (``ops.dlq``,
``ops.sagas``) and renders the dataclasses it returns as rich tables for people or as
JSON (``--json``) for machines. Progress and errors go to stderr, so ``--json`` output pipes
cleanly. Bad input (an unknown topic, an unreadable time, a malformed id) prints one line and
exits 2; an unreachable service or a refused action exits 1.

    erynoa dlq ls
    erynoa dlq show --booking-id <id> --since 2h
    erynoa dlq replay --error-class GatewayUnavailable --dry-run
    erynoa dlq replay --error-class GatewayUnavailable --rate 20
    erynoa saga ls --stuck
    erynoa saga show <booking_id>
    erynoa saga cancel <booking_id> --reason "customer called" --dry-run
    erynoa saga retry <booking_id> --step payment
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, NoReturn, TypeVar

import asyncpg
import typer
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from cli.startup import fail, load_settings, load_topic_catalog
from erynoa import kafka as k
from erynoa.codec import operator_codec
from erynoa.saga import Policy, Status
from erynoa.settings import Settings
from erynoa.topics import TopicCatalog
from ops import assess, dead_letters, replay, sagas, when
from ops.errors import BadInput, check_booking_id

dlq_app = typer.Typer(
    no_args_is_help=True, help="Dead-letter topics: see what failed, and replay it."
)
saga_app = typer.Typer(
    no_args_is_help=True, help="Sagas: timelines, stuck ones, and an operator's cancel or retry."
)

T = TypeVar("T")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for machines, not tables.")]
OperatorOpt = Annotated[
    str | None, typer.Option(help="Who is acting, for the audit trail (default: $USER).")
]


# --- plumbing ------------------------------------------------------------------------------


def _bad_input(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _operator(given: str | None) -> str:
    if given:
        return given
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _policy(settings: Settings) -> Policy:
    return Policy.from_settings(settings)


def _run(settings: Settings, work: Coroutine[Any, Any, T]) -> T:
    """Run ``work``; a service that is down or a schema not migrated is one line, exit 1."""
    try:
        return asyncio.run(work)
    except BadInput as exc:
        _bad_input(str(exc))
    except (sagas.SagaNotFound, replay.StalePlan) as exc:
        fail(str(exc))
    except asyncpg.UndefinedTableError as exc:
        fail(f"PostgreSQL: {exc} (run `erynoa db migrate`)")
    except KafkaError as exc:
        fail(f"Kafka at {settings.kafka_bootstrap}: {exc}")
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        fail(f"cannot reach a service (Kafka {settings.kafka_bootstrap}, PostgreSQL): {exc}")


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _when(moment: datetime | None, now: datetime | None = None) -> str:
    if moment is None:
        return "-"
    text = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    if now is not None:
        text += f" ({assess.format_duration(now - moment)} ago)"
    return text


def _ago(moment: datetime | None, now: datetime) -> str:
    return f"{assess.format_duration(now - moment)} ago" if moment is not None else ""


def _duration(delta: timedelta | None) -> str:
    return assess.format_duration(delta) if delta is not None else "-"


# --- dlq -------------------------------------------------------------------------------------

TopicOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--topic", "-t", help="A dead-letter topic (payment.dlq) or consumer (payment); repeatable."
    ),
]
BookingOpt = Annotated[str | None, typer.Option("--booking-id", help="Only this booking's.")]
EventTypeOpt = Annotated[str | None, typer.Option("--event-type", help="e.g. PaymentAuthorized.")]
ErrorClassOpt = Annotated[
    str | None, typer.Option("--error-class", help="e.g. UndecodableEvent, GatewayUnavailable.")
]
SinceOpt = Annotated[
    str | None, typer.Option(help="Dead-lettered at or after: ISO time, or 90s/15m/2h/7d ago.")
]
UntilOpt = Annotated[str | None, typer.Option(help="Dead-lettered before: ISO time or 1h (ago).")]
MaxScanOpt = Annotated[
    int, typer.Option(min=1, help="Read at most this many messages (bounds a huge topic).")
]


def _query(
    catalog: TopicCatalog,
    topic: list[str] | None,
    booking_id: str | None,
    event_type: str | None,
    error_class: str | None,
    since: str | None,
    until: str | None,
    limit: int | None,
) -> dead_letters.Query:
    try:
        return dead_letters.query_from(
            catalog,
            datetime.now(UTC),
            topics=topic or [],
            booking_id=booking_id,
            event_type=event_type,
            error_class=error_class,
            since=since,
            until=until,
            limit=limit,
        )
    except BadInput as exc:
        _bad_input(str(exc))


@dlq_app.command("ls")
def dlq_ls(
    sample: Annotated[
        int, typer.Option(min=1, help="Count error classes over this many newest messages.")
    ] = 10_000,
    as_json: JsonOpt = False,
) -> None:
    """Every dead-letter topic: depth, oldest and newest message, counts by error class."""
    settings = load_settings()
    catalog = load_topic_catalog(settings)
    summaries = _run(
        settings, dead_letters.summarize(catalog, settings.kafka_bootstrap, sample=sample)
    )
    if as_json:
        _echo_json([s.to_json() for s in summaries])
        return
    now = datetime.now(UTC)
    table = Table(title="Dead-letter topics", title_justify="left")
    table.add_column("topic", no_wrap=True)
    table.add_column("depth", justify="right", no_wrap=True)
    table.add_column("oldest", no_wrap=True)
    table.add_column("newest", no_wrap=True)
    table.add_column("error classes", no_wrap=True)
    for s in summaries:
        if not s.exists:
            table.add_row(s.topic, "-", "", "", Text("missing on the cluster", style="red"))
            continue
        classes = "\n".join(f"{name}: {n}" for name, n in s.error_classes.items()) or "-"
        if s.sampled < s.depth:
            classes += f"\n(of the newest {s.sampled})"
        table.add_row(
            s.topic,
            Text(str(s.depth), style="bold red" if s.depth else "green"),
            _ago(s.oldest, now),
            _ago(s.newest, now),
            classes,
        )
    Console().print(table)
    missing = [s.topic for s in summaries if not s.exists]
    if missing:
        typer.secho(
            f"missing on the cluster: {', '.join(missing)} (run `erynoa topics apply`)",
            fg=typer.colors.YELLOW,
            err=True,
        )


def _message_cells(m: dead_letters.DeadLetter) -> tuple[Text, str]:
    if m.event is not None:
        event = Text(f"{m.event_type}", style="bold")
        event.append(f"  id {m.event_id}", style="dim")
    else:
        event = Text(f"undecodable, {m.size} bytes\n", style="bold red")
        event.append(f"{m.undecodable}\n{m.hex_preview()}", style="dim")
        if m.event_type:
            event.append(f"\n(header says {m.event_type})", style="dim")
    return event, m.booking_id or "-"


def _failure_cell(m: dead_letters.DeadLetter) -> Text:
    f = m.failure
    text = Text(f"{f.error_class or '?'}", style="bold yellow")
    if f.error_kind:
        text.append(f" ({f.error_kind})")
    text.append(f"\n{f.error or '(no error header)'}\n", style="")
    attempts = f.attempts if f.attempts is not None else "?"
    text.append(f"by {f.consumer or '?'} after {attempts} attempt(s)", style="dim")
    if f.replay_id:
        text.append(f"\nfailed again after replay {f.replay_id}", style="magenta")
    return text


def _message_block(m: dead_letters.DeadLetter, now: datetime) -> Table:
    """One dead letter as a labelled block: fits any terminal width, unlike a wide table."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row(
        Text(f"{m.topic}[{m.partition}]@{m.offset}", style="bold cyan"),
        f"dead-lettered {_when(m.timestamp, now)}",
    )
    event, booking = _message_cells(m)
    grid.add_row("event", event)
    grid.add_row("booking", booking)
    grid.add_row("failure", _failure_cell(m))
    grid.add_row("origin", _origin_cell(m))
    return grid


def _origin_cell(m: dead_letters.DeadLetter) -> str:
    f = m.failure
    origin = f"{f.origin_topic or '?'}[{f.origin_partition}]@{f.origin_offset}"
    return f"{origin}\nfirst {_when(f.first_failure)}\nlast  {_when(f.last_failure)}"


@dlq_app.command("show")
def dlq_show(
    topic: TopicOpt = None,
    booking_id: BookingOpt = None,
    event_type: EventTypeOpt = None,
    error_class: ErrorClassOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 50,
    max_scan: MaxScanOpt = 100_000,
    as_json: JsonOpt = False,
) -> None:
    """Dead letters, decoded, with why, where from, when and how often they failed."""
    settings = load_settings()
    catalog = load_topic_catalog(settings)
    query = _query(catalog, topic, booking_id, event_type, error_class, since, until, limit)
    result = _run(
        settings,
        dead_letters.find(
            catalog, settings.kafka_bootstrap, query, operator_codec(), max_scan=max_scan
        ),
    )
    if as_json:
        _echo_json(result.to_json())
        return
    console = Console()
    now = datetime.now(UTC)
    for m in result.messages:
        console.print(_message_block(m, now), "")
    console.print(f"{len(result.messages)} message(s)", style="bold")
    _scan_notes(result)


def _scan_notes(result: dead_letters.ScanResult) -> None:
    notes = []
    if result.limited:
        notes.append("stopped at --limit; more may match")
    if result.truncated:
        notes.append(f"stopped after reading {result.scanned} messages (--max-scan)")
    if result.missing_topics:
        notes.append(f"missing on the cluster: {', '.join(result.missing_topics)}")
    for note in notes:
        typer.secho(note, fg=typer.colors.YELLOW, err=True)


@dlq_app.command("replay")
def dlq_replay(
    topic: TopicOpt = None,
    booking_id: BookingOpt = None,
    event_type: EventTypeOpt = None,
    error_class: ErrorClassOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Replay at most this many (default: all).")
    ] = None,
    rate: Annotated[
        float | None, typer.Option(min=0.001, help="At most this many messages per second.")
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Show what would be re-driven and what it would do; change nothing."
        ),
    ] = False,
    again: Annotated[
        bool, typer.Option("--again", help="Re-drive messages that were replayed before.")
    ] = False,
    include_undecodable: Annotated[
        bool,
        typer.Option("--include-undecodable", help="Re-drive undecodable messages too."),
    ] = False,
    plan_id: Annotated[
        str | None,
        typer.Option(
            "--plan-id",
            help="The dry run's plan id: replay only if the plan is still that one.",
        ),
    ] = None,
    operator: OperatorOpt = None,
    max_scan: MaxScanOpt = 100_000,
    as_json: JsonOpt = False,
) -> None:
    """Re-drive dead letters to their origin topic (audited; each message once unless --again).

    Every consumer group of the origin topic sees the copy; handlers deduplicate by event id,
    so only the consumer that failed does any work. Dry-run first.
    """
    settings = load_settings()
    catalog = load_topic_catalog(settings)
    query = _query(catalog, topic, booking_id, event_type, error_class, since, until, limit)
    who = _operator(operator)
    progress = Progress(
        TextColumn("replaying"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=as_json,
    )

    async def work() -> tuple[list[replay.PlannedReplay], replay.ReplayReport | None]:
        from erynoa.db import create_pool

        codec = operator_codec()
        found = await dead_letters.find(
            catalog, settings.kafka_bootstrap, query, codec, max_scan=max_scan
        )
        _scan_notes(found)
        pool = await create_pool(settings, min_size=1, max_size=2)
        try:
            plan = await replay.plan_replay(
                pool,
                catalog,
                found.messages,
                codec,
                datetime.now(UTC),
                again=again,
                include_undecodable=include_undecodable,
                with_effects=dry_run or plan_id is not None,
                policy=_policy(settings),
            )
            if dry_run:
                return plan, None
            replay.check_plan(plan, plan_id)
            producer = AIOKafkaProducer(
                **k.producer_config(settings.kafka_bootstrap, "erynoa-dlq-replay")
            )
            await producer.start()
            try:
                with progress:
                    task = progress.add_task("replay", total=len(plan))
                    report = await replay.replay(
                        pool,
                        producer,
                        plan,
                        operator=who,
                        again=again,
                        rate=rate,
                        on_progress=lambda _: progress.advance(task),
                    )
            finally:
                await producer.stop()
            return plan, report
        finally:
            await pool.close()

    plan, report = _run(settings, work())
    if report is None:
        _print_dry_run(plan, as_json)
        return
    _print_report(report, as_json)
    if report.counts["failed"]:
        raise typer.Exit(1)


def _print_dry_run(plan: list[replay.PlannedReplay], as_json: bool) -> None:
    would = sum(1 for p in plan if p.replay)
    if as_json:
        _echo_json(
            {
                "dry_run": True,
                "plan_id": replay.plan_id(plan),
                "would_replay": would,
                "plan": [p.to_json() for p in plan],
            }
        )
        return
    console = Console()
    now = datetime.now(UTC)
    for p in plan:
        block = _message_block(p.message, now)
        if p.replay:
            block.add_row("decision", Text("replay", style="bold green"))
        else:
            block.add_row("decision", Text(f"skip: {p.skip}", style="yellow"))
        if p.note is not None:
            block.add_row("note", Text(p.note, style="yellow"))
        if p.effect is not None:
            block.add_row("its saga", p.effect.describe())
        block.add_row("", "")
        console.print(block)
    typer.echo(
        f"dry run: would replay {would}, skip {len(plan) - would}; "
        f"nothing was published or recorded (plan id {replay.plan_id(plan)}: "
        "--plan-id replays only this plan)"
    )


def _print_report(report: replay.ReplayReport, as_json: bool) -> None:
    if as_json:
        _echo_json(report.to_json())
        return
    interesting = [o for o in report.outcomes if o.result != "replayed"]
    if interesting:
        table = Table(title="Not replayed", title_justify="left", show_lines=True)
        for column in ("where", "event", "booking", "result", "why"):
            table.add_column(column, overflow="fold")
        for o in interesting:
            m = o.message
            table.add_row(
                f"{m.topic}[{m.partition}]@{m.offset}",
                m.event_type or "undecodable",
                m.booking_id or "-",
                Text(o.result, style="red" if o.result == "failed" else "yellow"),
                o.detail or "",
            )
        Console().print(table)
    c = report.counts
    typer.echo(
        f"replay {report.replay_id} by {report.operator}: {c['replayed']} replayed, "
        f"{c['skipped']} skipped, {c['failed']} failed in {report.seconds:.1f}s"
    )


# --- saga ------------------------------------------------------------------------------------

BookingArg = Annotated[str, typer.Argument(help="The booking id (a uuid).")]


def _checked(check: Callable[[str], str], value: str) -> str:
    """``value`` as an ``ops`` rule accepts it; what the rule refuses exits 2 before any
    service is reached."""
    try:
        return check(value)
    except BadInput as exc:
        _bad_input(str(exc))


_KIND_STYLE = {
    "compensation": "magenta",
    "failure": "red",
    "request": "cyan",
    "notification": "blue",
    "step": "",
}


def _waiting_text(w: assess.Waiting) -> str:
    return f"{w.who}: {w.what}" + (f" until {_when(w.until)}" if w.until else "")


def _clock(moment: datetime) -> str:
    """The time of day to the millisecond: a saga's events are seconds apart, not days."""
    return moment.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]


StuckAfterOpt = Annotated[
    str | None,
    typer.Option(
        "--stuck-after",
        help="Idle this long counts as stuck in any step, e.g. 5m (default: per step).",
    ),
]


def _criteria(settings: Settings, stuck_after: str | None) -> assess.Criteria:
    try:
        return assess.Criteria.of(
            settings, when.parse_age(stuck_after) if stuck_after is not None else None
        )
    except BadInput as exc:
        _bad_input(f"--stuck-after: {exc}")


@saga_app.command("show")
def saga_show(
    booking_id: BookingArg, stuck_after: StuckAfterOpt = None, as_json: JsonOpt = False
) -> None:
    """One saga's timeline: each event, who emitted it, when; where it waits and until when."""
    booking_id = _checked(check_booking_id, booking_id)
    settings = load_settings()
    criteria = _criteria(settings, stuck_after)
    now = datetime.now(UTC)

    async def work() -> sagas.SagaTimeline:
        conn = await asyncpg.connect(settings.database_url)
        try:
            return await sagas.saga_timeline(conn, booking_id, operator_codec(), now, criteria)
        finally:
            await conn.close()

    timeline = _run(settings, work())
    if as_json:
        _echo_json(timeline.to_json())
        return
    console = Console()
    status = timeline.status.value if timeline.status else "unknown (request not in the log)"
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("booking", timeline.booking_id)
    head.add_row("status", Text(status, style="bold"))
    head.add_row(
        "hold / payment",
        f"{timeline.hold.value if timeline.hold else '-'} / "
        f"{timeline.payment.value if timeline.payment else '-'}"
        + (f" ({timeline.payment_id})" if timeline.payment_id else ""),
    )
    if timeline.failure_reason:
        head.add_row("reason", timeline.failure_reason)
    head.add_row("requested", _when(timeline.requested_at, now))
    head.add_row("last event", _when(timeline.last_event_at, now))
    head.add_row(
        "total time", f"{_duration(timeline.elapsed)}{'' if timeline.in_flight else ' (finished)'}"
    )
    if timeline.provider_deadline_at:
        head.add_row("provider deadline", _when(timeline.provider_deadline_at))
    for w in timeline.waiting:
        head.add_row("waiting for", _waiting_text(w))
    if not timeline.waiting and not timeline.in_flight:
        head.add_row("waiting for", "nothing: the saga is done")
    if timeline.stuck_reason:
        head.add_row("STUCK", Text(timeline.stuck_reason, style="bold red"))
    head.add_row("correlation id", timeline.correlation_id or "-")
    console.print(head)

    day = timeline.entries[0].occurred_at.strftime("%Y-%m-%d") if timeline.entries else ""
    table = Table(title_justify="left", title=f"{len(timeline.entries)} event(s) {day} UTC")
    for column in ("#", "time", "+prev", "event", "producer"):
        table.add_column(column, no_wrap=True, justify="right" if column in "#+prev" else "left")
    table.add_column("detail", overflow="fold")
    for n, e in enumerate(timeline.entries, 1):
        label = Text(e.event_type, style=_KIND_STYLE[e.kind])
        if e.kind in ("compensation", "failure"):
            label.append(f"  [{e.kind}]", style="dim")
        table.add_row(
            str(n),
            _clock(e.occurred_at),
            _duration(e.since_previous),
            label,
            e.producer,
            Text(e.detail, style="dim"),
        )
    console.print(table)


@saga_app.command("ls")
def saga_ls(
    stuck: Annotated[
        bool, typer.Option("--stuck", help="Only sagas past their deadline or idle too long.")
    ] = False,
    status: Annotated[str | None, typer.Option(help="Only this status, e.g. reserved.")] = None,
    older_than: Annotated[
        str | None, typer.Option("--older-than", help="Requested at least this long ago: 10m.")
    ] = None,
    provider: Annotated[str | None, typer.Option(help="Only this provider's bookings.")] = None,
    customer: Annotated[str | None, typer.Option(help="Only this customer's bookings.")] = None,
    stuck_after: StuckAfterOpt = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many (a page).")] = 50,
    page: Annotated[int, typer.Option(min=1, help="Which page of --limit sagas.")] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Sagas in flight, oldest first (``--stuck``: only those waiting too long), and how many
    match in all."""
    wanted = age = None
    if status is not None:
        try:
            wanted = Status(status)
        except ValueError:
            _bad_input(f"unknown status {status!r}; one of: {', '.join(s.value for s in Status)}")
    if older_than is not None:
        try:
            age = when.parse_age(older_than)
        except BadInput as exc:
            _bad_input(str(exc))
    settings = load_settings()
    criteria = _criteria(settings, stuck_after)
    now = datetime.now(UTC)
    query = sagas.SagaQuery(
        stuck=stuck,
        status=wanted,
        older_than=age,
        provider_id=provider,
        customer_id=customer,
        offset=(page - 1) * limit,
        limit=limit,
    )

    async def work() -> sagas.SagaPage:
        conn = await asyncpg.connect(settings.database_url)
        try:
            # Run once, not polled: an exact count and a full stuck scan, no caps.
            return await sagas.page_sagas(conn, query, now, criteria, total_cap=None, scan_cap=None)
        finally:
            await conn.close()

    found = _run(settings, work())
    if as_json:
        _echo_json(found.to_json())
        return
    kind = "stuck saga(s)" if stuck else "saga(s)"
    title = f"{len(found.sagas)} of {found.total_text} {kind} in flight, oldest first"
    if page > 1:
        title += f" (page {page})"
    table = Table(title=title, title_justify="left", show_lines=True)
    table.add_column("booking", overflow="fold")
    table.add_column("status\nhold/payment", overflow="fold")
    table.add_column("age\nidle", no_wrap=True)
    table.add_column("waiting for", overflow="fold", ratio=1)
    for s in found.sagas:
        waiting = Text("; ".join(_waiting_text(w) for w in s.waiting) or "-")
        if s.stuck_reason:
            waiting.append(f"\nstuck: {s.stuck_reason}", style="red")
        state = Text(s.status.value, style="bold red" if s.stuck else "bold")
        state.append(f"\n{s.hold.value}/{s.payment.value}", style="")
        table.add_row(s.booking_id, state, f"{_duration(s.age)}\n{_duration(s.idle)} idle", waiting)
    Console().print(table)


def _print_request(request: sagas.OperatorRequest, as_json: bool) -> None:
    if as_json:
        _echo_json(request.to_json())
    elif request.refused:
        typer.secho(f"refused: {request.refused}", fg=typer.colors.YELLOW, err=True)
    else:
        assert request.event is not None
        verb = "would publish" if request.dry_run else "published"
        where = (
            f" to {request.published.topic}[{request.published.partition}]"
            f"@{request.published.offset}"
            if request.published
            else ""
        )
        before = request.status_before.value if request.status_before else "unknown"
        after = request.status_after.value if request.status_after else "unknown"
        typer.echo(
            f"{verb} {request.event.event_type} {request.event.event_id}{where} "
            f"for booking {request.booking_id} ({before} → {after})"
        )
    if request.refused:
        raise typer.Exit(1)


Act = Callable[[asyncpg.Connection, sagas.Publish | None], Awaitable[sagas.OperatorRequest]]


async def _with_publisher(settings: Settings, dry_run: bool, act: Act) -> sagas.OperatorRequest:
    """Run ``act(conn, publisher)`` with a database connection and, unless a dry run, a started
    publisher (a dry run never connects to Kafka)."""
    conn = await asyncpg.connect(settings.database_url)
    publisher = None
    try:
        if not dry_run:
            publisher = k.EventPublisher.create(
                settings.kafka_bootstrap,
                "erynoa-ops",
                operator_codec(),
                load_topic_catalog(settings),
            )
            await publisher.start()
        return await act(conn, publisher.publish if publisher is not None else None)
    finally:
        if publisher is not None:
            await publisher.stop()
        await conn.close()


DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Show the request; publish nothing.")]


def _request(command: sagas.OperatorCommand, *, dry_run: bool, as_json: bool) -> None:
    """Run an operator's ``command`` and print what it published or would publish."""
    settings = load_settings()

    async def act(conn: asyncpg.Connection, publish: sagas.Publish | None) -> sagas.OperatorRequest:
        return await sagas.request_saga(
            conn,
            publish,
            command,
            codec=operator_codec(),
            now=datetime.now(UTC),
            dry_run=dry_run,
            policy=_policy(settings),
        )

    _print_request(_run(settings, _with_publisher(settings, dry_run, act)), as_json)


@saga_app.command("cancel")
def saga_cancel(
    booking_id: BookingArg,
    reason: Annotated[str | None, typer.Option(help="Why; shown to the customer.")] = None,
    dry_run: DryRunOpt = False,
    operator: OperatorOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Ask the saga to cancel (compensations run) unless the booking already ended."""
    booking_id = _checked(check_booking_id, booking_id)
    command = sagas.CancelSaga(booking_id, _operator(operator), reason)
    _request(command, dry_run=dry_run, as_json=as_json)


@saga_app.command("retry")
def saga_retry(
    booking_id: BookingArg,
    step: Annotated[
        str,
        typer.Option(help=f"Whose step to re-run: {', '.join(assess.RETRY_STEPS)}."),
    ] = "all",
    dry_run: DryRunOpt = False,
    operator: OperatorOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Ask an agent (or all) to re-run what it owes this saga now (a fresh request each time)."""
    step = _checked(sagas.check_step, step)
    booking_id = _checked(check_booking_id, booking_id)
    command = sagas.RetrySaga(booking_id, _operator(operator), step)
    _request(command, dry_run=dry_run, as_json=as_json)
