"""Authentication over HTTP: the development issuer, every kind of bad token, revocation, and
a server that verifies against an OIDC provider's JWKS fetched over HTTP."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import httpx
import pytest

from api.auth import DevIssuer
from tests.conftest import unique
from tests.integration.api.conftest import LiveApi, api_settings, running
from tests.integration.api.forged_tokens import (
    claims_for,
    keyed_with_the_public_key,
    promoted_to_admin,
    unsigned,
)

pytestmark = pytest.mark.integration


def issuer(live_api: LiveApi) -> DevIssuer:
    return DevIssuer.from_settings(live_api.settings)


async def assert_401(http: httpx.AsyncClient, token: str, reason: str) -> None:
    response = await http.get("/auth/userinfo", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert error["code"] == "UNAUTHORIZED"
    assert reason in error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_dev_token_round_trip(http: httpx.AsyncClient) -> None:
    sub = unique("alice-")
    response = await http.post(
        "/auth/token", json={"sub": sub, "roles": ["customer", "provider"], "email": "a@x.io"}
    )
    assert response.status_code == 200, response.text
    token = response.json()["data"]
    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == 3600

    info = await http.get(
        "/auth/userinfo", headers={"Authorization": f"Bearer {token['access_token']}"}
    )
    assert info.status_code == 200
    data = info.json()["data"]
    assert data["sub"] == sub
    assert data["roles"] == ["customer", "provider"]
    assert data["email"] == "a@x.io"


async def test_discovery_and_jwks_describe_the_dev_issuer(
    http: httpx.AsyncClient, live_api: LiveApi
) -> None:
    discovery = (await http.get("/auth/dev/.well-known/openid-configuration")).json()
    assert discovery["issuer"] == live_api.settings.oidc_issuer
    jwks = (await http.get("/auth/dev/jwks")).json()
    assert [k["kid"] for k in jwks["keys"]] == [issuer(live_api).kid]
    assert jwks["keys"][0]["alg"] == "RS256"
    assert "d" not in jwks["keys"][0]  # the public half only


def test_dev_key_file_is_private(live_api: LiveApi) -> None:
    mode = Path(live_api.settings.dev_signing_key_file).stat().st_mode & 0o777
    assert mode == 0o600


async def test_missing_or_non_bearer_credentials_get_401(http: httpx.AsyncClient) -> None:
    for headers in ({}, {"Authorization": "Basic YWxpY2U6c2VjcmV0"}, {"Authorization": "Bearer"}):
        response = await http.get("/auth/userinfo", headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["error"]["code"] == "UNAUTHORIZED"


async def test_expired_token_gets_401(http: httpx.AsyncClient, live_api: LiveApi) -> None:
    past = int(time.time()) - 3600
    token = issuer(live_api).sign_raw(
        claims_for(live_api, iat=past - 600, nbf=past - 600, exp=past)
    )
    await assert_401(http, token, "expired")


async def test_not_yet_valid_token_gets_401(http: httpx.AsyncClient, live_api: LiveApi) -> None:
    future = int(time.time()) + 3600
    token = issuer(live_api).sign_raw(claims_for(live_api, nbf=future, exp=future + 600))
    await assert_401(http, token, "not valid yet")


async def test_token_issued_in_the_future_gets_401(
    http: httpx.AsyncClient, live_api: LiveApi
) -> None:
    future = int(time.time()) + 3600
    token = issuer(live_api).sign_raw(claims_for(live_api, iat=future, exp=future + 600))
    await assert_401(http, token, "not valid yet")


async def test_wrong_issuer_gets_401(http: httpx.AsyncClient, live_api: LiveApi) -> None:
    token = issuer(live_api).sign_raw(claims_for(live_api, iss="https://evil.example.com"))
    await assert_401(http, token, "another issuer")


async def test_wrong_audience_gets_401(http: httpx.AsyncClient, live_api: LiveApi) -> None:
    token = issuer(live_api).sign_raw(claims_for(live_api, aud="some-other-api"))
    await assert_401(http, token, "another audience")


async def test_missing_exp_gets_401(http: httpx.AsyncClient, live_api: LiveApi) -> None:
    claims = claims_for(live_api)
    del claims["exp"]
    await assert_401(http, issuer(live_api).sign_raw(claims), "exp")


async def test_alg_none_gets_401(http: httpx.AsyncClient, live_api: LiveApi) -> None:
    token = unsigned({"alg": "none", "typ": "JWT"}, claims_for(live_api)) + "."
    await assert_401(http, token, "'none' is not accepted")


async def test_hs256_signed_with_the_public_key_gets_401(
    http: httpx.AsyncClient, live_api: LiveApi
) -> None:
    token = keyed_with_the_public_key(live_api, "HS256", hashlib.sha256, claims_for(live_api))
    await assert_401(http, token, "'HS256' is not accepted")


async def test_tampered_token_gets_401(http: httpx.AsyncClient, live_api: LiveApi) -> None:
    forged = promoted_to_admin(live_api.token(unique("mallory-"), "customer"))
    await assert_401(http, forged, "signature is invalid")


async def test_unknown_key_id_gets_401(http: httpx.AsyncClient, live_api: LiveApi) -> None:
    token = issuer(live_api).sign_raw(claims_for(live_api), headers={"kid": "not-our-key"})
    await assert_401(http, token, "signing key is unknown")


async def test_garbage_token_gets_401(http: httpx.AsyncClient) -> None:
    await assert_401(http, "not.a.jwt", "malformed")


async def test_logout_revokes_the_token(http: httpx.AsyncClient, live_api: LiveApi) -> None:
    token = live_api.token(unique("bob-"), "customer")
    headers = {"Authorization": f"Bearer {token}"}
    assert (await http.get("/auth/userinfo", headers=headers)).status_code == 200
    out = await http.post("/auth/logout", headers=headers)
    assert out.status_code == 200, out.text
    assert out.json()["data"]["revoked"] is True
    await assert_401(http, token, "revoked")
    # Revoked for every endpoint, not only /auth.
    assert (await http.get("/users/me", headers=headers)).status_code == 401


async def test_refresh_issues_a_new_token_and_revokes_the_old(
    http: httpx.AsyncClient, live_api: LiveApi
) -> None:
    sub = unique("carol-")
    old = live_api.token(sub, "provider")
    response = await http.post("/auth/refresh", headers={"Authorization": f"Bearer {old}"})
    assert response.status_code == 200, response.text
    new = response.json()["data"]["access_token"]
    info = await http.get("/auth/userinfo", headers={"Authorization": f"Bearer {new}"})
    assert info.json()["data"]["sub"] == sub
    assert info.json()["data"]["roles"] == ["provider"]
    await assert_401(http, old, "revoked")


async def test_zitadel_roles_claim_is_understood(key_file: Path) -> None:
    claim = "urn:zitadel:iam:org:project:roles"
    settings = api_settings(key_file, roles_claim=claim)
    with running(settings) as server:
        async with httpx.AsyncClient(base_url=f"{server.base_url}/api/v1") as http:
            dev = DevIssuer.from_settings(settings)
            now = int(time.time())
            token = dev.sign_raw(
                {
                    "iss": settings.oidc_issuer,
                    "aud": settings.oidc_audience,
                    "sub": unique("z-"),
                    "iat": now,
                    "exp": now + 600,
                    claim: {"provider": {"123": "erynoa.zitadel.cloud"}, "admin": {}},
                }
            )
            info = await http.get("/auth/userinfo", headers={"Authorization": f"Bearer {token}"})
            assert info.status_code == 200, info.text
            assert info.json()["data"]["roles"] == ["admin", "provider"]


async def test_an_oidc_provider_server_fetches_jwks_and_has_no_dev_login(
    live_api: LiveApi, tmp_path: Path
) -> None:
    # A production-like server: no development issuer; it trusts the live API's issuer as
    # its OIDC provider and must find the key through discovery + JWKS over HTTP.
    settings = api_settings(
        tmp_path / "unused-key.pem",
        dev_issuer_enabled=False,
        oidc_issuer=live_api.settings.oidc_issuer,
    )
    with running(settings) as server:
        async with httpx.AsyncClient(base_url=f"{server.base_url}/api/v1") as http:
            token = live_api.token(unique("oidc-user-"), "customer")
            info = await http.get("/auth/userinfo", headers={"Authorization": f"Bearer {token}"})
            assert info.status_code == 200, info.text

            login = await http.post("/auth/token", json={"sub": "x"})
            assert login.status_code == 404
            assert login.json()["error"]["code"] == "NOT_FOUND"
            assert (await http.get("/auth/dev/jwks")).status_code == 404
            refresh = await http.post("/auth/refresh", headers={"Authorization": f"Bearer {token}"})
            assert refresh.status_code == 404
    assert not (tmp_path / "unused-key.pem").exists()
