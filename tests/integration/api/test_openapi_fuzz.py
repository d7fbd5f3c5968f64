"""Schemathesis against the live OpenAPI document: generated requests, valid and invalid, for
every operation, on a short bounded budget. No input may produce a 5xx, an undocumented status,
or a response that breaks its documented schema.

The document comes from the same ``create_app`` at collection time (building the app connects
to nothing), so the operations are known before the server starts; the requests go over HTTP
to the live server. (Schemathesis' lazy ``from_fixture`` loader does not work with pytest 9.)

The caller holds every role (customer, provider, admin), so role-gated code runs too; each
generated request gets a fresh token, so a generated ``/auth/logout`` revokes only its own.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from erynoa.settings import Settings
from tests.conftest import unique
from tests.integration.api.conftest import LiveApi

MAX_EXAMPLES = 25


schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())


@pytest.mark.integration
@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_generated_requests_never_break_the_contract(case: Any, live_api: LiveApi) -> None:
    token = live_api.token(unique("fuzz-"), "customer", "provider", "admin")
    if case.path.endswith("/dlq/replay") and isinstance(case.body, dict):
        # A real replay re-drives the shared stack's dead letters under other tests' feet;
        # its plan runs the same code up to the publish.
        case.body["dry_run"] = True
    case.call_and_validate(
        base_url=live_api.base_url,
        headers={"Authorization": f"Bearer {token}"},
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
        timeout=30,
    )
