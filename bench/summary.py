"""The benchmark's write-up: the machine it ran on, and the markdown table against its targets
(``bench/results/<date>.md``, the one the README quotes)."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = (
    "aiokafka", "confluent-kafka", "faust-streaming", "fastapi", "uvicorn", "asyncpg",
    "fastavro", "avro", "httpx", "pydantic", "temporalio", "dbos",
    "restate-sdk",
)  # fmt: skip
PEER_NAMES = {"temporal": "Temporal", "dbos": "DBOS Transact", "restate": "Restate"}
# The seed's Temporal design, as reported with the Python SDK on 4 cores.
TEMPORAL_WORKFLOWS_PER_S = (73, 86)


def machine() -> dict[str, Any]:
    """CPU count and model, memory, OS and Python, from /proc where there is one."""
    model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_gib = None
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    return {
        # Load before the run: the numbers mean little on a machine that was already busy.
        "loadavg": Path("/proc/loadavg").read_text().split()[:3]
        if Path("/proc/loadavg").exists()
        else None,
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": memory_gib,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def versions(extra: dict[str, str]) -> dict[str, str]:
    found = dict(extra)
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def _n(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ceiling_ms(
    what: str, value: float | None, limit: int, digits: int = 0, *, below: bool = False
) -> dict[str, Any]:
    """A target row for a latency that must stay at most ``limit`` ms (``below``: under it)."""
    return {
        "what": what,
        "measured": f"{_n(value, digits)} ms",
        "target": f"{'<' if below else '≤'} {limit:,} ms",
        "ratio": f"{value / limit:.2f} x target" if value else "-",
        "met": None if value is None else (value < limit if below else value <= limit),
    }


def _vs_trivial(what: str, api: float | None, trivial: float | None) -> dict[str, Any]:
    """A target row for the API's rate, at least half the trivial endpoint's."""
    ratio = api / trivial if api and trivial else None
    return {
        "what": what,
        "measured": f"{_n(api)} vs {_n(trivial)}",
        "target": "≥ 0.5 x trivial",
        "ratio": f"{ratio:.2f} x trivial" if ratio else "-",
        "met": ratio >= 0.5 if ratio is not None else None,
    }


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The performance targets, each with what was measured, the ratio and whether it was met:
    against the best peer of the same run, CPU per booking, latency at half the sustained rate
    and the API's rate next to a trivial endpoint's."""
    saga = results.get("saga", {})
    top = saga.get("max_sustained") or {}
    half = saga.get("half_rate") or {}
    http = results.get("http", {})
    best = best_peer(results)
    best_rate = best["completed_per_s"] if best is not None else None
    best_name = PEER_NAMES.get(best["peer"], best["peer"]) if best is not None else "no peer"
    rows = [
        _vs_peer(
            "completed bookings/s at saturation vs the best peer",
            saga.get("probe_capacity_per_s"),
            best_rate,
            best_name,
            10,
        ),
        _vs_peer(
            "completed bookings/s sustained vs the best peer's saturated rate",
            top.get("completed_per_s"),
            best_rate,
            best_name,
            5,
        ),
    ]
    for label, key in (
        ("at saturation", "cpu_ms_per_booking_saturated"),
        ("during the rate search", "cpu_ms_per_booking"),
    ):
        total = (saga.get(key) or {}).get("total")
        rows.append(_ceiling_ms(f"CPU per completed booking, all processes, {label}", total, 10, 1))
    rows.append(
        _ceiling_ms(
            f"end-to-end p99, request → confirmed in read model, at half the sustained rate "
            f"({_n(half.get('rate_per_s'))}/s)",
            half.get("e2e_confirmed_p99_ms"),
            250,
        )
    )
    rows.append(
        _vs_trivial(
            "POST /bookings requests/s vs a trivial FastAPI endpoint, the whole system running",
            (http.get("api_closed") or {}).get("requests_per_s"),
            (http.get("trivial_closed") or {}).get("requests_per_s"),
        )
    )
    return rows


