"""The attack suite runs against the same live API as ``tests/integration/api``: its fixtures
are imported here so every ``tests/security`` file gets them by name."""

from tests.integration.api.conftest import (  # noqa: F401 (fixtures, found by name)
    actors,
    http,
    key_file,
    live_api,
    pg,
    probe_topic,
)
