"""API keys on every engine: only hashes stored, revocation by id or prefix."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from proxy.store import Store, open_store
from proxy.store.migrations import migrations

pytestmark = pytest.mark.anyio


async def test_keys_round_trip(store: Store) -> None:
    assert not await store.has_keys()
    key = await store.create_key("hash-1", "jp-abcdef", ("alpha", "beta"), False, "ci")
    admin = await store.create_key("hash-2", "jp-ghijkl", (), True, None)
    assert await store.has_keys()

    found = await store.find_key("hash-1")
    assert found == key
    assert found.collections == ("alpha", "beta")
    assert found.can_access("beta") and not found.can_access("gamma")
    assert (await store.find_key("hash-2")) == admin
    assert admin.can_access("anything")
    assert await store.find_key("nope") is None
    assert [k.id for k in await store.list_keys()] == [key.id, admin.id]


async def test_revoke_by_id_and_prefix(store: Store) -> None:
    first = await store.create_key("h1", "jp-111111", ("a",), False, None)
    await store.create_key("h2", "jp-222222", ("a",), False, None)
    assert await store.revoke_key(first.id)
    assert not await store.revoke_key(first.id)
    assert await store.find_key("h1") is None
    assert await store.revoke_key("jp-222222")
    assert not await store.has_keys()
    listed = await store.list_keys()
    assert all(k.revoked_at is not None for k in listed)


async def test_migrate_is_idempotent(store: Store) -> None:
    await store.create_key("h", "jp-333333", ("a",), False, None)
    await store.migrate()
    await store.ping()
    assert await store.has_keys()


async def test_a_database_from_before_the_trajectory_tables_keeps_its_keys(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for statement in migrations("sqlite")[0]:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version VALUES (1)")
        conn.execute(
            "INSERT INTO api_keys (id, key_hash, prefix, collections, admin, created_at)"
            " VALUES ('k1', 'old-hash', 'jp-oldold', 'alpha', 0, '2025-01-01T00:00:00+00:00')"
        )
    store = open_store(f"sqlite:///{path}")
    try:
        await store.migrate()
        key = await store.find_key("old-hash")
        assert key is not None and key.collections == ("alpha",)
        assert (await store.create_trajectory("alpha", "t")).status == "pending"
    finally:
        await store.close()