def earlier_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The first benchmark round's targets, still measured: against the raw Kafka ceiling and
    the seed's Temporal figures, the API's own latency, the materializer and the rebuild."""
    raw = {r["client"]: r["per_second"] for r in results.get("raw_ceiling", [])}
    ceiling = raw.get("aiokafka")
    saga = results.get("saga", {})
    top = saga.get("max_sustained") or {}
    http = results.get("http", {})
    api_half = (http.get("api_open_half") or {}).get("latency_ms", {})
    rebuild = results.get("rebuild", {})
    rows: list[dict[str, Any]] = []

    events = top.get("saga_events_per_s")
    rows.append({
        "what": "saga events processed/s at max sustained rate",
        "measured": _n(events),
        "target": f"≥ 0.3 x raw aiokafka ceiling ({_n(ceiling)}/s) = {_n(0.3 * ceiling)}/s"
        if ceiling else "≥ 0.3 x raw aiokafka ceiling",
        "ratio": f"{events / ceiling:.2f} x ceiling" if events and ceiling else "-",
        "met": events >= 0.3 * ceiling if events is not None and ceiling else None,
    })  # fmt: skip
    completed = top.get("completed_per_s")
    temporal = max(TEMPORAL_WORKFLOWS_PER_S)
    rows.append({
        "what": "completed bookings/s sustained (happy path, immediate answers)",
        "measured": _n(completed),
        "target": f"≥ 1,000/s and ≥ 10x Temporal ({TEMPORAL_WORKFLOWS_PER_S[0]}-{temporal}/s)",
        "ratio": f"{completed / 1000:.2f} x 1,000; {completed / temporal:.1f} x Temporal"
        if completed else "-",
        "met": completed >= max(1000, 10 * temporal) if completed is not None else None,
    })  # fmt: skip
    alone = results.get("http_api_alone", {})
    alone_trivial = (alone.get("trivial_closed") or {}).get("requests_per_s")
    alone_api = (alone.get("api_closed") or {}).get("requests_per_s")
    if alone_api and alone_trivial:
        rows.append(
            _vs_trivial(
                "POST /bookings vs a trivial endpoint, the API alone (agents and materializer "
                "stopped)",
                alone_api,
                alone_trivial,
            )
        )
    rows.append(_ceiling_ms("POST /bookings p99 at 50% of its max", api_half.get("p99_ms"), 20, 1))
    alone_p99 = ((alone.get("api_open_half") or {}).get("latency_ms") or {}).get("p99_ms")
    if alone_p99 is not None:
        rows.append(_ceiling_ms("the same, the API alone", alone_p99, 20, 1))
    rows.append(
        _ceiling_ms(
            "materializer lag p99 (event → read model) at max saga rate",
            top.get("event_to_read_model_p99_ms"),
            1000,
            below=True,
        )
    )
    rebuild_rate = rebuild.get("events_per_s")
    rows.append({
        "what": f"read-model rebuild ({_n(rebuild.get('events'))} events, "
        f"{_n(rebuild.get('differences'))} differences from the live model)",
        "measured": f"{_n(rebuild_rate)} events/s",
        "target": "≥ 20,000 events/s",
        "ratio": f"{rebuild_rate / 20000:.2f} x target" if rebuild_rate else "-",
        "met": rebuild_rate >= 20000 if rebuild_rate is not None else None,
    })  # fmt: skip
    return rows


def _vs_peer(
    what: str, ours: float | None, peer: float | None, peer_name: str, times: int
) -> dict[str, Any]:
    """A target row for our rate, at least ``times`` the best peer's."""
    ratio = ours / peer if ours and peer else None
    return {
        "what": what,
        "measured": f"{_n(ours, 1)} vs {_n(peer, 1)} ({peer_name})",
        "target": f"≥ {times} x the best peer",
        "ratio": f"{ratio:.2f} x" if ratio is not None else "-",
        "met": ratio >= times if ratio is not None else None,
    }


def best_peer(results: dict[str, Any]) -> dict[str, Any] | None:
    """The measured peer with the highest saturated rate, None when none was measured."""
    measured = [
        row
        for row in (results.get("peers") or {}).get("rows", [])
        if "unavailable" not in row and row.get("completed_per_s")
    ]
    return max(measured, key=lambda row: row["completed_per_s"], default=None)


