"""The attack suite runs against the real API, served as ``tests/integration/api`` serves it:
the same fixtures (a live server on a free loopback port, the real local stack, development
tokens), imported from there so both tiers test the same thing. Every attack is loopback
traffic with bounded loops."""

from __future__ import annotations

from tests.integration.api.conftest import (
    actors,
    http,
    key_file,
    live_api,
    pg,
    probe_topic,
)

__all__ = ["actors", "http", "key_file", "live_api", "pg", "probe_topic"]
