"""Bearer-token authentication: JWTs from an OIDC provider, and a development issuer.

Verification (``TokenVerifier``): the algorithm is pinned to RS256/ES256 before anything else
(``none`` and HS256-signed-with-the-public-key never reach a key), the key is picked by
``kid`` from the issuer's JWKS (cached; refetched on an unknown ``kid`` at most every
``min_refresh_seconds``), and ``iss``, ``aud``, ``exp``, ``nbf`` and ``iat`` are checked.
A token revoked through ``/auth/logout`` sits in a Redis deny-list until it would have
expired anyway; every verification consults it.

Roles come from one configurable claim: a list (``["customer"]``), a space-separated string,
or ZITADEL's project-roles object whose keys are the role names.

The development issuer (``settings.dev_issuer_enabled``; refused in production) signs with an
RSA key kept at ``settings.dev_signing_key_file`` (created on first use, mode 0600) and
publishes the discovery document and JWKS at ``settings.oidc_issuer``. While it is on, the API
trusts that key directly instead of fetching its own JWKS over HTTP. ``issue_dev_token``
mints a token from Python (the ``erynoa token`` command and the tests use it)::

    erynoa token --sub alice --role customer --ttl 3600
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import httpx
import jwt
from cachetools import TLRUCache
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from erynoa.settings import Settings

log = logging.getLogger("erynoa.api.auth")

ALLOWED_ALGORITHMS: tuple[str, ...] = ("RS256", "ES256")
_KEY_TYPE_OF_ALGORITHM = {"RS256": "RSA", "ES256": "EC"}
ROLES: tuple[str, ...] = ("customer", "provider", "admin")
ZITADEL_ROLES_CLAIM = "urn:zitadel:iam:org:project:roles"
# Clock skew tolerated between the issuer and us.
LEEWAY_SECONDS = 30
_SUBJECT = re.compile(r"^[^\x00-\x1f]{1,255}$")
_REVOKED_PREFIX = "erynoa:revoked:"
_REVOKED_SESSION_PREFIX = "erynoa:revoked-session:"
# JOSE `typ` values of access tokens (RFC 9068's, and the generic one most providers send).
ACCESS_TOKEN_TYPES: tuple[str, ...] = ("at+jwt", "JWT")
# Claims of an OIDC ID token (nonce, the access-token and code hashes) no access token has.
_ID_TOKEN_CLAIMS = frozenset({"nonce", "at_hash", "c_hash"})


def _media_type(typ: str) -> str:
    # RFC 7515 §4.1.9: "application/" may be left out, and media types are case-insensitive.
    lowered = typ.strip().lower()
    return lowered.removeprefix("application/")


def _number(value: object) -> float:
    # exp and iat were checked to be numbers by jwt.decode.
    return float(value) if isinstance(value, int | float) else 0.0


class AuthError(Exception):
    """The token is not acceptable; the message says why (it is safe to show the client)."""


class KeysUnavailable(Exception):
    """The issuer's JWKS could not be fetched, so no token can be checked right now."""


class RevocationUnavailable(Exception):
    """The deny-list (Redis) could not be consulted, so the token cannot be trusted now."""


class DevIssuerDisabled(RuntimeError):
    """Tokens are issued by the OIDC provider here; the development issuer is switched off."""


@dataclass(frozen=True)
class Principal:
    """Who is calling, as the verified token says."""

    sub: str
    roles: frozenset[str]
    email: str | None
    name: str | None
    token_id: str  # the ``jti``, or a hash of the token when it has none
    issuer: str
    issued_at: datetime | None
    expires_at: datetime
    claims: Mapping[str, Any] = field(repr=False, compare=False)
    # The login this token descends from (``sid``), and when it happened (``auth_time``):
    # the development issuer's refresh keeps both, so a session can be revoked as a whole.
    session_id: str | None = None
    authenticated_at: datetime | None = None

    def has(self, *roles: str) -> bool:
        return not self.roles.isdisjoint(roles)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles


def roles_from_claims(claims: Mapping[str, Any], claim: str) -> frozenset[str]:
    """The role names in ``claims[claim]``: a list, a space-separated string, or an object
    whose keys are the role names (ZITADEL's ``urn:zitadel:iam:org:project:roles``)."""
    value = claims.get(claim)
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, Mapping):
        return frozenset(str(k) for k in value)
    if isinstance(value, list):
        return frozenset(v for v in value if isinstance(v, str))
    return frozenset()


