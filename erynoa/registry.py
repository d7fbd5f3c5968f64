"""A small client of a Confluent-compatible Schema Registry API (Apicurio's ``/apis/ccompat/v7``).

Only what the codec and ``erynoa schemas`` need: look up or register a schema under a subject,
fetch a schema by id, test a schema's compatibility, set a subject's compatibility level.
Subjects follow the TopicRecordNameStrategy, ``<topic>-<record full name>``, because one topic
carries several event types.

The codec asks it only when it starts and when it meets a schema id it has not seen; every
answer is cached there, so the hot path never waits on the registry. ``transport`` lets tests
count the requests that reach it (an ``httpx.MockTransport`` in front of a real one).

    registry = SchemaRegistry("http://127.0.0.1:18081/apis/ccompat/v7")
    schema_id = registry.register("booking.reservations-erynoa.booking.ReservationHeld", text)
"""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx

__all__ = [
    "Compatibility",
    "RegistryError",
    "RegistryUnavailable",
    "SchemaRegistry",
    "subject_name",
]

Compatibility = Literal[
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
    "NONE",
]
_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
# Confluent's error codes for "no such subject", "no such version" and "no such schema".
_NOT_FOUND_CODES = {40401, 40402, 40403}


class RegistryUnavailable(ConnectionError):
    """The registry did not answer (refused, timed out, or a 5xx): an outage, worth retrying."""


class RegistryError(ValueError):
    """The registry answered with a refusal (bad schema, incompatible, forbidden)."""

    def __init__(self, message: str, status: int, error_code: int | None) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code


def subject_name(topic: str, record_full_name: str) -> str:
    """The TopicRecordNameStrategy subject: ``<topic>-<namespace>.<record name>``."""
    return f"{topic}-{record_full_name}"


class SchemaRegistry:
    """Blocking calls to one registry; each raises ``RegistryUnavailable`` or ``RegistryError``."""

    def __init__(
        self,
        url: str,
        timeout: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            transport=transport,
            headers={"Accept": _CONTENT_TYPE, "Content-Type": _CONTENT_TYPE},
        )

    def close(self) -> None:
        self._client.close()

    def lookup(self, subject: str, schema: str) -> int | None:
        """The id of ``schema`` if it is registered under ``subject``, else None."""
        found = self._call("POST", f"/subjects/{subject}", {"schema": schema}, missing_ok=True)
        return None if found is None else int(found["id"])

    def register(self, subject: str, schema: str) -> int:
        """Register ``schema`` under ``subject`` (a no-op when it is there); its id.
        Refused (``RegistryError``) when it breaks the subject's compatibility level."""
        answer = self._call("POST", f"/subjects/{subject}/versions", {"schema": schema})
        assert answer is not None
        return int(answer["id"])

    def schema_by_id(self, schema_id: int) -> str | None:
        """The schema text registered with ``schema_id``, None if there is none."""
        found = self._call("GET", f"/schemas/ids/{schema_id}", missing_ok=True)
        return None if found is None else str(found["schema"])

    def versions(self, subject: str) -> list[int]:
        """The versions registered under ``subject``, oldest first; empty for an unknown one.
        Asked per subject: a registry lists all its subjects only up to a limit of its own."""
        answer = self._call("GET", f"/subjects/{subject}/versions", missing_ok=True)
        return sorted(int(v) for v in answer) if isinstance(answer, list) else []

    def compatibility_problems(self, subject: str, schema: str) -> list[str] | None:
        """None if ``schema`` may be registered next under ``subject`` (or the subject is new);
        else what the registry says is wrong (possibly nothing more than "incompatible")."""
        answer = self._call(
            "POST",
            f"/compatibility/subjects/{subject}/versions/latest?verbose=true",
            {"schema": schema},
            missing_ok=True,
        )
        if answer is None or answer.get("is_compatible", False):
            return None
        messages = answer.get("messages") or []
        return [str(m) for m in messages] or ["incompatible with the latest registered version"]

    def set_compatibility(self, level: Compatibility, subject: str | None = None) -> None:
        """Set ``subject``'s compatibility level (the registry-wide default when None)."""
        self._call("PUT", "/config" + (f"/{subject}" if subject else ""), {"compatibility": level})

    def compatibility(self, subject: str | None = None) -> str | None:
        """The level that holds for ``subject`` (the registry-wide default when None)."""
        path = "/config" + (f"/{subject}" if subject else "")
        answer = self._call("GET", path, missing_ok=True)
        return None if answer is None else str(answer.get("compatibilityLevel"))

    def _call(
        self, method: str, path: str, body: object = None, *, missing_ok: bool = False
    ) -> Any:
        try:
            response = self._client.request(
                method, path, content=None if body is None else json.dumps(body)
            )
        except httpx.HTTPError as exc:
            raise RegistryUnavailable(
                f"schema registry {self.url} unreachable: {type(exc).__name__}: {exc}"
            ) from exc
        if response.status_code >= 500:
            raise RegistryUnavailable(
                f"schema registry {self.url} answered {response.status_code} to {method} "
                f"{path}: {response.text[:300]}"
            )
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code == 404 and missing_ok:
            code = answer.get("error_code") if isinstance(answer, dict) else None
            if code in _NOT_FOUND_CODES:
                return None
        if response.status_code >= 400:
            code = answer.get("error_code") if isinstance(answer, dict) else None
            message = answer.get("message") if isinstance(answer, dict) else response.text
            raise RegistryError(
                f"schema registry refused {method} {path}: {response.status_code} "
                f"{message or ''}".strip(),
                response.status_code,
                code if isinstance(code, int) else None,
            )
        return answer
