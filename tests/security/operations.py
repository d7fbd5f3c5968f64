"""Every operation the API serves, read from the app's own OpenAPI document, so an attack test
that walks them covers a route added later without being edited (or fails, naming it)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from api.app import create_app
from erynoa.settings import Settings


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # with the /api/v1 prefix, as in the document
    path_params: tuple[str, ...]
    secured: bool  # it takes a bearer token
    body: dict[str, Any] | None  # the schema's first example; None: no body

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}"

    def url(self, **values: str) -> str:
        """The path under /api/v1 with its parameters filled in."""
        path = self.path.removeprefix("/api/v1")
        for name in self.path_params:
            path = path.replace("{" + name + "}", values[name])
        return path


def _example(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    for option in schema.get("anyOf", [schema]):
        ref = option.get("$ref")
        if ref is None:
            continue
        target = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
        examples = target.get("examples") or [{}]
        example: dict[str, Any] = copy.deepcopy(examples[0])
        return example
    given: dict[str, Any] = copy.deepcopy(schema.get("example", {}))
    return given


@lru_cache(maxsize=1)
def operations() -> tuple[Operation, ...]:
    # Building the app connects to nothing; its routes are the same as the live server's.
    doc = create_app(Settings(environment="test")).openapi()
    found: list[Operation] = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            body = op.get("requestBody")
            found.append(
                Operation(
                    method=method.upper(),
                    path=path,
                    path_params=tuple(
                        p["name"] for p in op.get("parameters", []) if p["in"] == "path"
                    ),
                    secured=bool(op.get("security")),
                    body=_example(doc, body["content"]["application/json"]["schema"])
                    if body
                    else None,
                )
            )
    return tuple(found)
