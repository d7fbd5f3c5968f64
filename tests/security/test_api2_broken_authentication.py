"""OWASP API2:2023 Broken Authentication: forged, misused and replayed tokens against the
running API. Every attack must end in a 401 (a 200 means it got in)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import httpx
import pytest

from api.auth import DevIssuer
from tests.conftest import unique
from tests.integration.api import forged_tokens
from tests.integration.api.conftest import LiveApi
from tests.integration.api.forged_tokens import (
    keyed_with_the_public_key,
    promoted_to_admin,
    unsigned,
)

pytestmark = pytest.mark.integration


def claims_for(live_api: LiveApi, **overrides: Any) -> dict[str, Any]:
    # The attacks aim at an admin route, so a forged token claims the most it could win.
    return forged_tokens.claims_for(
        live_api, **{"sub": unique("mallory-"), "roles": ["admin"], **overrides}
    )


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
    for alg, digest in (("HS256", hashlib.sha256), ("HS512", hashlib.sha512)):
        token = keyed_with_the_public_key(live_api, alg, digest, claims_for(live_api))
        await assert_refused(http, token, f"'{alg}' is not accepted")


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
    forged = promoted_to_admin(live_api.token(unique("eve-"), "customer"))
    await assert_refused(http, forged, "signature")


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
