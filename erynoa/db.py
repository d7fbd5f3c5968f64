"""PostgreSQL: the connection pool every runtime uses, and the migration runner.

Migrations are the ``NNNN_name.sql`` files under ``migrations/``, applied in order, each in
its own transaction, under an advisory lock so concurrent starters cannot race. An applied
file's checksum is kept; editing it afterwards is refused rather than silently ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from erynoa.settings import PROJECT_ROOT, Settings

MIGRATIONS_DIR = PROJECT_ROOT / "migrations"
# An arbitrary constant: the advisory lock id only has to be the same for every migrator.
_log = logging.getLogger("erynoa.db")
_MIGRATION_LOCK_ID = 0x45_52_59_4E_4F_41
# How long ``GatheredDeletes`` still answers for a deleted id: longer than any transaction that
# could have read the row just before its DELETE committed takes to get to its next step.
REMEMBER_DELETED_S = 30.0
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def _encode_jsonb(value: Any) -> bytes:
    return b"\x01" + json.dumps(value, separators=(",", ":")).encode()


def _decode_jsonb(data: bytes) -> Any:
    return json.loads(data[1:])  # the first byte is jsonb's binary format version (1)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb columns come and go as Python objects; binary, so COPY can carry them too.
    await conn.set_type_codec(
        "jsonb",
        encoder=_encode_jsonb,
        decoder=_decode_jsonb,
        schema="pg_catalog",
        format="binary",
    )


async def _release_connection(conn: asyncpg.Connection) -> None:
    """What a connection needs on its way back to the pool: nothing beyond asyncpg's rollback.

    asyncpg's default reset sends ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL`` on every release: one more round trip per handled message and per request
    (profiled: ~10% of a handler's statements). Our pooled code takes only transaction-scoped
    advisory locks, never LISTENs, SETs session variables or leaves cursors open, so the query
    undoes nothing; an open transaction is still rolled back by asyncpg before this runs.
    """
    return None


async def create_pool(settings: Settings, **overrides: Any) -> asyncpg.Pool:
    """The runtime's pool (call once at start-up; close it at shutdown)."""
    options: dict[str, Any] = {
        "min_size": settings.db_pool_min,
        "max_size": settings.db_pool_max,
        "init": _init_connection,
        "reset": _release_connection,
        "command_timeout": 30,
    }
    options.update(overrides)
    pool = await asyncpg.create_pool(settings.database_url, **options)
    assert pool is not None  # asyncpg types it Optional; it is only None on a closed pool
    return pool


# Errors of a server that is not there (yet): down, starting, failing over, refusing more
# connections. A wrong password or database name is none of these and fails at once.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
)


async def wait_for_pool(settings: Settings, **overrides: Any) -> asyncpg.Pool:
    """``create_pool``, waiting for as long as PostgreSQL is unreachable.

    For the long-running consumers (agents, materializer): one that starts, or is restarted,
    while PostgreSQL is down waits for it instead of exiting, so an outage never uses up a
    supervisor's restarts and leaves the system needing an operator.
    """
    delay = 0.5
    while True:
        try:
            return await create_pool(settings, **overrides)
        except _UNREACHABLE as exc:
            _log.warning("PostgreSQL unreachable (%s); retrying in %.1f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    pass


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_FILE.match(path.name)
        if not match:
            raise MigrationError(f"{path}: migration files are named NNNN_snake_case.sql")
        found.append(Migration(match.group(1), match.group(2), path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"{directory}: two migrations share a version number")
    return found


async def migrate(database_url: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every pending migration; returns the names applied (empty when up to date)."""
    migrations = discover(directory)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_ID)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version text PRIMARY KEY,
                       name text NOT NULL,
                       checksum text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
            applied = {r["version"]: r for r in rows}
            done: list[str] = []
            for migration in migrations:
                previous = applied.get(migration.version)
                if previous is not None:
                    if previous["checksum"] != migration.checksum:
                        raise MigrationError(
                            f"migrations/{migration.version}_{migration.name}.sql was changed "
                            "after it was applied; add a new migration instead"
                        )
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) "
                        "VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
                done.append(f"{migration.version}_{migration.name}")
            return done
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_ID)
    finally:
        await conn.close()


def sibling_url(database_url: str, name: str) -> str:
    """The URL of database ``name`` on the same server, with the same user."""
    server, _, _ = database_url.rpartition("/")
    return f"{server}/{name}"


async def create_migrated_database(database_url: str, name: str) -> str:
    """Create database ``name`` next to ``database_url``'s and migrate it; returns its URL.

    For a private copy of the system on a shared server (a benchmark, a test session): its
    agents' timers then see only its own rows — two copies sharing one database would time out
    each other's bookings and publish the result to their own topics.
    """
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = sibling_url(database_url, name)
    await migrate(url)
    return url


async def drop_database(database_url: str, name: str) -> None:
    """Drop database ``name`` next to ``database_url``'s, whoever is still connected."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


class GatheredDeletes:
    """Deletes rows by id in the background, the ids of many callers in one statement.

    It waits ``gather_s`` after the first id it is given, so at a low rate, too, one transaction
    (and one WAL flush) serves many callers instead of each its own. For rows whose deletion
    may be late or fail: published outbox rows, which a relay publishes again (with the same
    event id) only once they are far older than ``gather_s``. A failed delete is logged.
    """

    def __init__(
        self,
        name: str,
        delete: Callable[[list[str]], Awaitable[object]],
        gather_s: float = 0.5,
    ) -> None:
        self._name = name
        self._delete = delete
        self._gather_s = gather_s
        self._pending: list[str] = []
        self._waiting: set[str] = set()
        """The ids added and not yet deleted (or given up on), in-flight ones included."""
        self._deleted: dict[str, float] = {}
        """The ids deleted in the last ``REMEMBER_DELETED_S``, with when (oldest first)."""
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task = asyncio.create_task(self._run(), name=name)

    def add(self, ids: Sequence[str]) -> None:
        self._pending.extend(ids)
        self._waiting.update(ids)
        self._idle.clear()
        self._wake.set()

    def __contains__(self, row_id: object) -> bool:
        """Whether the row of ``row_id`` waits for its deletion here, or was deleted a moment
        ago: a reader of the table may still see it (read before the DELETE committed), but
        its work is done."""
        if not isinstance(row_id, str):
            return False
        if row_id in self._waiting:
            return True
        deleted_at = self._deleted.get(row_id)
        return deleted_at is not None and time.monotonic() - deleted_at < REMEMBER_DELETED_S

    async def flush(self) -> None:
        """Wait until what was added so far is deleted (or its deletion failed and was logged)."""
        await self._idle.wait()

    async def close(self, wait_s: float | None = None) -> None:
        """Stop, after what was added so far is deleted (waiting at most ``wait_s``; what is
        left then stays for the relay)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), wait_s)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self._gather_s)
            self._wake.clear()
            taken, self._pending = self._pending, []
            try:
                await self._delete(taken)
                self._remember_deleted(taken)
            except Exception as exc:
                _log.warning("%s: %d row(s) not deleted: %r", self._name, len(taken), exc)
            finally:
                self._waiting.difference_update(taken)
            if not self._pending:
                self._idle.set()

    def _remember_deleted(self, ids: Sequence[str]) -> None:
        now = time.monotonic()
        for row_id in ids:
            self._deleted.pop(row_id, None)  # to the end: the dict stays oldest first
            self._deleted[row_id] = now
        while self._deleted:
            oldest = next(iter(self._deleted))
            if now - self._deleted[oldest] < REMEMBER_DELETED_S:
                break
            del self._deleted[oldest]