def roles_claim_value(claim: str, roles: Iterable[str]) -> object:
    """How the issuer puts ``roles`` into ``claim`` (ZITADEL's object form for its claim)."""
    names = sorted(set(roles))
    if claim == ZITADEL_ROLES_CLAIM:
        return {name: {"erynoa": "erynoa.local"} for name in names}
    return names


def _timestamp(claims: Mapping[str, Any], name: str) -> datetime | None:
    value = claims.get(name)
    if value is None:
        return None
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        raise AuthError(f"the token's {name} claim is not a timestamp") from None


def principal_from_claims(claims: Mapping[str, Any], token: str, roles_claim: str) -> Principal:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not _SUBJECT.match(sub):
        raise AuthError("the token's sub claim is missing or malformed")
    jti = claims.get("jti")
    token_id = (
        jti
        if isinstance(jti, str) and 0 < len(jti) <= 200
        else hashlib.sha256(token.encode()).hexdigest()
    )
    email = claims.get("email")
    name = claims.get("name") or claims.get("preferred_username")
    expires_at = _timestamp(claims, "exp")
    assert expires_at is not None  # jwt.decode requires exp
    sid = claims.get("sid")
    return Principal(
        sub=sub,
        roles=roles_from_claims(claims, roles_claim),
        email=email if isinstance(email, str) else None,
        name=name if isinstance(name, str) else None,
        token_id=token_id,
        issuer=str(claims.get("iss", "")),
        issued_at=_timestamp(claims, "iat"),
        expires_at=expires_at,
        claims=dict(claims),
        session_id=sid if isinstance(sid, str) and 0 < len(sid) <= 200 else None,
        authenticated_at=_timestamp(claims, "auth_time"),
    )


# --- signing keys ---------------------------------------------------------------------------


class KeySource(Protocol):
    async def get(self, kid: str) -> jwt.PyJWK | None: ...


class StaticKeys:
    """A fixed key set (the development issuer's own key)."""

    def __init__(self, keys: Mapping[str, jwt.PyJWK]) -> None:
        self._keys = dict(keys)

    async def get(self, kid: str) -> jwt.PyJWK | None:
        return self._keys.get(kid)


