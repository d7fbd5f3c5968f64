"""JSON logs, one object per line, for every runtime.

Fields given with ``extra=`` (``booking_id``, ``correlation_id``, ``request_id``...) become
top-level keys, so one booking can be followed across the API, the agents and the
materializer with a plain ``grep``. While tracing is on (``erynoa.tracing``), a line written
inside a span also carries its ``trace_id`` and ``span_id``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from erynoa import tracing

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        # The record is formatted in the thread (and context) that logged it: the current span
        # is the one the line was written in.
        entry.update(tracing.log_fields())
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(service: str, level: str = "INFO") -> None:
    """Send every logger's records to stderr as JSON lines tagged with ``service``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka logs every rebalance step at INFO; keep its warnings.
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    # httpx logs every request at INFO: the Schema Registry's start-up lookups, a webhook each.
    logging.getLogger("httpx").setLevel(logging.WARNING)
