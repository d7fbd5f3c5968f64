"""Hand-made JWTs for the attacks the API must refuse (unsigned, HMAC keyed with the issuer's
public key, a payload edited after signing); the authentication tests and the attack suite
share them."""

from __future__ import annotations

import base64
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from api.auth import DevIssuer, load_or_create_dev_key
from tests.conftest import unique
from tests.integration.api.conftest import LiveApi


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"


def claims_for(live_api: LiveApi, **overrides: Any) -> dict[str, Any]:
    """Valid claims for the live API's issuer; an override of ``None`` drops the claim."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": live_api.settings.oidc_issuer,
        "aud": live_api.settings.oidc_audience,
        "sub": unique("user-"),
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": unique(),
        "roles": ["customer"],
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def keyed_with_the_public_key(
    live_api: LiveApi,
    alg: str,
    digest: Callable[..., Any],
    claims: dict[str, Any],
) -> str:
    """The classic confusion attack: HMAC keyed with the issuer's *public* key, which anyone
    has, under the issuer's own key id."""
    key = load_or_create_dev_key(Path(live_api.settings.dev_signing_key_file))
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    kid = DevIssuer.from_settings(live_api.settings).kid
    signing_input = unsigned({"alg": alg, "typ": "JWT", "kid": kid}, claims)
    signature = hmac.new(public_pem, signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64(signature)}"


def promoted_to_admin(token: str) -> str:
    """``token`` with its roles edited to admin after signing (the signature left as it was)."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["roles"] = ["admin"]
    return f"{header}.{b64(json.dumps(claims).encode())}.{signature}"
