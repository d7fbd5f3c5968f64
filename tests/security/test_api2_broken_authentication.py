"""OWASP API2:2023 Broken Authentication: forged, misused and replayed tokens against the
running API. Every attack must end in a 401 (a 200 means it got in)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from api.auth import DevIssuer, load_or_create_dev_key
from tests.conftest import unique
from tests.integration.api.conftest import LiveApi

pytestmark = pytest.mark.integration


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"


def claims_for(live_api: LiveApi, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": live_api.settings.oidc_issuer,
        "aud": live_api.settings.oidc_audience,
        "sub": unique("mallory-"),
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": unique(),
        "roles": ["admin"],
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def dev_issuer(live_api: LiveApi) -> DevIssuer:
    return DevIssuer.from_settings(live_api.settings)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def assert_refused(http: httpx.AsyncClient, token: str, reason: str) -> None:
    # An admin route: a forged token that got through would be worth the most here.
    response = await http.get("/admin/stats", headers=bearer(token))
    assert response.status_code == 401, response.text
    assert reason in response.json()["error"]["message"]


async def test_alg_none_is_refused(http: httpx.AsyncClient, live_api: LiveApi) -> None:
    for alg in ("none", "None", "NONE"):
        token = unsigned({"alg": alg, "typ": "JWT"}, claims_for(live_api)) + "."
        await assert_refused(http, token, "is not accepted")


async def test_hs256_keyed_with_the_public_key_is_refused(
    http: httpx.AsyncClient, live_api: LiveApi
) -> None:
    key = load_or_create_dev_key(Path(live_api.settings.dev_signing_key_file))
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for alg, digest in (("HS256", hashlib.sha256), ("HS512", hashlib.sha512)):
        header = {"alg": alg, "typ": "JWT", "kid": dev_issuer(live_api).kid}
        signing_input = unsigned(header, claims_for(live_api))
        signature = hmac.new(public_pem, signing_input.encode(), digest).digest()
        await assert_refused(http, f"{signing_input}.{b64(signature)}", f"'{alg}' is not accepted")


async def test_a_wrong_or_missing_kid_is_refused(
    http: httpx.AsyncClient, live_api: LiveApi
) -> None:
    dev = dev_issuer(live_api)
    await assert_refused(
        http, dev.sign_raw(claims_for(live_api), {"kid": "../../etc/passwd"}), "key is unknown"
    )
    await assert_refused(http, dev.sign_raw(claims_for(live_api), {"kid": ""}), "kid")


async def test_time_claims_are_enforced(http: httpx.AsyncClient, live_api: LiveApi) -> None:
    dev = dev_issuer(live_api)
    now = int(time.time())
    expired = claims_for(live_api, iat=now - 7200, nbf=now - 7200, exp=now - 3600)
    await assert_refused(http, dev.sign_raw(expired), "expired")
    future_iat = claims_for(live_api, iat=now + 3600, nbf=None, exp=now + 4000)
    await assert_refused(http, dev.sign_raw(future_iat), "not valid yet")


async def test_a_token_living_longer_than_the_maximum_is_refused(
    http: httpx.AsyncClient, live_api: LiveApi
) -> None:
    # A token that never expires (or ten years from now) is a stolen token that never dies.
    now = int(time.time())
    too_long = now + live_api.settings.max_token_lifetime_seconds + 3600
    token = dev_issuer(live_api).sign_raw(claims_for(live_api, exp=too_long))
    await assert_refused(http, token, "lifetime")


async def test_wrong_issuer_or_audience_is_refused(
    http: httpx.AsyncClient, live_api: LiveApi
) -> None:
    dev = dev_issuer(live_api)
    await assert_refused(
        http, dev.sign_raw(claims_for(live_api, iss="https://evil.test")), "another issuer"
    )
    await assert_refused(
        http, dev.sign_raw(claims_for(live_api, aud="another-api")), "another audience"
    )


async def test_an_id_token_is_not_an_access_token(
    http: httpx.AsyncClient, live_api: LiveApi
) -> None:
    dev = dev_issuer(live_api)
    # A JOSE type that is not an access token's.
    for typ in ("id_token+jwt", "dpop+jwt", "logout+jwt"):
        await assert_refused(http, dev.sign_raw(claims_for(live_api), {"typ": typ}), "type")
    # An OIDC ID token (typ "JWT", the audience right): it carries what only ID tokens carry.
    id_token = claims_for(live_api, nonce="n-0S6_WzA2Mj", at_hash="77QmUPtjPfzWtF2AnpK9RQ")
    await assert_refused(http, dev.sign_raw(id_token, {"typ": "JWT"}), "ID token")
    # The RFC 9068 type (and the one the development issuer writes) passes.
    ok = dev.sign_raw(claims_for(live_api), {"typ": "at+jwt"})
    assert (await http.get("/admin/stats", headers=bearer(ok))).status_code == 200


async def test_a_revoked_token_is_refused(http: httpx.AsyncClient, live_api: LiveApi) -> None:
    token = live_api.token(unique("bob-"), "admin")
    assert (await http.post("/auth/logout", headers=bearer(token))).status_code == 200
    await assert_refused(http, token, "revoked")


async def test_a_tampered_role_is_refused(http: httpx.AsyncClient, live_api: LiveApi) -> None:
    header, payload, signature = live_api.token(unique("eve-"), "customer").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["roles"] = ["admin"]
    await assert_refused(
        http, f"{header}.{b64(json.dumps(claims).encode())}.{signature}", "signature"
    )


# --- the development issuer's refresh -------------------------------------------------------


async def test_concurrent_refreshes_of_one_token_do_not_both_succeed(
    http: httpx.AsyncClient, live_api: LiveApi
) -> None:
    token = live_api.token(unique("dup-"), "customer")
    answers = await asyncio.gather(
        *(http.post("/auth/refresh", headers=bearer(token)) for _ in range(5))
    )
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(200) <= 1, statuses
    assert set(statuses) <= {200, 401}


async def test_a_refresh_token_used_twice_revokes_its_whole_family(
    http: httpx.AsyncClient, live_api: LiveApi
) -> None:
    stolen = live_api.token(unique("victim-"), "customer")
    first = await http.post("/auth/refresh", headers=bearer(stolen))
    assert first.status_code == 200, first.text
    child = first.json()["data"]["access_token"]
    grandchild_answer = await http.post("/auth/refresh", headers=bearer(child))
    assert grandchild_answer.status_code == 200, grandchild_answer.text
    grandchild = grandchild_answer.json()["data"]["access_token"]
    assert (await http.get("/auth/userinfo", headers=bearer(grandchild))).status_code == 200

    # The attacker replays the first token: a reuse, so every token of the login dies.
    replay = await http.post("/auth/refresh", headers=bearer(stolen))
    assert replay.status_code == 401
    for token in (child, grandchild):
        answer = await http.get("/auth/userinfo", headers=bearer(token))
        assert answer.status_code == 401, answer.text
    assert (await http.post("/auth/refresh", headers=bearer(grandchild))).status_code == 401


async def test_refreshing_cannot_outlive_the_session(
    http: httpx.AsyncClient, live_api: LiveApi
) -> None:
    now = int(time.time())
    limit = live_api.settings.dev_session_max_seconds
    # A token refreshed over and over since a login longer ago than a session may last.
    old_login = claims_for(
        live_api, roles=["customer"], auth_time=now - limit - 60, sid=unique("sid-")
    )
    token = dev_issuer(live_api).sign_raw(old_login, {"typ": "at+jwt"})
    assert (await http.get("/auth/userinfo", headers=bearer(token))).status_code == 200
    answer = await http.post("/auth/refresh", headers=bearer(token))
    assert answer.status_code == 401, answer.text
    assert "log in again" in answer.json()["error"]["message"]

    # Near the end of the session, a refresh ends with it (not a full ttl later).
    late_login = claims_for(
        live_api, roles=["customer"], auth_time=now - limit + 120, sid=unique("sid-")
    )
    token = dev_issuer(live_api).sign_raw(late_login, {"typ": "at+jwt"})
    answer = await http.post("/auth/refresh", headers=bearer(token))
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["expires_in"] <= 120