def peers_table(results: dict[str, Any]) -> list[str]:
    """Ours against each peer: saturated rate and CPU per completed saga, with the ratios."""
    block = results.get("peers")
    if not block:
        return []
    saga = results.get("saga") or {}
    ours_rate = saga.get("probe_capacity_per_s")
    ours_cpu = (saga.get("cpu_ms_per_booking_saturated") or {}).get("total")
    load = " ".join(block.get("loadavg_before") or ["?"])
    lines = [
        "",
        "## Peers: the same happy-path saga on other systems (this run)",
        "",
        f"Seven steps, in order: {', '.join(block.get('steps', []))}. Each peer: a closed loop of "
        f"{block['concurrency']} sagas in flight for {block['seconds']:.0f} s (bounded in count "
        "too), client and worker in one process, the server on the same machine; its CPU "
        "counts every process of it (from /proc). Ours: the probe of the rate search (300 "
        f"sagas in flight) and the CPU during it. Load average before the peers: {load}.",
        "",
        "| system | what its steps do | completed/s at saturation | CPU ms per completed "
        "saga | ours/peer, rate (above 1: ours faster) | ours/peer, CPU (below 1: ours "
        "cheaper) |",
        "|---|---|---:|---:|---:|---:|",
        f"| ours (Kafka, four agents, materializer, API, load generator) | real work: capacity "
        f"in PostgreSQL, payments in the sandbox gateway's ledger (PostgreSQL), e-mail records, "
        f"read model | {_n(ours_rate, 1)} "
        f"| {_n(ours_cpu, 1)} | 1 | 1 |",
    ]
    for row in block["rows"]:
        name = PEER_NAMES.get(row["peer"], row["peer"])
        if "unavailable" in row:
            lines.append(f"| {name} | not measured: {row['unavailable']} | - | - | - | - |")
            continue
        rate, cpu = row["completed_per_s"], row["cpu_ms_per_saga"]
        rate_ratio = f"{ours_rate / rate:.1f} x" if ours_rate and rate else "-"
        cpu_ratio = f"{ours_cpu / cpu['total']:.2f} x" if ours_cpu and cpu["total"] else "-"
        parts = ", ".join(f"{k} {v:,.1f}" for k, v in cpu.items() if k != "total")
        lines.append(
            f"| {name} ({row.get('server', '')}) | nothing (no I/O: favours the peer) "
            f"| {_n(rate, 1)} | {_n(cpu['total'], 1)} ({parts}) "
            f"| {rate_ratio} | {cpu_ratio} |"
        )
    return lines


