"""Times and durations as operators type them: ``2026-01-28T10:00:00Z``, or ``90s``, ``15m``,
``2h``, ``7d`` (ago)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from erynoa.topics import parse_duration_ms
from ops.errors import BadInput


def parse_time(text: str) -> datetime | None:
    """An ISO 8601 time (naive means UTC; ``Z`` accepted), or None if ``text`` is not one."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def parse_when(text: str, now: datetime) -> datetime:
    """An ISO 8601 time (naive means UTC) or a relative one: ``90s``, ``15m``, ``2h``, ``7d``
    ago."""
    text = text.strip()
    try:
        ago = parse_duration_ms(text)
    except ValueError:
        ago = None
    if ago is not None and ago >= 0:
        return now - timedelta(milliseconds=ago)
    when = parse_time(text)
    if when is None:
        raise BadInput(
            f"{text!r} is neither an ISO time (2026-01-28T10:00:00Z) nor a duration ago "
            "(90s, 15m, 2h, 7d)"
        )
    return when


def parse_age(text: str) -> timedelta:
    """A duration like ``10m`` (``erynoa saga ls --older-than``)."""
    try:
        ms = parse_duration_ms(text.strip())
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    if ms < 0:
        raise BadInput(f"{text!r}: a duration like 90s, 10m, 2h or 7d")
    return timedelta(milliseconds=ms)