class RemoteJwks:
    """The OIDC provider's JWKS, found through its discovery document and cached.

    An unknown ``kid`` triggers a refetch (the provider rotated its keys), but at most once
    per ``min_refresh_seconds``, so a flood of tokens with made-up ``kid``s cannot turn
    into a flood of requests to the provider. Keys are trusted for ``max_age_seconds`` after
    the last fetch that *succeeded*; then they are refetched, so a key the provider withdrew
    stops being trusted. If the provider cannot be reached by then, the old keys are dropped
    and every token is refused (503, ``KeysUnavailable``) until it answers again: an outage
    of the identity provider must not keep a withdrawn (perhaps leaked) key trusted. Failed
    attempts are retried at most every ``min_refresh_seconds``.

    The discovery document must name ``issuer`` as its issuer (OpenID Connect Discovery
    §4.3): otherwise a document served from somewhere else could hand us another issuer's keys.
    """

    def __init__(
        self,
        discovery_url: str,
        http: httpx.AsyncClient,
        *,
        issuer: str | None = None,
        min_refresh_seconds: float = 30.0,
        max_age_seconds: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.discovery_url = discovery_url
        self.issuer = issuer
        self._http = http
        self._min_refresh = min_refresh_seconds
        self._max_age = max_age_seconds
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # the last fetch that succeeded
        self._attempted_at: float | None = None  # the last fetch, whatever its outcome
        self._last_error = ""
        self._lock = asyncio.Lock()

    async def get(self, kid: str) -> jwt.PyJWK | None:
        if self._fresh() and kid in self._keys:
            return self._keys[kid]
        async with self._lock:
            stale = not self._fresh()
            if kid not in self._keys or stale:
                recently = (
                    self._attempted_at is not None
                    and self._clock() - self._attempted_at < self._min_refresh
                )
                if not recently:
                    await self._refresh()
            if not self._fresh():
                self._keys = {}  # too old to trust, and no newer ones could be had
                raise KeysUnavailable(self._last_error or "the issuer's keys are out of date")
            return self._keys.get(kid)

    def _fresh(self) -> bool:
        return self._fetched_at is not None and self._clock() - self._fetched_at < self._max_age

    async def _refresh(self) -> None:
        self._attempted_at = self._clock()
        try:
            discovery = (await self._http.get(self.discovery_url, timeout=5.0)).raise_for_status()
            document = discovery.json()
            if self.issuer is not None and document.get("issuer") != self.issuer:
                raise ValueError(
                    f"the discovery document names the issuer {document.get('issuer')!r}, "
                    f"not {self.issuer!r}"
                )
            jwks_uri = document["jwks_uri"]
            jwks = (await self._http.get(jwks_uri, timeout=5.0)).raise_for_status().json()
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # Not a successful fetch: the keys we have keep their age (see the class).
            log.warning("cannot fetch the issuer's keys", extra={"error": str(exc)})
            self._last_error = str(exc)
            return
        keys: dict[str, jwt.PyJWK] = {}
        for data in jwks.get("keys", []) if isinstance(jwks, dict) else []:
            kid = data.get("kid") if isinstance(data, dict) else None
            if not isinstance(kid, str) or data.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(data)
            except jwt.PyJWTError:
                continue
            if key.algorithm_name in ALLOWED_ALGORITHMS:
                keys[kid] = key
        self._keys = keys
        self._fetched_at = self._attempted_at


# --- revocation -----------------------------------------------------------------------------


class RevocationCheck(Protocol):
    async def is_revoked(self, token_id: str, session_id: str | None = None) -> bool: ...


class RevocationList:
    """Revoked token ids in Redis, each kept until the token would have expired anyway, and
    revoked sessions (every token refreshed from one login), kept until the session ends."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def revoke(self, principal: Principal) -> None:
        try:
            await self._redis.set(
                _REVOKED_PREFIX + principal.token_id, "1", ex=_ttl_until(principal.expires_at)
            )
        except RedisError as exc:
            raise RevocationUnavailable(str(exc)) from exc

    async def use_once(self, principal: Principal) -> bool:
        """Revoke the token unless it already was: True for the one caller that did it (two
        refreshes of one token race here, and only one wins)."""
        try:
            return bool(
                await self._redis.set(
                    _REVOKED_PREFIX + principal.token_id,
                    "used",
                    ex=_ttl_until(principal.expires_at),
                    nx=True,
                )
            )
        except RedisError as exc:
            raise RevocationUnavailable(str(exc)) from exc

    async def revoke_session(self, session_id: str, until: datetime) -> None:
        try:
            await self._redis.set(_REVOKED_SESSION_PREFIX + session_id, "1", ex=_ttl_until(until))
        except RedisError as exc:
            raise RevocationUnavailable(str(exc)) from exc

    async def is_session_revoked(self, session_id: str) -> bool:
        try:
            return bool(await self._redis.exists(_REVOKED_SESSION_PREFIX + session_id))
        except RedisError as exc:
            raise RevocationUnavailable(str(exc)) from exc

    async def is_revoked(self, token_id: str, session_id: str | None = None) -> bool:
        try:
            return bool(await self._redis.exists(*_revocation_keys(token_id, session_id)))
        except RedisError as exc:
            raise RevocationUnavailable(str(exc)) from exc

    def queue(self, pipe: Pipeline, token_id: str, session_id: str | None = None) -> None:
        """Add the check to a caller's pipeline: one reply, truthy if the token is revoked."""
        pipe.exists(*_revocation_keys(token_id, session_id))


def _revocation_keys(token_id: str, session_id: str | None) -> list[str]:
    keys = [_REVOKED_PREFIX + token_id]
    if session_id is not None:
        keys.append(_REVOKED_SESSION_PREFIX + session_id)
    return keys


def _ttl_until(moment: datetime) -> int:
    remaining = int((moment - datetime.now(UTC)).total_seconds()) + 1
    # Clock skew: keep it past the verification leeway too.
    return max(remaining + LEEWAY_SECONDS, 1)


# --- verification ---------------------------------------------------------------------------


# How long a verified token is trusted without checking its signature again (never past its
# ``exp`` + leeway). A signing key withdrawn from the issuer's JWKS stops being trusted by then
# for tokens already seen (the JWKS itself is cached for up to ``RemoteJwks.max_age_seconds``).
VERIFIED_TTL_SECONDS = 60.0


class TokenVerifier:
    """Checks tokens (``verify``; ``decode`` leaves the revocation check to the caller).

    A client sends the same token with every request, and checking it is CPU work on the
    event loop (most of it PyJWT validating the base64 text character by character), so
    a token that verified is remembered, by its exact text, for ``verified_ttl_seconds``.
    Expiry is checked on every use and revocation is never cached; a refused token is not
    remembered (it is checked again each time).
    """

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        roles_claim: str,
        keys: KeySource,
        revocations: RevocationCheck,
        max_lifetime_seconds: int = 86_400,
        token_types: Iterable[str] = ACCESS_TOKEN_TYPES,
        verified_ttl_seconds: float = VERIFIED_TTL_SECONDS,
        max_verified: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.roles_claim = roles_claim
        self._keys = keys
        self._revocations = revocations
        self._max_lifetime = max_lifetime_seconds
        self._token_types = frozenset(_media_type(t) for t in token_types)
        self._verified_ttl = verified_ttl_seconds
        self._clock = clock
        # token -> (trusted until, as a Unix time; the principal it verified as)
        self._verified: TLRUCache[str, tuple[float, Principal]] = TLRUCache(
            maxsize=max_verified, ttu=lambda _token, known, _now: known[0], timer=clock
        )

    async def verify(self, token: str) -> Principal:
        """The caller behind ``token``; raises ``AuthError`` (401) for any unacceptable token."""
        principal = await self.decode(token)
        if await self._revocations.is_revoked(principal.token_id, principal.session_id):
            raise AuthError("the token was revoked")
        return principal

    async def decode(self, token: str) -> Principal:
        """``verify`` without the revocation check, for a caller that makes it itself
        (``api.admission`` sends it in the same Redis round trip as the rate limits)."""
        now = self._clock()
        known = self._verified.get(token)
        if known is not None:
            return known[1]
        principal = await self._check(token)
        # A token refused as expired past the leeway is never remembered (see ``_check``), so
        # ``until`` is in the future here unless the clock moved; then it is simply not used.
        until = min(now + self._verified_ttl, principal.expires_at.timestamp() + LEEWAY_SECONDS)
        self._verified[token] = (until, principal)
        return principal

    async def _check(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("the token is malformed") from None
        alg = header.get("alg")
        # Pinned before any key is touched: `none` and HS256-with-the-public-key end here.
        if alg not in ALLOWED_ALGORITHMS:
            raise AuthError(f"the token's algorithm {alg!r} is not accepted")
        # RFC 8725 §3.11 / RFC 9068 §4: an access token says so in its JOSE type; an ID token
        # or a logout token meant for the same audience must not pass for one.
        typ = header.get("typ")
        if not isinstance(typ, str) or _media_type(typ) not in self._token_types:
            raise AuthError(f"the token's type {typ!r} is not an access token's")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthError("the token names no signing key (kid)")
        key = await self._keys.get(kid)
        if key is None:
            raise AuthError("the token's signing key is unknown")
        if key.key_type != _KEY_TYPE_OF_ALGORITHM[alg] or key.algorithm_name != alg:
            raise AuthError("the token's algorithm does not match its signing key")
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("the token is not valid yet") from None
        except jwt.InvalidIssuerError:
            raise AuthError("the token was issued by another issuer") from None
        except jwt.InvalidAudienceError:
            raise AuthError("the token is meant for another audience") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"the token lacks the {exc.claim} claim") from None
        except jwt.InvalidSignatureError:
            raise AuthError("the token's signature is invalid") from None
        except jwt.PyJWTError:
            raise AuthError("the token is invalid") from None
        # Many providers type their ID tokens "JWT" too; these claims only ID tokens carry.
        if _ID_TOKEN_CLAIMS.intersection(claims):
            raise AuthError("an ID token is not an access token")
        lifetime = _number(claims.get("exp")) - _number(claims.get("iat"))
        if lifetime > self._max_lifetime:
            raise AuthError(
                f"the token's lifetime ({lifetime:.0f} s) is longer than the "
                f"{self._max_lifetime} s accepted"
            )
        return principal_from_claims(claims, token, self.roles_claim)


# --- the development issuer -----------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _load_private_key(pem: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the development signing key is not an RSA key")
    return key


def load_or_create_dev_key(path: Path) -> rsa.RSAPrivateKey:
    """The development issuer's RSA key at ``path``, created (mode 0600) if missing.

    Several processes may start at once (API, CLI, tests): the key is written to a private
    temporary file and hard-linked into place, which fails if another process won the race;
    then that process's key is used, so everyone signs and verifies with the same key.
    """
    try:
        return _load_private_key(path.read_bytes())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return _load_private_key(path.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)
    return key


class DevIssuer:
    """Signs development tokens and publishes the matching discovery document and JWKS."""

    def __init__(self, key: rsa.RSAPrivateKey, *, issuer: str, audience: str, roles_claim: str):
        self._key = key
        self.issuer = issuer.rstrip("/")
        self.audience = audience
        self.roles_claim = roles_claim
        public = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
        # RFC 7638 thumbprint: a kid that changes exactly when the key does.
        thumb_input = json.dumps(
            {"e": public["e"], "kty": "RSA", "n": public["n"]}, separators=(",", ":")
        )
        self.kid = _b64(hashlib.sha256(thumb_input.encode()).digest())
        self.public_jwk: dict[str, str] = {
            "kty": "RSA",
            "n": public["n"],
            "e": public["e"],
            "kid": self.kid,
            "alg": "RS256",
            "use": "sig",
        }

    @classmethod
    def from_settings(cls, settings: Settings) -> DevIssuer:
        if not settings.dev_issuer_enabled:
            raise DevIssuerDisabled(
                "the development issuer is disabled (ERYNOA_DEV_ISSUER_ENABLED=false); "
                "tokens come from the OIDC provider"
            )
        return cls(
            _cached_dev_key(settings.dev_signing_key_file),
            issuer=settings.oidc_issuer,
            audience=settings.oidc_audience,
            roles_claim=settings.roles_claim,
        )

    def key_set(self) -> StaticKeys:
        return StaticKeys({self.kid: jwt.PyJWK(self.public_jwk)})

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": [self.public_jwk]}

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{self.issuer}/jwks",
            "token_endpoint": self.issuer.rsplit("/dev", 1)[0] + "/token",
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
            "claims_supported": ["sub", "email", "name", self.roles_claim],
        }

    def issue(
        self,
        sub: str,
        roles: Iterable[str],
        ttl_seconds: int,
        *,
        email: str | None = None,
        name: str | None = None,
        now: datetime | None = None,
        session_id: str | None = None,
        authenticated_at: datetime | None = None,
    ) -> str:
        """An access token; a refresh passes the session (``sid``) and login time
        (``auth_time``) of the token it replaces, a login leaves them to start a session."""
        issued = int((now or datetime.now(UTC)).timestamp())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub,
            "iat": issued,
            "nbf": issued,
            "exp": issued + ttl_seconds,
            "jti": str(uuid.uuid4()),
            "sid": session_id or str(uuid.uuid4()),
            "auth_time": int(authenticated_at.timestamp()) if authenticated_at else issued,
            self.roles_claim: roles_claim_value(self.roles_claim, roles),
        }
        if email is not None:
            claims["email"] = email
        if name is not None:
            claims["name"] = name
        return jwt.encode(
            claims, self._key, algorithm="RS256", headers={"kid": self.kid, "typ": "at+jwt"}
        )

    def sign_raw(self, claims: Mapping[str, Any], headers: Mapping[str, Any] | None = None) -> str:
        """Sign arbitrary claims with the development key (tests build odd tokens with it)."""
        return jwt.encode(
            dict(claims), self._key, algorithm="RS256", headers={"kid": self.kid, **(headers or {})}
        )


@lru_cache(maxsize=8)
def _cached_dev_key_at(path: Path, _mtime_ns: int) -> rsa.RSAPrivateKey:
    return load_or_create_dev_key(path)


def _cached_dev_key(path: Path) -> rsa.RSAPrivateKey:
    # Loading (and validating) an RSA key takes milliseconds; keep it per file version.
    if not path.exists():
        load_or_create_dev_key(path)
    return _cached_dev_key_at(path, path.stat().st_mtime_ns)


def issue_dev_token(
    settings: Settings,
    sub: str,
    roles: Iterable[str],
    ttl_seconds: int,
    email: str | None = None,
    *,
    name: str | None = None,
) -> str:
    """A development token the API accepts (raises ``DevIssuerDisabled`` when switched off).

    For local use and tests only: in production the OIDC provider issues tokens.
    """
    if not _SUBJECT.match(sub):
        raise ValueError("sub must be 1-255 printable characters")
    if ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be positive")
    return DevIssuer.from_settings(settings).issue(sub, roles, ttl_seconds, email=email, name=name)
