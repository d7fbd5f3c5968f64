"""``erynoa.db.GatheredDeletes``: many callers' ids deleted in one call, and what it still
answers for after the deletion (a reader may have seen the row just before)."""

from __future__ import annotations

import pytest

from erynoa import db
from erynoa.db import GatheredDeletes


async def test_ids_are_deleted_together_and_still_known_a_moment_after() -> None:
    calls: list[list[str]] = []

    async def delete(ids: list[str]) -> None:
        calls.append(ids)

    deletes = GatheredDeletes("test", delete, gather_s=0.01)
    deletes.add(["a", "b"])
    deletes.add(["c"])
    assert "a" in deletes  # waiting
    await deletes.flush()
    assert calls == [["a", "b", "c"]]
    assert all(row_id in deletes for row_id in "abc")  # deleted a moment ago
    assert "z" not in deletes
    await deletes.close()


async def test_a_failed_delete_is_not_taken_for_done(caplog: pytest.LogCaptureFixture) -> None:
    async def delete(ids: list[str]) -> None:
        raise OSError("database away")

    deletes = GatheredDeletes("test", delete, gather_s=0.01)
    deletes.add(["a"])
    await deletes.flush()
    assert "a" not in deletes  # still in the table: the relay publishes it again
    assert "not deleted" in caplog.text
    await deletes.close()


async def test_deleted_ids_are_forgotten_after_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    async def delete(ids: list[str]) -> None:
        return None

    deletes = GatheredDeletes("test", delete, gather_s=0.01)
    deletes.add(["a"])
    await deletes.flush()
    assert "a" in deletes
    # No other deletion follows (a quiet process): the answer still ages out.
    monkeypatch.setattr(db, "REMEMBER_DELETED_S", 0.0)
    assert "a" not in deletes
    deletes.add(["b"])
    await deletes.flush()
    assert not deletes._deleted  # pruned as deletions go on, not only hidden
    await deletes.close()
