"""The attack suite runs against the real API exactly as ``tests/integration/api`` does: the
same uvicorn server on loopback, the same stack, the same fixtures (imported, not copied).
Every attack is loopback traffic with bounded loops."""

from tests.integration.api.conftest import (  # noqa: F401 - pytest finds fixtures by name
    actors,
    http,
    key_file,
    live_api,
    pg,
    probe_topic,
)
