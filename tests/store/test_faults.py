"""Faults that pass, as the SQLite engine reports them: a file locked by another writer past
the timeout, and a full disk. (PostgreSQL's are in tests/api/test_faults.py.)"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from proxy.store import Store, open_store
from proxy.store.faults import StorageFull, StoreUnavailable
from tests.support.full_disk import fill, small_filesystem

pytestmark = pytest.mark.anyio


async def test_a_file_locked_by_another_writer_is_unavailable_after_the_timeout(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jetty-proxy.db"
    store = open_store(f"sqlite:///{path}", timeout=0.2)
    await store.migrate()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(StoreUnavailable):
            await store.create_trajectory("acme", "task")
        other.execute("ROLLBACK")
        assert (await store.create_trajectory("acme", "task")).collection == "acme"
    finally:
        other.close()
        await store.close()


async def test_a_full_disk_is_storage_full_and_passes(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "disk", size="2m") as disk:
        store = open_store(f"sqlite:///{disk / 'jetty-proxy.db'}")
        try:
            await store.migrate()
            filler = fill(disk)
            with pytest.raises(StorageFull):
                await _write_until_it_fails(store)
            filler.unlink()
            assert (await store.create_trajectory("acme", "task")).collection == "acme"
        finally:
            await store.close()


async def _write_until_it_fails(store: Store) -> None:
    # The pages SQLite already holds take a few writes before the disk is asked for more.
    for _ in range(100):
        await store.create_trajectory("acme", "task", error="x" * 4096)
