"""Users: the caller's own profile, and (for admins) everyone's.

A user's row is created from their token on their first authenticated request (see
``api.runtime.SeenUsers``); roles always follow the token, the profile fields are theirs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Path, Query, Request
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, UrlConstraints

from api.deps import AdminUser, CurrentUser, Db, MemberUser, SettingsDep
from api.envelopes import ApiError, Envelope, Page, errors, not_found, ok
from api.readmodel import Listing
from api.routes.auth import DisplayName, Email
from api.schemas import Body, Paging
from erynoa.outbound import OutboundPolicy, OutboundRefused
from erynoa.settings import Settings

# Every route needs a verified caller (401) and PostgreSQL and Redis (503).
router = APIRouter(prefix="/users", tags=["users"], responses=errors(401, 503))

WebhookUrl = Annotated[
    AnyHttpUrl, UrlConstraints(max_length=2000, allowed_schemes=["http", "https"])
]

_USER_EXAMPLE: dict[str, Any] = {
    "id": "alice",
    "email": "alice@example.com",
    "display_name": "Alice",
    "roles": ["customer"],
    "webhook_url": "https://alice.example.com/erynoa-hooks",
    "created_at": "2026-01-28T10:00:00Z",
    "updated_at": "2026-01-28T10:00:00Z",
}


class User(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_USER_EXAMPLE]})

    id: str
    email: str | None
    display_name: str | None
    roles: list[str]
    webhook_url: str | None
    created_at: datetime
    updated_at: datetime


class ProfileUpdate(Body):
    """The fields to change; a field left out stays as it is, ``null`` clears it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "display_name": "Alice Example",
                    "email": "alice@example.com",
                    "webhook_url": "https://alice.example.com/erynoa-hooks",
                }
            ]
        }
    )

    display_name: DisplayName | None = None
    email: Email | None = None
    webhook_url: WebhookUrl | None = Field(
        default=None,
        description=(
            "where signed notification webhooks are sent (https in production; a public "
            "address on port 80 or 443)"
        ),
    )


_COLUMNS = "id, email, display_name, roles, webhook_url, created_at, updated_at"


def _user(row: asyncpg.Record) -> User:
    return User.model_validate(dict(row))


_LISTING = Listing(_user, _COLUMNS, "users", order_by="created_at DESC, id")


async def _fetch(conn: asyncpg.Connection, user_id: str) -> User:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM users WHERE id = $1", user_id)
    if row is None:
        raise not_found("user")
    return _user(row)


@router.get("/me", response_model=Envelope[User], responses=errors(404))
async def get_me(request: Request, user: CurrentUser, conn: Db) -> Envelope[User]:
    """The caller's profile."""
    return ok(request, await _fetch(conn, user.sub))


@router.put("/me", response_model=Envelope[User], responses=errors(403, 404))
async def put_me(
    request: Request, body: ProfileUpdate, user: MemberUser, conn: Db, settings: SettingsDep
) -> Envelope[User]:
    """Change the caller's display name, email or webhook URL."""
    changes: dict[str, Any] = {}
    for name in sorted(body.model_fields_set):
        value = getattr(body, name)
        changes[name] = str(value) if value is not None else None
    url = changes.get("webhook_url")
    if url is not None:
        await _check_webhook_url(body.webhook_url, settings)
    if changes:
        assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(changes, start=2))
        await conn.execute(
            f"UPDATE users SET {assignments}, updated_at = now() WHERE id = $1",
            user.sub,
            *changes.values(),
        )
    return ok(request, await _fetch(conn, user.sub))


async def _check_webhook_url(url: AnyHttpUrl | None, settings: Settings) -> None:
    if url is None:
        return
    problems = []
    if url.username or url.password:
        problems.append("must not carry credentials")
    if settings.environment == "production" and url.scheme != "https":
        problems.append("must use https")
    try:
        # Refused here so the user learns at once; the notification agent checks again at
        # every send, as the name may resolve elsewhere by then.
        await OutboundPolicy.from_settings(settings).check_url(str(url))
    except OutboundRefused as exc:
        problems.append(exc.reason)
    if problems:
        raise ApiError(
            422,
            "Invalid input",
            details=[
                {"field": "body.webhook_url", "message": p, "type": "value_error"} for p in problems
            ],
        )


@router.get("", response_model=Page[User], responses=errors(403))
async def list_users(
    request: Request,
    _admin: AdminUser,
    conn: Db,
    paging: Paging,
    role: Annotated[Literal["customer", "provider", "admin"] | None, Query()] = None,
) -> Page[User]:
    """All users, newest first (admin)."""
    return await _LISTING.page(
        request, conn, paging, where=["$1::text IS NULL OR $1 = ANY(roles)"], params=[role]
    )


@router.get("/{user_id}", response_model=Envelope[User], responses=errors(403, 404))
async def get_user(
    request: Request,
    _admin: AdminUser,
    conn: Db,
    user_id: Annotated[str, Path(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f]+$")],
) -> Envelope[User]:
    """One user by id (admin)."""
    return ok(request, await _fetch(conn, user_id))
