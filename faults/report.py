"""What one row measured, its verdict, and the matrix as JSON, a markdown table and a PNG.

A row passes when, once its fault has ended: the invariant checker finds nothing, no
acknowledged request lost its effect, no message was parked in a dead-letter topic, no
acknowledged booking still waits for an operator, every booking ended as its client intended,
and the bookings acknowledged before recovery settled within ``SETTLE_LIMIT_S`` of it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SETTLE_LIMIT_S = 60.0


@dataclass(frozen=True)
class Second:
    """One second of a row, counted from the row's start."""

    t_s: int
    acknowledged: int  # creates acknowledged
    refused: int  # clean 503/429 answers
    failed: int  # dropped connections, timeouts, other 5xx
    confirmed: int  # bookings first seen confirmed
    other_outcomes: int  # bookings first seen in another terminal status


@dataclass
class RowResult:
    name: str
    title: str
    skipped: str | None = None
    fault_start_s: float = 0.0
    fault_end_s: float = 0.0  # recovery: the fault ended and the broken part serves again
    load_end_s: float = 0.0
    finished_s: float = 0.0
    sent: int = 0
    acknowledged: dict[str, int] = field(default_factory=dict)  # create/accept/cancel
    refused: int = 0
    failed: int = 0
    abandoned: int = 0
    settled: int = 0
    as_expected: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)  # "booking: intended X, got Y"
    violations: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    parked: dict[str, int] = field(default_factory=dict)  # dead-letter topic -> messages
    needing_operator: list[str] = field(default_factory=list)
    recovery_to_settled_s: float | None = None
    restarts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    series: list[Second] = field(default_factory=list)

    @property
    def parked_total(self) -> int:
        return sum(self.parked.values())


def verdict(row: RowResult) -> list[str]:
    """What keeps the row from passing (empty: it passes; a skipped row has its reason)."""
    if row.skipped:
        return [row.skipped]
    problems = []
    if row.acknowledged.get("create", 0) == 0:
        problems.append("no booking was acknowledged")
    if row.violations:
        problems.append(f"{len(row.violations)} checker violations")
    if row.lost:
        problems.append(f"{len(row.lost)} acknowledged requests lost")
    if row.parked_total:
        problems.append(f"{row.parked_total} messages parked")
    if row.needing_operator:
        problems.append(f"{len(row.needing_operator)} sagas need an operator")
    if row.unexpected:
        problems.append(f"{len(row.unexpected)} bookings ended other than intended")
    if row.recovery_to_settled_s is None:
        if not row.needing_operator:
            problems.append("recovery to settled not measured")
    elif row.recovery_to_settled_s > SETTLE_LIMIT_S:
        problems.append(
            f"settled {row.recovery_to_settled_s:.0f} s after recovery (limit {SETTLE_LIMIT_S:.0f})"
        )
    return problems


def passed(row: RowResult) -> bool:
    return not row.skipped and not verdict(row)


def to_json(rows: list[RowResult], meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "meta": meta,
        "rows": [{**asdict(row), "verdict": verdict(row), "passed": passed(row)} for row in rows],
    }


def _cell(row: RowResult) -> list[str]:
    if row.skipped:
        return [row.name, "-", "-", "-", "-", "-", "-", "-", "-", row.skipped]
    acks = row.acknowledged
    acked = f"{acks.get('create', 0)}/{acks.get('accept', 0)}/{acks.get('cancel', 0)}"
    settled = "-" if row.recovery_to_settled_s is None else f"{row.recovery_to_settled_s:.1f}"
    problems = verdict(row)
    return [
        row.name,
        acked,
        str(row.refused),
        f"{row.as_expected}/{acks.get('create', 0)}",
        str(len(row.violations)),
        str(len(row.lost)),
        str(row.parked_total),
        str(len(row.needing_operator)),
        settled,
        "ok" if not problems else "FAIL: " + "; ".join(problems),
    ]


HEADER = [
    "row",
    "acked create/accept/cancel",
    "refused cleanly",
    "settled as intended",
    "violations",
    "lost",
    "parked",
    "need operator",
    "recovery→settled s",
    "verdict",
]


def markdown(rows: list[RowResult]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_cell(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def details(rows: list[RowResult], limit: int = 5) -> str:
    """The first few specifics of each failing row, for the markdown file and the console."""
    out = []
    for row in rows:
        if row.skipped or passed(row):
            continue
        out.append(f"### {row.name}: {row.title}")
        for label, items in (
            ("violations", row.violations),
            ("lost", row.lost),
            ("need an operator", row.needing_operator),
            ("ended other than intended", row.unexpected),
            ("notes", row.notes),
        ):
            if items:
                shown = "; ".join(items[:limit]) + (" …" if len(items) > limit else "")
                out.append(f"- {label} ({len(items)}): {shown}")
        if row.parked:
            out.append("- parked: " + ", ".join(f"{t} {n}" for t, n in row.parked.items()))
        if row.restarts:
            out.append("- restarts: " + ", ".join(f"{p} {n}" for p, n in row.restarts.items()))
        out.append("")
    return "\n".join(out)


def write(rows: list[RowResult], meta: dict[str, Any], stem: Path) -> list[Path]:
    """``<stem>.json``, ``<stem>.md`` and ``<stem>.png``; the paths written."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path = stem.with_suffix(".json")
    json_path.write_text(json.dumps(to_json(rows, meta), indent=2, default=str) + "\n")
    md_path = stem.with_suffix(".md")
    md_path.write_text(
        f"# Fault matrix {meta.get('date', '')}\n\n"
        + "".join(f"- {k}: {v}\n" for k, v in meta.items())
        + "\n"
        + markdown(rows)
        + "\n"
        + details(rows)
    )
    written = [json_path, md_path]
    if any(not row.skipped for row in rows):
        written.append(plot(rows, stem.with_suffix(".png")))
    return written


def plot(rows: list[RowResult], path: Path) -> Path:
    """Per row: acknowledged, refused and settled bookings per second, the fault shaded."""
    import matplotlib

    matplotlib.use("Agg")  # no display; chosen here so importing this module changes nothing
    import matplotlib.pyplot as plt

    shown = [row for row in rows if not row.skipped]
    fig, axes = plt.subplots(
        len(shown), 1, figsize=(10, 2.6 * len(shown)), squeeze=False, constrained_layout=True
    )
    for ax, row in zip(axes[:, 0], shown, strict=True):
        t = [s.t_s for s in row.series]
        ax.axvspan(row.fault_start_s, row.fault_end_s, color="tab:red", alpha=0.15, label="fault")
        ax.axvline(row.load_end_s, color="grey", linestyle=":", linewidth=1)
        ax.plot(
            t, [s.acknowledged for s in row.series], label="acknowledged /s", drawstyle="steps-post"
        )
        ax.plot(t, [s.refused for s in row.series], label="refused /s", drawstyle="steps-post")
        ax.plot(t, [s.confirmed for s in row.series], label="confirmed /s", drawstyle="steps-post")
        ax.plot(
            t,
            [s.other_outcomes for s in row.series],
            label="other outcome /s",
            drawstyle="steps-post",
        )
        mark = "ok" if passed(row) else "FAIL"
        ax.set_title(f"{row.name}: {row.title} [{mark}]", fontsize=10)
        ax.set_ylabel("per second")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=7)
    axes[-1, 0].set_xlabel("seconds since the row started (dotted: load stopped)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
