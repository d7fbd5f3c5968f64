"""The read model's tests fold hand-made sagas into a read model of the module's own (topics and
database): they must not reach the real agents, and a rebuild compares the whole read model."""

from tests.integration.materializing import (  # noqa: F401 - pytest finds fixtures by name
    db,
    publisher,
    running_materializer,
    settings,
)
