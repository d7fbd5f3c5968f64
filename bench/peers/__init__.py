"""Peers: the same happy-path booking saga on other durable-execution systems, measured like ours.

Each peer runs the seven steps of our happy path, one durable step each, in order:

    reserve → authorize → notify provider → provider accepts → capture → convert hold
    → notify customer

Its steps do no I/O (no Stripe, no e-mail, no capacity check): that favours the peer, whose
cost is then only its own machinery. Each peer runs in a process of its own
(``python -m bench.peers.<peer>_saga``: client and worker together), drives a closed loop of
sagas bounded in count and time, and prints one JSON line: completed sagas/s and the CPU each
of its processes spent per completed saga (the server too, from ``/proc``). ``measure`` runs
them one after the other for ``bench/run.py``; a peer that cannot be had becomes a row saying why.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import cpu

STEPS = (
    "reserve",
    "authorize",
    "notify_provider",
    "provider_accepts",
    "capture",
    "convert_hold",
    "notify_customer",
)
ROOT = Path(__file__).resolve().parent.parent.parent
# Peers in the order they run (each module is ``bench.peers.<name>_saga``) and the Python
# package each needs, from the ``peers`` extra.
PEERS = {"temporal": "temporalio", "dbos": "dbos", "restate": "restate"}
# PostgreSQL's own processes that every database's writes pass through.
_POSTGRES_SHARED = ("walwriter", "checkpointer", "background")


@dataclass
class LoopResult:
    completed: int
    wrong: int
    # From the first start to the last completion: a saturated server works off the loop's
    # last sagas at its full rate, so completed / seconds is its rate, drain included.
    seconds: float


async def closed_loop(
    saga: Callable[[str], Awaitable[list[str]]],
    *,
    concurrency: int,
    max_sagas: int,
    seconds: float,
    prefix: str,
) -> LoopResult:
    """Run sagas ``concurrency`` at a time until ``max_sagas`` started or ``seconds`` passed,
    then let the open ones finish. A saga whose steps differ from ``STEPS`` counts as wrong."""
    started = completed = wrong = 0
    begun = time.monotonic()
    deadline = begun + seconds

    async def lane() -> None:
        nonlocal started, completed, wrong
        while started < max_sagas and time.monotonic() < deadline:
            started += 1
            steps = await saga(f"{prefix}-{started}")
            if tuple(steps) == STEPS:
                completed += 1
            else:
                wrong += 1

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return LoopResult(completed, wrong, time.monotonic() - begun)


def cpu_by_part(parts: dict[str, Callable[[int, str], bool]]) -> dict[str, float]:
    """CPU seconds used so far by the processes each predicate (pid, command line) picks."""
    used = dict.fromkeys(parts, 0.0)
    for pid, cmdline, seconds in cpu.processes():
        for part, picks in parts.items():
            if picks(pid, cmdline):
                used[part] += seconds
                break
    return used


def this_process(pid: int, _cmdline: str) -> bool:
    return pid == os.getpid()


def postgres_of(database: str) -> Callable[[int, str], bool]:
    """PostgreSQL's backends serving ``database``, and the processes all writes go through."""

    def picks(_pid: int, cmdline: str) -> bool:
        if not cmdline.startswith("postgres: "):
            return False
        words = cmdline.split()
        return (len(words) > 2 and words[2] == database) or words[1] in _POSTGRES_SHARED

    return picks


async def loop_report(
    peer: str,
    saga: Callable[[str], Awaitable[list[str]]],
    args: argparse.Namespace,
    parts: dict[str, Callable[[int, str], bool]],
    server: str,
) -> int:
    """Run the closed loop the command line asks for and print the peer's one JSON line: its
    rate and CPU per completed saga by part (``parts``), and ``server``, what it ran on. A short
    loop first warms up connections, caches and the engine's code paths outside the
    measurement."""
    prefix = uuid.uuid4().hex[:8]
    await closed_loop(
        saga, concurrency=min(args.concurrency, 20), max_sagas=40, seconds=5, prefix=f"w{prefix}"
    )
    before = cpu_by_part(parts)
    loop = await closed_loop(
        saga,
        concurrency=args.concurrency,
        max_sagas=args.max_sagas,
        seconds=args.seconds,
        prefix=prefix,
    )
    row = {
        "peer": peer,
        "completed": loop.completed,
        "wrong": loop.wrong,
        "seconds": round(loop.seconds, 2),
        "completed_per_s": round(loop.completed / loop.seconds, 1) if loop.seconds else 0.0,
        "cpu_ms_per_saga": cpu.per_completed_ms(before, cpu_by_part(parts), loop.completed),
        "concurrency": args.concurrency,
        "server": server,
    }
    print(json.dumps(row), flush=True)
    return 0


