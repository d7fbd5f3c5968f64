"""The seed's three response shapes, and the one error type every route raises.

* success: ``{"data": ..., "meta": {"timestamp", "request_id"}}`` (lists add ``page``,
  ``per_page`` and ``total`` to ``meta``);
* accepted: ``202`` with ``{"status": "processing", "workflow_id", "poll_url",
  "estimated_completion"}`` plus ``Location`` and ``Retry-After`` headers;
* error: ``{"error": {"code", "message", "details", "request_id"}}`` for every failure,
  whether raised by a route (``ApiError``), by FastAPI's validation, by Starlette's router
  (404/405) or by a bug (500) — ``install_error_handlers`` makes sure of that.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Generic, Literal, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

T = TypeVar("T")

log = logging.getLogger("erynoa.api")

# Error codes a client can switch on (upper snake case, as in the seed's example).
_CODE_OF_STATUS: dict[int, str] = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    406: "NOT_ACCEPTABLE",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "VALIDATION_ERROR",
    429: "RATE_LIMITED",
    500: "INTERNAL_ERROR",
    503: "SERVICE_UNAVAILABLE",
}


def code_for_status(status: int) -> str:
    return _CODE_OF_STATUS.get(status, HTTPStatus(status).phrase.upper().replace(" ", "_"))


class ApiError(Exception):
    """A failure to report to the client with the error envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        details: Sequence[Mapping[str, Any]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or code_for_status(status)
        self.message = message
        self.details = [dict(d) for d in details]
        self.headers = dict(headers or {})

    def response(self, request_id: str) -> JSONResponse:
        """The error envelope the client gets for this failure."""
        body = ErrorEnvelope(
            error=ErrorBody(
                code=self.code, message=self.message, details=self.details, request_id=request_id
            )
        )
        return JSONResponse(
            status_code=self.status, content=body.model_dump(mode="json"), headers=self.headers
        )


def unauthorized(message: str = "a valid bearer token is required") -> ApiError:
    return ApiError(401, message, headers={"WWW-Authenticate": 'Bearer realm="erynoa"'})


def forbidden(message: str) -> ApiError:
    return ApiError(403, message)


def not_found(what: str) -> ApiError:
    return ApiError(404, f"{what} not found")


def conflict(message: str, *, code: str = "CONFLICT", **details: Any) -> ApiError:
    return ApiError(409, message, code=code, details=[details] if details else ())


def log_unavailable(component: str, error: object, request_id: str | None = None) -> None:
    """Log why a dependency failed. The text names hosts, ports and drivers, so it goes to
    operators only: a response names the component and nothing more."""
    log.warning(
        "%s unavailable",
        component,
        extra={
            "component": component,
            "error": str(error) or type(error).__name__,
            "request_id": request_id,
        },
    )


def unavailable(component: str, error: object) -> ApiError:
    """503 for a failure known to have changed nothing (before any write, or rolled back)."""
    log_unavailable(component, error)
    return ApiError(
        503,
        f"{component} is unavailable; nothing was changed, try again",
        details=[{"component": component}],
        headers={"Retry-After": "2"},
    )


def outcome_unknown(component: str, error: object, what: str, **details: Any) -> ApiError:
    """503 for a write whose COMMIT may or may not have happened (the connection was lost
    while it was under way): ``what`` tells the client how to find out or retry safely."""
    log_unavailable(component, error)
    return ApiError(
        503,
        f"{component} failed while the change was being committed; it may have taken effect: "
        f"{what}",
        code="OUTCOME_UNKNOWN",
        details=[{"component": component, **details}],
        headers={"Retry-After": "2"},
    )


# --- the shapes, as pydantic models (they document the OpenAPI schema too) -----------------


class Meta(BaseModel):
    timestamp: datetime = Field(examples=["2026-01-28T10:00:00Z"])
    request_id: str = Field(examples=["req_6f1c0b8e3c575a0e9d554a1e2b7c9f10"])


class PageMeta(Meta):
    page: int = Field(ge=1, examples=[1])
    per_page: int = Field(ge=1, examples=[20])
    total: int = Field(ge=0, examples=[42])
    total_capped: bool = Field(
        default=False,
        description="counting stopped at a cap: ``total`` is a lower bound (show it as 10,000+)",
        examples=[False],
    )


class Envelope(BaseModel, Generic[T]):
    data: T
    meta: Meta


class Page(BaseModel, Generic[T]):
    data: list[T]
    meta: PageMeta


class Accepted(BaseModel):
    """The seed's asynchronous answer: the work was accepted, poll ``poll_url`` for its outcome."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "processing",
                    "workflow_id": "0b5c1d2e-8f3a-4c6b-9d7e-1f2a3b4c5d6e",
                    "poll_url": "/api/v1/bookings/0b5c1d2e-8f3a-4c6b-9d7e-1f2a3b4c5d6e",
                    "estimated_completion": "2026-01-28T10:05:00Z",
                }
            ]
        }
    )

    status: Literal["processing"] = "processing"
    workflow_id: str = Field(description="the booking's id: its saga is the workflow")
    poll_url: str = Field(description="GET it until the booking's status is an outcome")
    estimated_completion: datetime = Field(
        description="when the outcome is due at the latest (a new booking: its provider's "
        "response deadline; an answer or cancel: within seconds)"
    )


class ErrorBody(BaseModel):
    code: str = Field(examples=["VALIDATION_ERROR"])
    message: str = Field(examples=["Invalid input"])
    details: list[dict[str, Any]] = Field(
        default_factory=list,
        examples=[[{"field": "body.slot_start", "message": "must be in the future"}]],
    )
    request_id: str = Field(examples=["req_6f1c0b8e3c575a0e9d554a1e2b7c9f10"])


class ErrorEnvelope(BaseModel):
    error: ErrorBody


# --- building responses --------------------------------------------------------------------


def request_id_of(request: Request) -> str:
    """The id the request-context middleware gave this request (or a fresh one, outside it)."""
    rid = getattr(request.state, "request_id", None)
    if isinstance(rid, str):
        return rid
    return new_request_id()


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def utcnow() -> datetime:
    return datetime.now(UTC)


def meta(request: Request) -> Meta:
    return Meta(timestamp=utcnow(), request_id=request_id_of(request))


def ok(request: Request, data: T) -> Envelope[T]:
    return Envelope[T](data=data, meta=meta(request))


def page(
    request: Request,
    items: list[T],
    *,
    page: int,
    per_page: int,
    total: int,
    total_capped: bool = False,
) -> Page[T]:
    return Page[T](
        data=items,
        meta=PageMeta(
            timestamp=utcnow(),
            request_id=request_id_of(request),
            page=page,
            per_page=per_page,
            total=total,
            total_capped=total_capped,
        ),
    )


def accepted(poll_path: str, workflow_id: str, estimated_completion: datetime) -> JSONResponse:
    """``202`` with the seed's body, ``Location`` (where to poll) and ``Retry-After`` (when)."""
    body = Accepted(
        workflow_id=workflow_id,
        poll_url=poll_path,
        estimated_completion=estimated_completion.astimezone(UTC),
    )
    return JSONResponse(
        status_code=202,
        content=body.model_dump(mode="json"),
        headers={"Location": poll_path, "Retry-After": "1"},
    )


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Never echo the rejected input back: it may be a secret or not JSON-serializable.
    return [
        {
            "field": ".".join(str(part) for part in err.get("loc", ())),
            "message": str(err.get("msg", "invalid")),
            "type": str(err.get("type", "value_error")),
        }
        for err in exc.errors()
    ]


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return exc.response(request_id_of(request))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    return ApiError(exc.status_code, detail, headers=exc.headers).response(request_id_of(request))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    invalid = ApiError(422, "Invalid input", details=_validation_details(exc))
    return invalid.response(request_id_of(request))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error", exc_info=exc, extra={"request_id": request_id_of(request)})
    return ApiError(500, "internal error; it has been logged").response(request_id_of(request))


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as the error envelope, whatever raised it."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)


# --- OpenAPI: the error responses a route documents ----------------------------------------

_ERROR_EXAMPLES: dict[int, str] = {
    400: "the request could not be understood",
    401: "a valid bearer token is required",
    403: "this needs the role provider",
    404: "booking not found",
    409: "the booking is not awaiting the provider's answer",
    413: "the request body exceeds 65536 bytes",
    415: "the request body must be application/json",
    422: "Invalid input",
    429: "too many requests; retry after 12 seconds",
    500: "internal error; it has been logged",
    503: "postgres is unavailable; nothing was changed, try again",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries (with an example each) for the given error statuses.

    A status is declared once where it arises: 422 and 500 on the app (every route), 429 where
    the address limit is mounted, what a router's routes all share on the router, and the
    rest on the route."""
    return {
        status: {
            "model": ErrorEnvelope,
            "description": HTTPStatus(status).phrase,
            "content": {
                "application/json": {
                    "example": {
                        "error": {
                            "code": code_for_status(status),
                            "message": _ERROR_EXAMPLES.get(status, HTTPStatus(status).phrase),
                            "details": [],
                            "request_id": "req_6f1c0b8e3c575a0e9d554a1e2b7c9f10",
                        }
                    }
                }
            },
        }
        for status in statuses
    }


ACCEPTED_RESPONSE: dict[int | str, dict[str, Any]] = {
    202: {
        "model": Accepted,
        "description": "Accepted: poll `poll_url` (also in `Location`) for the outcome",
        "headers": {
            "Location": {"description": "where to poll", "schema": {"type": "string"}},
            "Retry-After": {"description": "seconds until a poll", "schema": {"type": "integer"}},
        },
    }
}
