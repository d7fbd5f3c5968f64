"""How many messages the saga publishes per distinct event: start the system, run the happy path
at a fixed rate, let it drain, then compare each booking topic's end offsets with the distinct
events the read model stored from it.

    .venv/bin/python bench/duplicate_messages.py                   # 100 bookings at 10/s
    .venv/bin/python bench/duplicate_messages.py --rate 20 --seconds 30

Every consumer deduplicates on ``event_id``, so a duplicate costs work, not correctness. The stack
must be up (``make stack``). Prints one JSON line per topic and one for the whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

from bench import saga_load  # noqa: E402
from erynoa.kafka import end_offsets  # noqa: E402
from erynoa.settings import Settings  # noqa: E402
from loadgen.engine import check_loopback  # noqa: E402
from loadgen.system import LocalSystem  # noqa: E402

DRAIN_S = 60.0


async def _measure(system: LocalSystem, rate: float, seconds: float) -> list[dict[str, object]]:
    await saga_load.wait_idle(system.settings, system.catalog, DRAIN_S)
    await saga_load.step(system.settings, rate, seconds)
    left = await saga_load.wait_idle(system.settings, system.catalog, DRAIN_S)
    if left:
        raise SystemExit(f"the system did not drain within {DRAIN_S:.0f} s ({left} left)")
    names = [
        system.catalog.topics[n].name for n in system.catalog.consumer("materializer").consumes
    ]
    messages: dict[str, int] = {}
    for partition, end in (await end_offsets(system.settings.kafka_bootstrap, names)).items():
        messages[partition.topic] = messages.get(partition.topic, 0) + end
    conn = await asyncpg.connect(system.settings.database_url)
    try:
        rows = await conn.fetch("SELECT topic, count(*) AS n FROM booking_events GROUP BY topic")
    finally:
        await conn.close()
    stored = {r["topic"]: int(r["n"]) for r in rows}
    lines: list[dict[str, object]] = []
    for topic in sorted(messages):
        if messages[topic]:
            lines.append(
                {"topic": topic, "messages": messages[topic], "events": stored.get(topic, 0)}
            )
    total_messages = sum(int(str(line["messages"])) for line in lines)
    total_events = sum(int(str(line["events"])) for line in lines)
    lines.append(
        {
            "run": f"{rate:g}/s for {seconds:g} s",
            "messages": total_messages,
            "events": total_events,
            "duplicates": total_messages - total_events,
        }
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=10.0, help="bookings per second (> 0)")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to send (> 0)")
    args = parser.parse_args()
    if args.rate <= 0 or args.seconds <= 0:
        parser.error("--rate and --seconds must be greater than 0")
    settings = Settings()
    check_loopback(settings.public_base_url, settings.kafka_bootstrap, settings.database_url)
    with LocalSystem(settings, Path(tempfile.mkdtemp(prefix="erynoa-dups-"))) as system:
        for line in asyncio.run(_measure(system, args.rate, args.seconds)):
            print(json.dumps(line))


if __name__ == "__main__":
    main()