def measure(
    database_url: str,
    *,
    seconds: float,
    concurrency: int,
    log: Callable[[str], None],
    peers: Iterable[str] = tuple(PEERS),
) -> list[dict[str, Any]]:
    """Each peer in turn, in a process of its own: its report, or ``{"peer", "unavailable"}``."""
    rows: list[dict[str, Any]] = []
    for peer in peers:
        if importlib.util.find_spec(PEERS[peer]) is None:
            why = f"the Python package {PEERS[peer]} is missing: pip install -e '.[peers]'"
            rows.append({"peer": peer, "unavailable": why})
            log(f"peers: {peer} unavailable: {why}")
            continue
        log(f"peers: {peer}, {concurrency} sagas in flight for {seconds:.0f} s")
        argv = [
            sys.executable, "-m", f"bench.peers.{peer}_saga",
            "--seconds", str(seconds),
            "--concurrency", str(concurrency),
            "--database-url", database_url,
        ]  # fmt: skip
        try:
            done = subprocess.run(
                argv, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 600, check=False
            )
        except subprocess.TimeoutExpired:
            rows.append({"peer": peer, "unavailable": f"did not finish in {seconds + 600:.0f} s"})
            continue
        row = _last_json(done.stdout)
        if row is None:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            row = {"peer": peer, "unavailable": f"exit {done.returncode}: {tail[:300]}"}
        rows.append(row)
        if "unavailable" in row:
            log(f"peers: {peer} unavailable: {row['unavailable']}")
        else:
            log(
                f"peers: {peer} {row['completed_per_s']:,.1f} sagas/s, "
                f"{row['cpu_ms_per_saga']['total']:,.1f} ms CPU per saga"
            )
    return rows


def _last_json(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                found: dict[str, Any] = json.loads(line)
            except ValueError:
                return None
            return found
    return None


def arguments(description: str, database: str = "") -> argparse.Namespace:
    """The command line every peer's process takes (``database``: the default of
    ``--database``, the peer's own database on the server, for a peer that keeps one)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to start sagas")
    parser.add_argument("--concurrency", type=int, default=100, help="sagas in flight")
    parser.add_argument("--max-sagas", type=int, default=50_000, help="at most this many")
    parser.add_argument(
        "--database-url", default="", help="the PostgreSQL server, for a peer that needs one"
    )
    if database:
        parser.add_argument("--database", default=database, help="its own database's name")
    parser.add_argument(
        "--one",
        metavar="BOOKING_ID",
        help="run this one booking's saga and print the steps it ran, instead of the loop",
    )
    args = parser.parse_args()
    if args.seconds <= 0 or args.concurrency <= 0 or args.max_sagas <= 0:
        parser.error("--seconds, --concurrency and --max-sagas must be positive")
    return args


def run_installer(
    what: str, argv: list[str], log_path: Path, timeout_s: float, env: dict[str, str] | None = None
) -> str | None:
    """Run the command ``what`` (``argv``) that installs a peer's server, its output appended to
    ``log_path``; None when it succeeded, else why not."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        try:
            code = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, timeout=timeout_s, check=False,
            ).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            return f"{what} took over {timeout_s:.0f} s (see {log_path})"
    if code != 0:
        return f"{what} failed (exit {code}; see {log_path})"
    return None


# The steps in the order their code ran in this process (``--one``): what a peer's saga did,
# apart from what its workflow returned and what its engine recorded.
EXECUTED: list[str] = []


def one_report(peer: str, returned: list[str], recorded: list[str]) -> int:
    """Print what one saga did (``--one``): returned, executed and recorded steps."""
    row = {"peer": peer, "returned": returned, "executed": EXECUTED, "recorded": recorded}
    print(json.dumps(row), flush=True)
    return 0


def unavailable(peer: str, why: str) -> int:
    """Say on stdout (the report's line) why a peer cannot run here; exit status 0."""
    print(json.dumps({"peer": peer, "unavailable": why}), flush=True)
    return 0
