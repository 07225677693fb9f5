"""SQLite engine: the embedded default, one file in the data directory.

sqlite3 is blocking, so every call runs in a worker thread. One connection in
WAL mode serves the process; a lock serialises access to it, which is what
SQLite does internally anyway.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import anyio.to_thread

from proxy.store.base import ApiKey, StoreError
from proxy.store.migrations import SQLITE_MIGRATIONS

T = TypeVar("T")


class SQLiteStore:
    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=5000")
            self._conn = conn
        return self._conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            with self._lock:
                try:
                    return fn(self._connect())
                except sqlite3.Error as exc:
                    raise StoreError(f"SQLite error: {exc}") from exc

        return await anyio.to_thread.run_sync(call)

    async def migrate(self) -> None:
        def apply(conn: sqlite3.Connection) -> None:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            current = row[0] or 0
            for version, script in enumerate(SQLITE_MIGRATIONS, start=1):
                if version <= current:
                    continue
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in script.split(";\n"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise

        await self._run(apply)

    async def ping(self) -> None:
        await self._run(lambda conn: conn.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        def close(_: sqlite3.Connection) -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        if self._conn is not None:
            await self._run(close)

    async def create_key(
        self,
        key_hash: str,
        prefix: str,
        collections: tuple[str, ...],
        admin: bool,
        name: str | None,
    ) -> ApiKey:
        key = ApiKey(
            id=uuid.uuid4().hex[:12],
            prefix=prefix,
            collections=collections,
            admin=admin,
            created_at=datetime.now(UTC),
            name=name,
        )

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO api_keys (id, key_hash, prefix, collections, admin, name, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    key.id,
                    key_hash,
                    prefix,
                    "\n".join(collections),
                    int(admin),
                    name,
                    key.created_at.isoformat(),
                ),
            )

        await self._run(insert)
        return key

    async def find_key(self, key_hash: str) -> ApiKey | None:
        row = await self._run(
            lambda conn: conn.execute(
                "SELECT * FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL", (key_hash,)
            ).fetchone()
        )
        return None if row is None else _key_from_row(row)

    async def list_keys(self) -> list[ApiKey]:
        rows = await self._run(
            lambda conn: conn.execute("SELECT * FROM api_keys ORDER BY created_at").fetchall()
        )
        return [_key_from_row(row) for row in rows]

    async def revoke_key(self, key_id: str) -> bool:
        now = datetime.now(UTC).isoformat()
        count = await self._run(
            lambda conn: (
                conn.execute(
                    "UPDATE api_keys SET revoked_at = ? WHERE (id = ? OR prefix = ?)"
                    " AND revoked_at IS NULL",
                    (now, key_id, key_id),
                ).rowcount
            )
        )
        return count > 0

    async def has_keys(self) -> bool:
        row = await self._run(
            lambda conn: conn.execute(
                "SELECT 1 FROM api_keys WHERE revoked_at IS NULL LIMIT 1"
            ).fetchone()
        )
        return row is not None


def _key_from_row(row: sqlite3.Row) -> ApiKey:
    return ApiKey(
        id=row["id"],
        prefix=row["prefix"],
        collections=tuple(c for c in row["collections"].split("\n") if c),
        admin=bool(row["admin"]),
        created_at=datetime.fromisoformat(row["created_at"]),
        revoked_at=datetime.fromisoformat(row["revoked_at"]) if row["revoked_at"] else None,
        name=row["name"],
    )
