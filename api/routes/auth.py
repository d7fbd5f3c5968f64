"""Authentication endpoints.

In production the OIDC provider (ZITADEL) logs people in and issues tokens; the API only
verifies them. ``POST /auth/token`` and ``/auth/refresh`` are the *development* issuer's
login: they exist only while ``settings.dev_issuer_enabled`` (404 otherwise, as in production).
``/auth/logout`` revokes the presented token in every API replica until it expires.

A development refresh uses the presented token up (once: two refreshes racing with one token
get one new token between them) and hands out its successor in the same session (``sid``),
which ends ``settings.dev_session_max_seconds`` after the login however often it is refreshed.
A token presented a second time means it was copied: the whole session is revoked, the
successors included (RFC 9700 §4.14.2's refresh-token reuse detection).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints

from api.auth import AuthError, DevIssuer, RevocationUnavailable
from api.deps import BearerToken, RuntimeDep, TokenUser
from api.envelopes import ApiError, Envelope, errors, ok, unauthorized, unavailable
from api.schemas import Body

router = APIRouter(prefix="/auth", tags=["auth"])
# 404 while the development issuer is switched off.
dev_router = APIRouter(prefix="/auth/dev", tags=["auth"], responses=errors(404))

Role = Literal["customer", "provider", "admin"]
Subject = Annotated[
    str, StringConstraints(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f]+$")
]
Email = Annotated[str, StringConstraints(max_length=254, pattern=r"^[^@\s\x00]+@[^@\s\x00]+$")]
DisplayName = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]


def _default_roles() -> list[Role]:
    return ["customer"]


class TokenRequest(Body):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "sub": "alice",
                    "roles": ["customer"],
                    "ttl_seconds": 3600,
                    "email": "alice@example.com",
                }
            ]
        }
    )

    sub: Subject = Field(description="the user id the token is for")
    roles: list[Role] = Field(default_factory=_default_roles, max_length=3)
    ttl_seconds: StrictInt = Field(default=3600, ge=60, le=86_400)
    email: Email | None = None
    name: DisplayName | None = None


class Token(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "access_token": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln",
                    "token_type": "Bearer",
                    "expires_in": 3600,
                    "expires_at": "2026-01-28T11:00:00Z",
                }
            ]
        }
    )

    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int
    expires_at: datetime


class LoggedOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"revoked": True, "until": "2026-01-28T11:00:00Z"}]}
    )

    revoked: Literal[True] = True
    until: datetime = Field(description="when the token would have expired anyway")


class UserInfo(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "sub": "alice",
                    "email": "alice@example.com",
                    "name": "Alice",
                    "roles": ["customer"],
                    "issuer": "http://127.0.0.1:8080/api/v1/auth/dev",
                    "expires_at": "2026-01-28T11:00:00Z",
                }
            ]
        }
    )

    sub: str
    email: str | None
    name: str | None
    roles: list[str]
    issuer: str
    expires_at: datetime


class Jwk(BaseModel):
    kty: str
    kid: str
    alg: str
    use: str
    n: str
    e: str


class Jwks(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "keys": [
                        {
                            "kty": "RSA",
                            "kid": "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs",
                            "alg": "RS256",
                            "use": "sig",
                            "n": "0vx7agoebGcQSuu...",
                            "e": "AQAB",
                        }
                    ]
                }
            ]
        }
    )

    keys: list[Jwk]


class Discovery(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "issuer": "http://127.0.0.1:8080/api/v1/auth/dev",
                    "jwks_uri": "http://127.0.0.1:8080/api/v1/auth/dev/jwks",
                    "token_endpoint": "http://127.0.0.1:8080/api/v1/auth/token",
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "response_types_supported": ["token"],
                    "subject_types_supported": ["public"],
                    "claims_supported": ["sub", "email", "name", "roles"],
                }
            ]
        }
    )

    issuer: str
    jwks_uri: str
    token_endpoint: str
    id_token_signing_alg_values_supported: list[str]
    response_types_supported: list[str]
    subject_types_supported: list[str]
    claims_supported: list[str]


def _dev_issuer(runtime: RuntimeDep) -> DevIssuer:
    if runtime.dev_issuer is None:
        raise ApiError(
            404,
            "no development issuer here: log in at the OIDC provider, which issues the tokens",
        )
    return runtime.dev_issuer


def _token(
    issuer: DevIssuer, sub: str, roles: Sequence[str], ttl: int, email: str | None, name: str | None
) -> Token:
    now = datetime.now(UTC).replace(microsecond=0)
    access = issuer.issue(sub, roles, ttl, email=email, name=name, now=now)
    return Token(access_token=access, expires_in=ttl, expires_at=now + timedelta(seconds=ttl))


@router.post("/token", response_model=Envelope[Token], responses=errors(404))
async def issue_token(request: Request, body: TokenRequest, runtime: RuntimeDep) -> Envelope[Token]:
    """Development login: a token for any user and roles (404 where an OIDC provider logs in)."""
    issuer = _dev_issuer(runtime)
    roles = sorted(set(body.roles))
    return ok(request, _token(issuer, body.sub, roles, body.ttl_seconds, body.email, body.name))


@router.post("/refresh", response_model=Envelope[Token], responses=errors(401, 404, 503))
async def refresh(
    request: Request, credentials: BearerToken, runtime: RuntimeDep
) -> Envelope[Token]:
    """Development issuer: a fresh token for the same session; the presented one is used up."""
    issuer = _dev_issuer(runtime)
    if credentials is None:
        raise unauthorized()
    # Checked here rather than by ``TokenUser``: a revoked token is refused there, and a
    # refresh must see a used-up token come back to revoke its session.
    try:
        user = await runtime.verifier.decode(credentials.credentials)
    except AuthError as exc:
        raise unauthorized(str(exc)) from None
    now = datetime.now(UTC).replace(microsecond=0)
    login = user.authenticated_at or user.issued_at or now
    session_ends = login + timedelta(seconds=runtime.settings.dev_session_max_seconds)
    if session_ends <= now:
        raise unauthorized("the session has reached its maximum lifetime; log in again")
    try:
        if user.session_id is not None and await runtime.revocations.is_session_revoked(
            user.session_id
        ):
            raise unauthorized("the session was revoked; log in again")
        if not await runtime.revocations.use_once(user):
            if user.session_id is not None:
                await runtime.revocations.revoke_session(user.session_id, session_ends)
            raise unauthorized(
                "the token was already used or revoked; its session is revoked, log in again"
            )
    except RevocationUnavailable as exc:
        raise unavailable("redis", exc) from exc
    issued = user.issued_at or now
    ttl = int((user.expires_at - issued).total_seconds())
    ttl = min(max(ttl, 60), 86_400, int((session_ends - now).total_seconds()))
    access = issuer.issue(
        user.sub,
        sorted(user.roles),
        ttl,
        email=user.email,
        name=user.name,
        now=now,
        session_id=user.session_id,
        authenticated_at=login,
    )
    token = Token(access_token=access, expires_in=ttl, expires_at=now + timedelta(seconds=ttl))
    return ok(request, token)


@router.post("/logout", response_model=Envelope[LoggedOut], responses=errors(401, 503))
async def logout(request: Request, user: TokenUser, runtime: RuntimeDep) -> Envelope[LoggedOut]:
    """Revoke the presented token (every replica refuses it from now until it expires)."""
    try:
        await runtime.revocations.revoke(user)
    except RevocationUnavailable as exc:
        raise unavailable("redis", exc) from exc
    return ok(request, LoggedOut(until=user.expires_at))


@router.get("/userinfo", response_model=Envelope[UserInfo], responses=errors(401, 503))
async def userinfo(request: Request, user: TokenUser) -> Envelope[UserInfo]:
    """Who the token says the caller is."""
    return ok(
        request,
        UserInfo(
            sub=user.sub,
            email=user.email,
            name=user.name,
            roles=sorted(user.roles),
            issuer=user.issuer,
            expires_at=user.expires_at,
        ),
    )


@dev_router.get("/.well-known/openid-configuration", response_model=Discovery)
async def discovery(runtime: RuntimeDep) -> Discovery:
    """The development issuer's OIDC discovery document (standard shape, not enveloped)."""
    return Discovery.model_validate(_dev_issuer(runtime).discovery())


@dev_router.get("/jwks", response_model=Jwks)
async def jwks(runtime: RuntimeDep) -> Jwks:
    """The development issuer's public keys (standard JWKS, not enveloped)."""
    return Jwks.model_validate(_dev_issuer(runtime).jwks())
