"""Token verification without a network: every way a token can be unacceptable, role claims,
the JWKS cache's refetch rules, and the development issuer's key file."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from api.auth import (
    LEEWAY_SECONDS,
    AuthError,
    DevIssuer,
    DevIssuerDisabled,
    KeysUnavailable,
    RemoteJwks,
    TokenVerifier,
    issue_dev_token,
    load_or_create_dev_key,
    roles_from_claims,
)
from erynoa.settings import Settings

ISSUER = "http://issuer.test/api/v1/auth/dev"
AUDIENCE = "erynoa-api"


class Revoked:
    def __init__(self, *ids: str) -> None:
        self.ids = set(ids)

    async def is_revoked(self, token_id: str, session_id: str | None = None) -> bool:
        return token_id in self.ids or session_id in self.ids


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> DevIssuer:
    key = load_or_create_dev_key(tmp_path_factory.mktemp("key") / "dev.pem")
    return DevIssuer(key, issuer=ISSUER, audience=AUDIENCE, roles_claim="roles")


def verifier(dev: DevIssuer, revoked: Revoked | None = None) -> TokenVerifier:
    return TokenVerifier(
        issuer=ISSUER,
        audience=AUDIENCE,
        roles_claim="roles",
        keys=dev.key_set(),
        revocations=revoked or Revoked(),
    )


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    values: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": "jti-1",
        "roles": ["customer"],
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_a_dev_token_verifies(dev: DevIssuer) -> None:
    token = dev.issue("alice", ["provider", "customer"], 600, email="a@x.io", name="Alice")
    principal = await verifier(dev).verify(token)
    assert principal.sub == "alice"
    assert principal.roles == {"customer", "provider"}
    assert (principal.email, principal.name, principal.issuer) == ("a@x.io", "Alice", ISSUER)
    assert principal.has("provider")
    assert not principal.is_admin


def past(seconds: int) -> int:
    return int(time.time()) - seconds


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"exp": past(3600), "iat": past(4000), "nbf": past(4000)}, "expired"),
        ({"nbf": past(-3600), "exp": past(-4000)}, "not valid yet"),
        ({"iat": past(-3600), "exp": past(-4000)}, "not valid yet"),
        ({"iss": "https://elsewhere.test"}, "another issuer"),
        ({"aud": "another-api"}, "another audience"),
        ({"exp": None}, "exp"),
        ({"iat": None}, "iat"),
        ({"sub": None}, "sub"),
        ({"sub": ""}, "sub"),
    ],
)
async def test_unacceptable_claims_are_refused(
    dev: DevIssuer, overrides: dict[str, Any], reason: str
) -> None:
    with pytest.raises(AuthError, match=reason):
        await verifier(dev).verify(dev.sign_raw(claims(**overrides)))


async def test_alg_none_is_refused(dev: DevIssuer) -> None:
    header = b64(json.dumps({"alg": "none", "kid": dev.kid}).encode())
    token = f"{header}.{b64(json.dumps(claims()).encode())}."
    with pytest.raises(AuthError, match="'none' is not accepted"):
        await verifier(dev).verify(token)


async def test_hs256_keyed_with_the_public_key_is_refused(dev: DevIssuer, tmp_path: Path) -> None:
    public_pem = dev._key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64(json.dumps({"alg": "HS256", "kid": dev.kid}).encode())
    signing_input = f"{header}.{b64(json.dumps(claims()).encode())}"
    signature = b64(hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest())
    with pytest.raises(AuthError, match="'HS256' is not accepted"):
        await verifier(dev).verify(f"{signing_input}.{signature}")


async def test_a_tampered_payload_is_refused(dev: DevIssuer) -> None:
    header, _, signature = dev.sign_raw(claims()).split(".")
    forged = b64(json.dumps(claims(roles=["admin"])).encode())
    with pytest.raises(AuthError, match="signature is invalid"):
        await verifier(dev).verify(f"{header}.{forged}.{signature}")


async def test_a_token_signed_by_another_key_is_refused(dev: DevIssuer, tmp_path: Path) -> None:
    other = DevIssuer(
        load_or_create_dev_key(tmp_path / "other.pem"),
        issuer=ISSUER,
        audience=AUDIENCE,
        roles_claim="roles",
    )
    with pytest.raises(AuthError, match="signing key is unknown"):
        await verifier(dev).verify(other.sign_raw(claims()))
    # Even claiming our kid does not help: the signature does not match our key.
    with pytest.raises(AuthError, match="signature is invalid"):
        await verifier(dev).verify(other.sign_raw(claims(), headers={"kid": dev.kid}))


async def test_a_revoked_token_is_refused(dev: DevIssuer) -> None:
    with pytest.raises(AuthError, match="revoked"):
        await verifier(dev, Revoked("jti-1")).verify(dev.sign_raw(claims()))


async def test_a_token_without_jti_is_revocable_by_its_hash(dev: DevIssuer) -> None:
    token = dev.sign_raw(claims(jti=None))
    principal = await verifier(dev).verify(token)
    assert principal.token_id == hashlib.sha256(token.encode()).hexdigest()


class CountingKeys:
    """The development key set, counting lookups: one per full signature check."""

    def __init__(self, dev: DevIssuer) -> None:
        self.keys = dev.key_set()
        self.lookups = 0

    async def get(self, kid: str) -> Any:
        self.lookups += 1
        return await self.keys.get(kid)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def remembering(
    dev: DevIssuer, keys: CountingKeys, clock: Clock, revoked: Revoked | None = None
) -> TokenVerifier:
    return TokenVerifier(
        issuer=ISSUER,
        audience=AUDIENCE,
        roles_claim="roles",
        keys=keys,
        revocations=revoked or Revoked(),
        verified_ttl_seconds=60.0,
        clock=clock,
    )


async def test_a_verified_token_is_remembered_for_the_ttl_then_checked_again(
    dev: DevIssuer,
) -> None:
    keys, clock = CountingKeys(dev), Clock()
    check = remembering(dev, keys, clock)
    token = dev.sign_raw(claims())
    first = await check.verify(token)
    clock.now += 59
    assert await check.verify(token) == first
    assert keys.lookups == 1
    clock.now += 1
    await check.verify(token)
    assert keys.lookups == 2


async def test_a_remembered_token_is_not_trusted_past_its_expiry(dev: DevIssuer) -> None:
    keys, clock = CountingKeys(dev), Clock()
    check = remembering(dev, keys, clock)
    token = dev.sign_raw(claims(exp=int(clock.now) + 5))
    await check.verify(token)
    clock.now = int(clock.now) + 5 + LEEWAY_SECONDS  # expiry plus the leeway
    with contextlib.suppress(AuthError):  # real time has not moved: PyJWT may still accept it
        await check.verify(token)
    assert keys.lookups == 2  # checked in full again, not served from memory


async def test_a_remembered_token_is_still_checked_for_revocation(dev: DevIssuer) -> None:
    keys, clock, revoked = CountingKeys(dev), Clock(), Revoked()
    check = remembering(dev, keys, clock, revoked)
    token = dev.sign_raw(claims(jti="jti-remembered"))
    await check.verify(token)
    revoked.ids.add("jti-remembered")
    with pytest.raises(AuthError, match="revoked"):
        await check.verify(token)


async def test_a_refused_token_is_not_remembered(dev: DevIssuer) -> None:
    keys, clock = CountingKeys(dev), Clock()
    check = remembering(dev, keys, clock)
    header, _, signature = dev.sign_raw(claims()).split(".")
    tampered = ".".join((header, b64(json.dumps(claims(sub="mallory")).encode()), signature))
    for _ in range(2):
        with pytest.raises(AuthError):
            await check.verify(tampered)
    assert keys.lookups == 2


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "e30.e30.e30"])
async def test_garbage_is_refused(dev: DevIssuer, token: str) -> None:
    with pytest.raises(AuthError):
        await verifier(dev).verify(token)


@pytest.mark.parametrize(
    ("value", "roles"),
    [
        (["customer", "provider", 7], {"customer", "provider"}),
        ("customer admin", {"customer", "admin"}),
        ({"provider": {"123": "org.example"}, "admin": {}}, {"provider", "admin"}),
        (None, set()),
        (42, set()),
    ],
)
def test_roles_come_in_three_shapes(value: object, roles: set[str]) -> None:
    assert roles_from_claims({"r": value}, "r") == roles


def test_the_zitadel_issuer_writes_the_object_form(tmp_path: Path) -> None:
    claim = "urn:zitadel:iam:org:project:roles"
    dev = DevIssuer(
        load_or_create_dev_key(tmp_path / "k.pem"),
        issuer=ISSUER,
        audience=AUDIENCE,
        roles_claim=claim,
    )
    payload = dev.issue("z", ["admin"], 60).split(".")[1]
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert set(decoded[claim]) == {"admin"}
    assert roles_from_claims(decoded, claim) == {"admin"}


def test_the_dev_key_is_created_private_and_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "key.pem"
    first = load_or_create_dev_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    second = load_or_create_dev_key(path)
    assert first.private_numbers() == second.private_numbers()
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_issue_dev_token_needs_the_dev_issuer(tmp_path: Path) -> None:
    on = Settings(dev_signing_key_file=tmp_path / "k.pem", oidc_issuer=ISSUER)
    assert issue_dev_token(on, "alice", ["customer"], 60).count(".") == 2
    off = Settings(dev_issuer_enabled=False, dev_signing_key_file=tmp_path / "k2.pem")
    with pytest.raises(DevIssuerDisabled):
        issue_dev_token(off, "alice", ["customer"], 60)
    assert not (tmp_path / "k2.pem").exists()
    with pytest.raises(ValueError, match="ttl"):
        issue_dev_token(on, "alice", ["customer"], 0)


class FakeProvider:
    """An OIDC provider behind httpx.MockTransport, counting JWKS fetches."""

    def __init__(self, dev: DevIssuer) -> None:
        self.dev = dev
        self.jwks_fetches = 0
        self.up = True

    def handler(self, request: httpx.Request) -> httpx.Response:
        if not self.up:
            return httpx.Response(503)
        if request.url.path.endswith("/.well-known/openid-configuration"):
            return httpx.Response(200, json={"jwks_uri": "http://idp.test/keys"})
        self.jwks_fetches += 1
        return httpx.Response(200, json=self.dev.jwks())


async def test_remote_jwks_refetches_on_unknown_kid_at_most_every_interval(dev: DevIssuer) -> None:
    provider = FakeProvider(dev)
    async with httpx.AsyncClient(transport=httpx.MockTransport(provider.handler)) as http:
        keys = RemoteJwks(
            "http://idp.test/.well-known/openid-configuration", http, min_refresh_seconds=60
        )
        assert await keys.get(dev.kid) is not None
        assert await keys.get(dev.kid) is not None
        assert provider.jwks_fetches == 1  # cached
        assert await keys.get("rotated-away") is None
        assert await keys.get("made-up") is None
        assert provider.jwks_fetches == 1  # refetch throttled within the interval

        eager = RemoteJwks(
            "http://idp.test/.well-known/openid-configuration", http, min_refresh_seconds=0
        )
        await eager.get(dev.kid)
        await eager.get("new-kid")
        assert provider.jwks_fetches == 3  # an unknown kid refetched


async def test_remote_jwks_unreachable_before_the_first_fetch(dev: DevIssuer) -> None:
    provider = FakeProvider(dev)
    provider.up = False
    async with httpx.AsyncClient(transport=httpx.MockTransport(provider.handler)) as http:
        keys = RemoteJwks("http://idp.test/.well-known/openid-configuration", http)
        with pytest.raises(KeysUnavailable):
            await keys.get(dev.kid)


def refreshing_keys(http: httpx.AsyncClient, clock: Clock) -> RemoteJwks:
    """Keys refetched at most every 30 s and trusted for an hour, on ``clock``."""
    return RemoteJwks(
        "http://idp.test/.well-known/openid-configuration",
        http,
        min_refresh_seconds=30,
        max_age_seconds=3600,
        clock=clock,
    )


async def test_a_failed_jwks_fetch_does_not_keep_stale_keys_trusted(dev: DevIssuer) -> None:
    # The provider withdrew a key and then became unreachable: once the keys are older than
    # max_age, the old key must not verify anything any more (503, not a silent pass).
    provider = FakeProvider(dev)
    clock = Clock()
    async with httpx.AsyncClient(transport=httpx.MockTransport(provider.handler)) as http:
        keys = refreshing_keys(http, clock)
        assert await keys.get(dev.kid) is not None
        provider.up = False
        clock.now += 3601
        with pytest.raises(KeysUnavailable):
            await keys.get(dev.kid)
        clock.now += 60  # a failed attempt did not make the keys fresh again
        with pytest.raises(KeysUnavailable):
            await keys.get(dev.kid)
        provider.up = True
        clock.now += 31
        assert await keys.get(dev.kid) is not None  # the provider is back: trusted again


async def test_an_unreachable_provider_is_not_asked_more_than_every_interval(
    dev: DevIssuer,
) -> None:
    provider = FakeProvider(dev)
    clock = Clock()
    async with httpx.AsyncClient(transport=httpx.MockTransport(provider.handler)) as http:
        keys = refreshing_keys(http, clock)
        await keys.get(dev.kid)
        clock.now += 3601
        provider.jwks_fetches = 0
        for _ in range(5):
            with contextlib.suppress(KeysUnavailable):
                await keys.get(dev.kid)
        assert provider.jwks_fetches == 1


async def test_a_discovery_document_naming_another_issuer_is_refused(dev: DevIssuer) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/.well-known/openid-configuration"):
            return httpx.Response(
                200, json={"issuer": "https://evil.test", "jwks_uri": "http://idp.test/keys"}
            )
        return httpx.Response(200, json=dev.jwks())

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        keys = RemoteJwks("http://idp.test/.well-known/openid-configuration", http, issuer=ISSUER)
        with pytest.raises(KeysUnavailable, match=r"evil\.test"):
            await keys.get(dev.kid)


async def test_a_discovery_document_naming_our_issuer_is_used(dev: DevIssuer) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/.well-known/openid-configuration"):
            return httpx.Response(200, json={"issuer": ISSUER, "jwks_uri": "http://idp.test/k"})
        return httpx.Response(200, json=dev.jwks())

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        keys = RemoteJwks("http://idp.test/.well-known/openid-configuration", http, issuer=ISSUER)
        assert await keys.get(dev.kid) is not None


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT", "JWT"])
async def test_access_token_types_are_accepted(dev: DevIssuer, typ: str) -> None:
    assert (await verifier(dev).verify(dev.sign_raw(claims(), {"typ": typ}))).sub == "alice"


@pytest.mark.parametrize("typ", ["id_token+jwt", "logout+jwt", "secevent+jwt", None])
async def test_other_token_types_are_refused(dev: DevIssuer, typ: str | None) -> None:
    import jwt as pyjwt

    token = dev.sign_raw(claims(), {"typ": typ}) if typ else _without_typ(dev, pyjwt)
    with pytest.raises(AuthError, match="type"):
        await verifier(dev).verify(token)


def _without_typ(dev: DevIssuer, pyjwt: Any) -> str:
    # PyJWT writes typ "JWT" unless told otherwise; an explicit None leaves it out.
    key = load_or_create_dev_key_for(dev)
    return str(
        pyjwt.encode(claims(), key, algorithm="RS256", headers={"kid": dev.kid, "typ": None})
    )


def load_or_create_dev_key_for(dev: DevIssuer) -> Any:
    return dev._key


@pytest.mark.parametrize("claim", ["nonce", "at_hash", "c_hash"])
async def test_an_id_token_is_refused(dev: DevIssuer, claim: str) -> None:
    with pytest.raises(AuthError, match="ID token"):
        await verifier(dev).verify(dev.sign_raw(claims(**{claim: "x"})))


async def test_a_token_living_longer_than_the_maximum_is_refused(dev: DevIssuer) -> None:
    now = int(time.time())
    strict = TokenVerifier(
        issuer=ISSUER,
        audience=AUDIENCE,
        roles_claim="roles",
        keys=dev.key_set(),
        revocations=Revoked(),
        max_lifetime_seconds=3600,
    )
    assert await strict.verify(dev.sign_raw(claims(exp=now + 3600)))
    with pytest.raises(AuthError, match="lifetime"):
        await strict.verify(dev.sign_raw(claims(exp=now + 3601, jti="long")))


async def test_a_revoked_session_revokes_its_tokens(dev: DevIssuer) -> None:
    token = dev.issue("alice", ["customer"], 600, session_id="session-1")
    assert (await verifier(dev).verify(token)).session_id == "session-1"
    with pytest.raises(AuthError, match="revoked"):
        await verifier(dev, Revoked("session-1")).verify(token)
