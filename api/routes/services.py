"""The service catalog: public reads; providers create, change and deactivate their own.

Every change is also published as ``ServiceChanged`` (the full current state, on the compacted
``catalog-services`` topic keyed by service id) for other systems. The event is sent inside the
database transaction and the transaction commits only after Kafka acknowledged it: a failed
publish rolls the change back, so the table and the topic never disagree. (A commit that fails
after the acknowledgement leaves an event for a change that did not happen; the next change of
that service supersedes it on the compacted topic.)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from api.auth import Principal
from api.deps import Context, Db, ProviderUser, Publisher, RuntimeDep
from api.envelopes import Envelope, Page, errors, forbidden, not_found, ok
from api.readmodel import Listing
from api.runtime import EventContext, KafkaLink, ServiceTermsCache
from api.schemas import MAX_AMOUNT_MINOR, Body, Currency, Description, Money, Name, Paging
from erynoa import events as ev

# Every route reads PostgreSQL (503).
router = APIRouter(prefix="/services", tags=["services"], responses=errors(503))

MAX_DURATION_MINUTES = 7 * 24 * 60
MAX_RESPONSE_DEADLINE_SECONDS = 30 * 24 * 3600

_SERVICE_IN_EXAMPLE: dict[str, Any] = {
    "name": "Haircut",
    "description": "Wash, cut and style.",
    "price": {"amount": 4500, "currency": "EUR"},
    "duration_minutes": 45,
    "capacity_per_slot": 1,
    "response_deadline_seconds": 86400,
}
_SERVICE_EXAMPLE: dict[str, Any] = {
    "id": "5e3f2a4b-7c1d-4e8f-9a0b-1c2d3e4f5a6b",
    "provider_id": "bob",
    **_SERVICE_IN_EXAMPLE,
    "active": True,
    "version": 1,
    "created_at": "2026-01-28T10:00:00Z",
    "updated_at": "2026-01-28T10:00:00Z",
}


class Service(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_SERVICE_EXAMPLE]})

    id: uuid.UUID
    provider_id: str
    name: str
    description: str
    price: Money
    duration_minutes: int
    capacity_per_slot: int
    response_deadline_seconds: int
    active: bool
    version: int
    created_at: datetime
    updated_at: datetime


class ServiceIn(Body):
    """A service as its provider describes it."""

    model_config = ConfigDict(json_schema_extra={"examples": [_SERVICE_IN_EXAMPLE]})

    name: Name
    description: Description = ""
    price: Money
    duration_minutes: StrictInt = Field(ge=1, le=MAX_DURATION_MINUTES)
    capacity_per_slot: StrictInt = Field(ge=1, le=10_000)
    response_deadline_seconds: StrictInt = Field(
        ge=60,
        le=MAX_RESPONSE_DEADLINE_SECONDS,
        description="how long the provider has to accept or reject a booking",
    )


class ServiceUpdate(ServiceIn):
    """The whole service (PUT replaces it); ``active`` left out keeps the current value."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{**_SERVICE_IN_EXAMPLE, "active": True}]}
    )

    active: StrictBool | None = None


# The columns a provider sets, and their values from a request, in the same order.
_TERM_COLUMNS = (
    "name, description, price_amount_minor, price_currency, duration_minutes, "
    "capacity_per_slot, response_deadline_seconds"
)
_COLUMNS = f"id, provider_id, {_TERM_COLUMNS}, active, version, created_at, updated_at"


def _term_values(body: ServiceIn) -> tuple[object, ...]:
    return (
        body.name,
        body.description,
        body.price.amount,
        body.price.currency,
        body.duration_minutes,
        body.capacity_per_slot,
        body.response_deadline_seconds,
    )


def _service(row: asyncpg.Record) -> Service:
    # The columns carry the fields' names, but for the price's two.
    price = Money(amount=row["price_amount_minor"], currency=row["price_currency"].strip())
    return Service.model_validate({**row, "price": price})


_LISTING = Listing(_service, _COLUMNS, "services", order_by="created_at DESC, id")


async def _publish_change(kafka: KafkaLink, service: Service, ctx: EventContext) -> None:
    # The id is derived from (service, version): a retried publish of the same change is
    # recognisably the same event.
    event = ev.make_catalog(
        ev.ServiceChanged,
        service_id=str(service.id),
        producer="api",
        event_id=ev.derived_event_id(str(service.id), f"service-changed.v{service.version}"),
        correlation_id=ctx.request_id,
        provider_id=service.provider_id,
        name=service.name,
        description=service.description,
        price=ev.Money(service.price.amount, service.price.currency),
        duration_minutes=service.duration_minutes,
        capacity_per_slot=service.capacity_per_slot,
        response_deadline_seconds=service.response_deadline_seconds,
        active=service.active,
    )
    await kafka.publish(event, ctx)


@dataclass(frozen=True)
class ServiceChange:
    """What changing one service needs: the service, who asks, where the change is written
    and published, and this process's cache of service terms."""

    service_id: uuid.UUID
    user: Principal
    conn: asyncpg.Connection
    kafka: KafkaLink
    ctx: EventContext
    terms_cache: ServiceTermsCache

    async def owned_row(self) -> asyncpg.Record:
        """The service's row, locked for the change; 404 if there is none, 403 unless the
        caller is its provider or an admin."""
        row: asyncpg.Record | None = await self.conn.fetchrow(
            f"SELECT {_COLUMNS} FROM services WHERE id = $1 FOR UPDATE", self.service_id
        )
        if row is None:
            raise not_found("service")
        if row["provider_id"] != self.user.sub and not self.user.is_admin:
            raise forbidden("only the service's provider may change it")
        return row

    async def published(self, row: asyncpg.Record) -> Service:
        """The changed service, published (inside the change's transaction)."""
        service = _service(row)
        await _publish_change(self.kafka, service, self.ctx)
        return service


