"""Operations' results as JSON values, for ``--json``, the admin API and the console.

``pydantic_core`` turns dataclasses, enums, datetimes and bytes (hex) into JSON values and
durations into seconds. An event also carries its ``event_type`` and a saga action its
``action`` name: a dataclass's fields alone do not say which one it is.
"""

from __future__ import annotations

from typing import Any

from pydantic_core import to_jsonable_python

from erynoa import events as ev
from erynoa.saga import Action


def plain(value: Any) -> Any:
    return to_jsonable_python(value, timedelta_mode="float", bytes_mode="hex")


def event_json(event: ev.Event | None) -> dict[str, Any] | None:
    if event is None:
        return None
    return {"event_type": event.event_type, **plain(event)}


def action_json(action: Action | None) -> dict[str, Any] | None:
    if action is None:
        return None
    return {"action": type(action).__name__, **plain(action)}