def _target_rows(rows: list[dict[str, Any]]) -> list[str]:
    return [
        f"| {row['what']} | {row['measured']} | {row['target']} | {row['ratio']} "
        f"| {_verdict(row['met'])} |"
        for row in rows
    ]


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"# Benchmark {results['date']}{' (quick)' if results['quick'] else ''}",
        "",
        f"`{results['command']}` — {results['seconds']:.0f} s, every process and service on "
        f"one machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, "
        f"{m['os']}, Python {m['python']}; load average before the run "
        f"{' '.join(m['loadavg'] or ['?'])}, after {' '.join(m.get('loadavg_after') or ['?'])}.",
        "",
        "| target | measured | target | ratio | |",
        "|---|---:|---|---|---|",
    ]
    lines += _target_rows(targets(results))
    lines += [
        "",
        "The first round's targets, still measured:",
        "",
        "| target | measured | target | ratio | |",
        "|---|---:|---|---|---|",
    ]
    lines += _target_rows(earlier_targets(results))
    lines += ["", "## Reference measurements", "", "| what | result |", "|---|---:|"]
    materializer = results.get("materializer") or {}
    if materializer.get("events_per_s"):
        lines.append(
            f"| live materializer catching up on {materializer['events']:,} events "
            f"(published {materializer['publish_seconds']:.1f} s) "
            f"| {materializer['events_per_s']:,.0f} events/s |"
        )
    for r in results.get("raw_ceiling", []):
        lines.append(
            f"| raw consume→produce→commit, {r['client']} ({r['message_bytes']} B messages, "
            f"{r['messages']:,}) | {r['per_second']:,.0f} msg/s |"
        )
    codec = results.get("codec") or {}
    if codec:
        lines.append(
            f"| Avro encode+decode, fastavro (ours) vs avro | {codec['fastavro_events_per_s']:,} "
            f"vs {codec['avro_events_per_s']:,} /s ({codec['ratio']}x) |"
        )
    wire = codec.get("formats") or {}
    for key, label in (("single_object", "single-object"), ("confluent", "Confluent")):
        if key in wire:
            lines.append(
                f"| codec encode / decode, {label} wire format | "
                f"{wire[key]['encode_per_s']:,} / {wire[key]['decode_per_s']:,} /s |"
            )
    if "registry_requests_while_measuring" in wire:
        lines.append(
            "| Schema Registry requests while encoding and decoding (after warm-up) | "
            f"{wire['registry_requests_while_measuring']} |"
        )
    for part, key, label in (
        ("http", "trivial_closed", "trivial endpoint, max (closed loop)"),
        ("http", "api_closed", "POST /bookings, max (closed loop)"),
        ("http", "trivial_open_half", "trivial endpoint at 50%"),
        ("http", "api_open_half", "POST /bookings at 50%"),
        ("http_api_alone", "trivial_closed", "trivial endpoint, max, while the API runs alone"),
        ("http_api_alone", "api_closed", "POST /bookings, max, the API alone"),
        ("http_api_alone", "api_open_half", "POST /bookings at 50%, the API alone"),
    ):
        h = (results.get(part) or {}).get(key)
        if h:
            lat = h["latency_ms"]
            lines.append(
                f"| {label} | {h['requests_per_s']:,.0f} req/s, p50 {lat['p50_ms']:.1f} ms, "
                f"p99 {lat['p99_ms']:.1f} ms |"
            )
    saga = results.get("saga", {})
    if saga.get("steps"):
        lines += [
            "",
            "## Saga rate search (happy path via Kafka)",
            "",
            f"Probe (as fast as 300 sagas in flight allow): "
            f"{saga.get('probe_capacity_per_s', 0):,.0f} completed/s.",
            "",
            "| offered /s | sustained | completed /s | saga events /s | e2e p50 ms | "
            "e2e p99 ms | max lag | why |",
            "|---:|---|---:|---:|---:|---:|---:|---|",
        ]
        for s in saga["steps"]:
            lines.append(
                f"| {s['rate_per_s']:,.0f} | {'yes' if s['sustained'] else 'no'} "
                f"| {s['completed_per_s']:,.0f} | {s['saga_events_per_s']:,.0f} "
                f"| {s['e2e_p50_ms']:,.0f} | {s['e2e_p99_ms']:,.0f} | {s['max_consumer_lag']} "
                f"| {s['why']} |"
            )
    cpu = saga.get("cpu_ms_per_booking")
    if cpu:
        lines += [
            "",
            f"CPU per completed booking during the search: {cpu['total']:,.1f} ms in all, i.e. at "
            f"most {1000 * results['machine']['nproc'] / max(cpu['total'], 0.001):,.0f} "
            "bookings/s if every CPU did nothing else; by part (ms): "
            + ", ".join(f"{k} {v:,.1f}" for k, v in cpu.items() if k != "total")
            + ". Mean messages per agent transaction: "
            + (", ".join(f"{k} {v}" for k, v in saga.get("mean_batch", {}).items()) or "n/a")
            + ".",
        ]
    saturated = saga.get("cpu_ms_per_booking_saturated")
    if saturated:
        lines += [
            "",
            f"CPU per completed booking during the probe (saturated): "
            f"{saturated['total']:,.1f} ms; by part (ms): "
            + ", ".join(f"{k} {v:,.1f}" for k, v in saturated.items() if k != "total")
            + ".",
        ]
    lines += peers_table(results)
    half = saga.get("half_rate")
    if half:
        lines += [
            "",
            f"At 50% ({half['rate_per_s']:,.0f}/s): e2e p50 {half['e2e_p50_ms']:,.0f} ms, "
            f"p99 {half['e2e_p99_ms']:,.0f} ms; steps p50 (ms): "
            + ", ".join(f"{k} {v:,.0f}" for k, v in half["steps_p50_ms"].items())
            + f"; invariant violations: {half['violations']}.",
        ]
    lines += ["", "## Versions", ""]
    lines.append(", ".join(f"{k} {v}" for k, v in results["versions"].items()))
    notes = results.get("notes") or []
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