async def _service_change(
    service_id: uuid.UUID,
    user: ProviderUser,
    conn: Db,
    kafka: Publisher,
    ctx: Context,
    runtime: RuntimeDep,
) -> ServiceChange:
    return ServiceChange(service_id, user, conn, kafka, ctx, runtime.services)


ChangeRequest = Annotated[ServiceChange, Depends(_service_change)]


@router.get("", response_model=Page[Service])
async def list_services(
    request: Request,
    conn: Db,
    paging: Paging,
    provider_id: Annotated[
        str | None, Query(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f]+$")
    ] = None,
    q: Annotated[
        str | None,
        Query(min_length=1, max_length=200, pattern=r"^[^\x00]+$", description="name contains"),
    ] = None,
    active: Annotated[bool, Query(description="false lists deactivated services")] = True,
    min_price: Annotated[int | None, Query(ge=0, le=MAX_AMOUNT_MINOR)] = None,
    max_price: Annotated[int | None, Query(ge=0, le=MAX_AMOUNT_MINOR)] = None,
    currency: Annotated[Currency | None, Query()] = None,
) -> Page[Service]:
    """The catalog, newest first; filter by provider, name, price and currency."""
    conditions = ["active = $1"]
    params: list[object] = [active]

    def where(sql: str, value: object) -> None:
        params.append(value)
        conditions.append(sql.replace("?", f"${len(params)}"))

    if provider_id is not None:
        where("provider_id = ?", provider_id)
    if q is not None:
        # ILIKE with the user's text as a literal: escape its wildcards.
        escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where("name ILIKE ?", f"%{escaped}%")
    if min_price is not None:
        where("price_amount_minor >= ?", min_price)
    if max_price is not None:
        where("price_amount_minor <= ?", max_price)
    if currency is not None:
        where("price_currency = ?", currency)
    return await _LISTING.page(request, conn, paging, where=conditions, params=params)


@router.get("/{service_id}", response_model=Envelope[Service], responses=errors(404))
async def get_service(request: Request, service_id: uuid.UUID, conn: Db) -> Envelope[Service]:
    """One service (deactivated ones too, so old bookings can show theirs)."""
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM services WHERE id = $1", service_id)
    if row is None:
        raise not_found("service")
    return ok(request, _service(row))


@router.post(
    "",
    status_code=201,
    response_model=Envelope[Service],
    responses={
        201: {"description": "Created; `Location` names the new service"},
        **errors(401, 403, 413, 415),
    },
)
async def create_service(
    request: Request,
    body: ServiceIn,
    user: ProviderUser,
    conn: Db,
    kafka: Publisher,
    ctx: Context,
) -> JSONResponse:
    """Offer a new service (provider; the caller becomes its provider)."""
    async with conn.transaction():
        row = await conn.fetchrow(
            f"""
            INSERT INTO services (id, provider_id, {_TERM_COLUMNS})
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {_COLUMNS}
            """,
            uuid.uuid4(),
            user.sub,
            *_term_values(body),
        )
        service = _service(row)
        await _publish_change(kafka, service, ctx)
    envelope = ok(request, service)
    return JSONResponse(
        status_code=201,
        content=envelope.model_dump(mode="json"),
        headers={"Location": f"{request.url.path}/{service.id}"},
    )


@router.put(
    "/{service_id}",
    response_model=Envelope[Service],
    responses=errors(401, 403, 404, 413, 415),
)
async def update_service(
    request: Request, body: ServiceUpdate, change: ChangeRequest
) -> Envelope[Service]:
    """Replace a service's description, price and terms (its provider or an admin)."""
    async with change.conn.transaction():
        current = await change.owned_row()
        active = current["active"] if body.active is None else body.active
        row = await change.conn.fetchrow(
            f"""
            UPDATE services SET ({_TERM_COLUMNS}, active) = ($2, $3, $4, $5, $6, $7, $8, $9),
                version = version + 1, updated_at = now()
            WHERE id = $1 RETURNING {_COLUMNS}
            """,
            change.service_id,
            *_term_values(body),
            active,
        )
        service = await change.published(row)
    change.terms_cache.forget(change.service_id)  # this process books with the new terms
    return ok(request, service)


@router.delete("/{service_id}", response_model=Envelope[Service], responses=errors(401, 403, 404))
async def delete_service(request: Request, change: ChangeRequest) -> Envelope[Service]:
    """Deactivate a service: no new bookings; existing ones and their history stay."""
    async with change.conn.transaction():
        current = await change.owned_row()
        if not current["active"]:
            return ok(request, _service(current))  # already gone: nothing to change or tell
        row = await change.conn.fetchrow(
            f"UPDATE services SET active = false, version = version + 1, updated_at = now() "
            f"WHERE id = $1 RETURNING {_COLUMNS}",
            change.service_id,
        )
        service = await change.published(row)
    change.terms_cache.forget(change.service_id)  # this process refuses new bookings at once
    return ok(request, service)
