"""The benchmark: one command, one machine, every number of the performance targets in one run.

    .venv/bin/python bench/run.py            # ≈ 10 min
    .venv/bin/python bench/run.py --quick    # ≈ 2 min, shorter steps, fewer messages

1. brings the local stack up (``erynoa stack up``, ``topics apply``, ``db migrate``);
2. (e) our Avro codec against the ``avro`` package (``bench/codec.py``);
3. (a) the raw ceiling: consume → produce → commit with aiokafka and confluent-kafka, our
   message size, bench-only topics (``bench/raw_kafka.py``);
4. the peers: the same happy-path saga on Temporal, DBOS and Restate, steps that do nothing
   (``bench/peers``; builds Temporal's dev server once, a few minutes; ``--no-peers`` skips);
5. starts the system (API, four agents, materializer: ``loadgen.system.LocalSystem``, its own
   topics and port) and measures (c) ``POST /bookings`` against a trivial FastAPI endpoint
   (``bench/http_load.py``) and (b) the saga's maximum sustained rate and its latency at half
   of it (``bench/saga_load.py``, loadgen's library);
6. (d) stops the API and the agents, publishes a corpus of finished sagas that the live
   materializer folds in (``bench/corpus.py``, timed), stops the materializer and rebuilds the
   read model from the system's topics (``consumers.rebuild.rebuild``);
7. writes ``bench/results/<date>.json`` and ``.md`` (the table against the targets, the
   machine, the versions).

Everything runs against 127.0.0.1 only. The measurements run one after the other, never
together, and nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Run as a script (``python bench/run.py``): make the project importable from a fresh clone.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import corpus, costs, cpu, http_load, peers, raw_kafka, saga_load, summary  # noqa: E402
from bench.peers import restate_server, temporal_server  # noqa: E402
from erynoa.settings import Settings  # noqa: E402
from loadgen.engine import check_loopback  # noqa: E402
from loadgen.system import LocalSystem, free_port  # noqa: E402


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def erynoa(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "erynoa", *args], check=True, cwd=ROOT)


def codec_bench(n: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.codec", "--n", str(n)],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


async def http_bench(
    system: LocalSystem, seconds: float, concurrency: int, log_dir: Path, *, settle: bool = True
) -> dict[str, Any]:
    """(c): the same client against the trivial endpoint and the real ``POST /bookings``.

    ``settle``: let the system work off the sagas of the closed loop before the 50% run (off
    when the agents are stopped: nothing would)."""
    from api.auth import issue_dev_token
    from erynoa.db import create_pool
    from loadgen import world as w
    from loadgen.clients import SYNTHETIC_HTTP_HEADER
    from loadgen.profile import parse_profile

    # Declined cards: the saga behind each request ends at once (hold released, nothing
    # pending), so the requests cost the same to the API and leave nothing waiting behind.
    profile = parse_profile(
        {
            "name": "http-bench",
            "population": {"customers": 500, "providers": 5, "services": 20},
            "catalog": {"capacity_per_slot": 10_000},
            "outcomes": {"card_declined": 1},
        },
        "bench/run.py",
    )
    world = w.World.build(profile, w.new_run_id(), 1, datetime.now(UTC))
    pool = await create_pool(system.settings, min_size=1, max_size=2)
    try:
        await w.create(pool, world)
    finally:
        await pool.close()
    tokens = [issue_dev_token(system.settings, c, ["customer"], 3600) for c in world.customers]
    planner = w.Planner(world, seed=2)
    bodies = [
        {
            "service_id": plan.service.id,
            "slot_start": plan.slot_start.isoformat(),
            "payment_method": "pm_card_chargeDeclined",
        }
        for plan in (planner.plan(i) for i in range(1000))
    ]

    def request(i: int) -> tuple[str, dict[str, str], dict[str, Any]]:
        headers = {
            "Authorization": f"Bearer {tokens[i % len(tokens)]}",
            SYNTHETIC_HTTP_HEADER: "1",
        }
        return "/api/v1/bookings", headers, bodies[i % len(bodies)]

    results: dict[str, Any] = {"concurrency": concurrency, "seconds": seconds}
    with http_load.TrivialServer(free_port(), log_dir / "trivial-api.log") as trivial:
        say("http: trivial endpoint, closed loop")
        trivial_max = await http_load.closed_loop(
            "trivial", trivial.url, request, concurrency, seconds
        )
        say(f"http: trivial {trivial_max.per_second:,.0f} req/s")
        say("http: trivial endpoint at 50%")
        trivial_half = await http_load.open_loop(
            "trivial", trivial.url, request, trivial_max.per_second / 2, seconds, concurrency
        )
    say("http: POST /bookings, closed loop")
    api_max = await http_load.closed_loop(
        "POST /bookings", system.api_url, request, concurrency, seconds
    )
    say(f"http: POST /bookings {api_max.per_second:,.0f} req/s; now at 50%")
    if settle:
        await saga_load.wait_idle(system.settings, system.catalog)
    api_half = await http_load.open_loop(
        "POST /bookings", system.api_url, request, api_max.per_second / 2, seconds, concurrency
    )
    results.update(
        trivial_closed=trivial_max.to_json(),
        trivial_open_half=trivial_half.to_json(),
        api_closed=api_max.to_json(),
        api_open_half=api_half.to_json(),
    )
    return results


async def saga_bench(system: LocalSystem, quick: bool) -> dict[str, Any]:
    """(b): the rate search, then a run at half the best rate with the invariant checker."""
    seconds = 6.0 if quick else 20.0
    idle_wait_s = 15 if quick else 60
    await saga_load.wait_idle(system.settings, system.catalog, idle_wait_s)
    cpu_before = costs.cpu_used(system)
    probe = await saga_load.saturate(system.settings, 6.0 if quick else 15.0)
    # CPU per booking while saturated: what the peers are measured at (bench/peers).
    cpu_probe = cpu.per_completed_ms(
        cpu_before, costs.cpu_used(system), int(probe.run["completed"])
    )
    probe, steps = await saga_load.search(
        system.settings,
        system.catalog,
        seconds=seconds,
        probe_seconds=6.0 if quick else 15.0,
        bisections=1 if quick else 2,
        budget_s=45 if quick else 330,
        idle_wait_s=idle_wait_s,
        log=say,
        probe=probe,
    )
    # CPU per completed booking over the whole search: where a booking's cost goes, by part,
    # robust to whatever else the machine ran meanwhile (unlike the rates).
    completed = int(probe.run["completed"]) + sum(int(s.report.run["completed"]) for s in steps)
    cpu_ms = cpu.per_completed_ms(cpu_before, costs.cpu_used(system), completed)
    top = saga_load.best(steps)
    result: dict[str, Any] = {
        "probe_capacity_per_s": round(probe.throughput["steady_completed_sagas_per_s"], 1),
        "steps": [s.to_json() for s in steps],
        "seconds_per_step": seconds,
        "cpu_ms_per_booking": cpu_ms,
        "cpu_ms_per_booking_saturated": cpu_probe,
        "mean_batch": costs.mean_batch_sizes(system.settings),
    }
    if top is None:
        return result
    result["max_sustained"] = {
        **top.to_json(),
        "event_to_read_model_p99_ms": round(top.report.latency["event_to_read_model"].p99_ms, 1),
    }
    half = top.rate / 2
    say(f"saga: {half:.0f}/s (50% of {top.rate:.0f}/s), with the invariant checker")
    await saga_load.wait_idle(system.settings, system.catalog)
    report = await saga_load.step(system.settings, half, seconds, check_invariants=True)
    # Wait for the system to come to rest, so the rebuild that follows sees every event.
    await saga_load.wait_idle(system.settings, system.catalog)
    result["half_rate"] = {
        "rate_per_s": half,
        "completed_per_s": round(report.throughput["steady_completed_sagas_per_s"], 1),
        "e2e_p50_ms": round(report.latency["end_to_end"].p50_ms, 1),
        "e2e_p99_ms": round(report.latency["end_to_end"].p99_ms, 1),
        "e2e_confirmed_p99_ms": round(report.latency["end_to_end_confirmed"].p99_ms, 1),
        "event_to_read_model_p99_ms": round(report.latency["event_to_read_model"].p99_ms, 1),
        "steps_p50_ms": {k: round(v.p50_ms, 1) for k, v in report.steps.items()},
        "violations": len(report.violations),
        "invariants": report.invariants,
    }
    return result


def peers_bench(settings: Settings, quick: bool, log_dir: Path) -> dict[str, Any]:
    """The same happy-path saga on Temporal, DBOS and Restate, one after the other
    (``bench/peers``).

    Run while our system is stopped: its idle agents would take CPU from the peer.
    """
    seconds, concurrency = (6.0, 100) if quick else (20.0, 100)
    rows: list[dict[str, Any]] = []
    names = list(peers.PEERS)
    # The peers that need a server of their own: each is prepared once, or left out with why.
    servers: list[tuple[str, str, Callable[[], str | None]]] = [
        (
            "temporal",
            f"Temporal dev server {temporal_server.VERSION} (built once, a few minutes)",
            lambda: temporal_server.build(log_dir / "temporal-build.log"),
        ),
        (
            "restate",
            f"Restate server {restate_server.VERSION} (npm, once)",
            lambda: restate_server.install(log_dir / "restate-install.log"),
        ),
    ]
    for name, what, prepare in servers:
        say(f"peers: {what}")
        why = prepare()
        if why is not None:
            say(f"peers: {name} unavailable: {why}")
            rows.append({"peer": name, "unavailable": why})
            names.remove(name)
    loadavg = summary.machine()["loadavg"]
    rows += peers.measure(
        settings.database_url, seconds=seconds, concurrency=concurrency, log=say, peers=names
    )
    rows.sort(key=lambda row: list(peers.PEERS).index(row["peer"]))
    return {
        "rows": rows,
        "steps": list(peers.STEPS),
        "seconds": seconds,
        "concurrency": concurrency,
        "loadavg_before": loadavg,
        "loadavg_after": summary.machine()["loadavg"],
    }


def corpus_bench(system: LocalSystem, bookings: int) -> dict[str, Any]:
    """(d) set-up: finished sagas for the rebuild to replay, through the live materializer.

    The API and the agents stop first: they would react to the corpus.
    """
    from erynoa.supervisor import AGENTS

    for part in ("api", *AGENTS):
        system.system.stop(part, timeout=30)
    say(f"materializer: publishing {bookings:,} finished sagas for the rebuild")
    started = time.monotonic()
    events = asyncio.run(corpus.publish(system.settings, system.catalog, bookings))
    published = time.monotonic() - started
    group = system.catalog.consumer("materializer").group_id
    waited = asyncio.run(corpus.caught_up(system.settings, group, within_s=240))
    seconds = published + waited if waited is not None else None
    if seconds is not None:
        say(f"materializer: {events:,} events applied in {seconds:.1f} s")
    return {
        "events": events,
        "publish_seconds": round(published, 3),
        "caught_up_seconds": round(seconds, 3) if seconds is not None else None,
        "events_per_s": round(events / seconds, 1) if seconds else None,
    }


def rebuild_bench(settings: Settings) -> dict[str, Any]:
    """(d): replay the system's topics into a fresh schema; events/s."""
    from consumers.rebuild import rebuild

    report = asyncio.run(rebuild(settings))
    return {
        "events": report.events,
        "seconds": round(report.seconds, 3),
        "events_per_s": round(report.events_per_second, 1),
        "bookings": report.bookings,
        "swapped": report.swapped,
        # The system has a database of its own (LocalSystem): the rebuilt model must equal the
        # live one, so anything here is a finding.
        "differences": len(report.differences),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="≈ 2 minutes instead of ≈ 10")
    parser.add_argument(
        "--no-stack",
        action="store_true",
        help="the stack is up already: skip `stack up` (topics and migrations still apply)",
    )
    parser.add_argument(
        "--no-peers",
        action="store_true",
        help="skip the peers (Temporal, DBOS, Restate: bench/peers)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    quick: bool = args.quick
    started = time.monotonic()
    date = datetime.now().strftime("%Y-%m-%d")
    log_dir = args.out / "logs" / datetime.now().strftime("%Y%m%dT%H%M%S")
    log_dir.mkdir(parents=True, exist_ok=True)

    settings = Settings()
    check_loopback(settings.public_base_url, settings.kafka_bootstrap, settings.database_url)
    if not args.no_stack:
        say("stack: up")
        erynoa("stack", "up")
    say("stack: topics, migrations")
    erynoa("topics", "apply")
    erynoa("db", "migrate")

    command = "python bench/run.py" + (" --quick" if quick else "")
    results: dict[str, Any] = {
        "date": date,
        "quick": quick,
        "command": command,
        "machine": summary.machine(),
        "notes": [],
    }
    say("codec: fastavro vs avro")
    results["codec"] = codec_bench(5000 if quick else 20000)

    partitions = max(t.partitions for t in _booking_topics(settings))
    count = 50_000 if quick else 200_000
    say(f"raw ceiling: {count:,} messages through consume → produce → commit")
    results["raw_ceiling"] = [
        {
            "client": r.client,
            "messages": r.messages,
            "seconds": round(r.seconds, 3),
            "per_second": round(r.per_second, 1),
            "message_bytes": r.message_bytes,
        }
        for r in raw_kafka.measure(settings.kafka_bootstrap, count, partitions)
    ]
    for r in results["raw_ceiling"]:
        say(f"raw ceiling: {r['client']} {r['per_second']:,.0f} msg/s")

    if not args.no_peers:
        results["peers"] = peers_bench(settings, quick, log_dir)

    say("system: starting API, agents, materializer")
    with LocalSystem(settings, log_dir) as system:
        results["http"] = asyncio.run(http_bench(system, 5.0 if quick else 15.0, 32, log_dir))
        results["saga"] = asyncio.run(saga_bench(system, quick))
        results["materializer"] = corpus_bench(system, 3_000 if quick else 30_000)
        system.system.stop(timeout=30)
        say("rebuild: replaying the run's topics into a fresh schema")
        results["rebuild"] = rebuild_bench(system.settings)
        say(f"rebuild: {results['rebuild']['events_per_s']:,.0f} events/s")
        # (c) again with the API alone: what the API itself costs, apart from the sagas its
        # requests start (last, so the backlog it leaves behind bothers no other measurement).
        say("http: the API alone (agents and materializer stopped)")
        system.system.start("api")
        system.wait_ready(parts=("api",))
        results["http_api_alone"] = asyncio.run(
            http_bench(system, 5.0 if quick else 15.0, 32, log_dir, settle=False)
        )
    from erynoa.stack.kafka import kafka_version

    results["versions"] = summary.versions({"kafka": kafka_version()})
    results["seconds"] = round(time.monotonic() - started, 1)
    results["machine"]["loadavg_after"] = summary.machine()["loadavg"]
    results["targets"] = summary.targets(results)
    results["earlier_targets"] = summary.earlier_targets(results)
    results["notes"].append(
        "The load generator, the HTTP client and the system share the machine's CPUs; every "
        "number includes the generator's own cost."
    )

    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"{date}{'-quick' if quick else ''}.json"
    md_path = json_path.with_suffix(".md")
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    md_path.write_text(summary.markdown(results))
    print(md_path.read_text())
    say(f"wrote {json_path} and {md_path} in {results['seconds']:.0f} s")
    return 0


def _booking_topics(settings: Settings) -> list[Any]:
    from erynoa.topics import load_catalog

    catalog = load_catalog(settings.topics_file, settings.topics_environment)
    return [t for t in catalog.topics.values() if t.kind == "event" and t.key == "booking_id"]


if __name__ == "__main__":
    sys.exit(main())
