"""SQLite engine: the embedded default, one file in the data directory.

sqlite3 is blocking, so every call runs in a worker thread. One connection in
WAL mode serves the process; a lock serialises access to it, which is what
SQLite does internally anyway. ``BEGIN IMMEDIATE`` around multi-statement
writes keeps them atomic against other processes on the same file.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import anyio.to_thread

from proxy.store.batch import Coalescer
from proxy.store.crypto import SecretBox
from proxy.store.errors import (
    DuplicateKey,
    RecordNotFound,
    StorageFull,
    StoreError,
    StoreUnavailable,
)
from proxy.store.migrations import migrations
from proxy.store.notify import ChangeNotifier
from proxy.store.sql import SQLStore
from proxy.store.sql.database import Json, Params, Row, Statement

T = TypeVar("T")
# Primary result codes (the low byte of extended ones).
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_FULL = 5, 6, 13
#: trajectory id, event type, JSON data, timestamp
_Append = tuple[str, str, str, str]
APPEND_BATCH = 256


class SQLiteStore(SQLStore):
    """The store on one SQLite file (created with its directory on first use)."""

    def __init__(self, path: Path, *, secret_box: SecretBox | None = None, timeout: float = 5.0):
        self.path = path
        super().__init__(SQLiteDatabase(path, timeout=timeout), secret_box=secret_box)


class SQLiteDatabase:
    def __init__(self, path: Path, *, timeout: float = 5.0):
        self.path = path
        # How long a write waits for another process's lock on the file.
        self._busy_ms = max(1, round(timeout * 1000))
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        # Concurrent appends share one transaction (and one thread hop) per batch.
        self._appends: Coalescer[_Append, int | None] = Coalescer(
            self._append_batch, max_batch=APPEND_BATCH
        )

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA busy_timeout={self._busy_ms}")
            # WAL makes NORMAL safe against corruption; only the last commits may be lost
            # on power failure, never on a process crash.
            conn.execute("PRAGMA synchronous=NORMAL")
            self._conn = conn
        return self._conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            with self._lock:
                try:
                    return fn(self._connect())
                except sqlite3.IntegrityError as exc:
                    message = str(exc)
                    if "UNIQUE constraint failed" in message or "PRIMARY KEY" in message:
                        raise DuplicateKey(f"SQLite: {message}") from exc
                    if "FOREIGN KEY constraint failed" in message:
                        raise RecordNotFound(f"SQLite: {message}") from exc
                    raise StoreError(f"SQLite error: {message}") from exc
                except sqlite3.Error as exc:
                    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
                    if code == _SQLITE_FULL:
                        raise StorageFull(f"SQLite: {exc}") from exc
                    if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
                        raise StoreUnavailable(f"SQLite: {exc}") from exc
                    raise StoreError(f"SQLite error: {exc}") from exc

        return await anyio.to_thread.run_sync(call)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        def fetch(conn: sqlite3.Connection) -> Row | None:
            row = conn.execute(sql, _bind(params)).fetchone()
            return None if row is None else dict(row)

        return await self._run(fetch)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._run(
            lambda conn: [dict(row) for row in conn.execute(sql, _bind(params)).fetchall()]
        )

    async def execute(self, sql: str, params: Params = ()) -> int:
        return await self._run(lambda conn: conn.execute(sql, _bind(params)).rowcount)

    async def atomic(self, statements: Sequence[Statement]) -> None:
        def run(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                for sql, params in statements:
                    conn.execute(sql, _bind(params))

        await self._run(run)

    async def insert_if(self, guard: Statement, insert: Statement) -> Row | None:
        def run(conn: sqlite3.Connection) -> Row | None:
            # BEGIN IMMEDIATE takes the file's write lock before the guard reads: another
            # process's insert_if waits for this one (busy_timeout) and then sees its row.
            with _transaction(conn):
                allowed = conn.execute(guard[0], _bind(guard[1])).fetchone()
                if allowed is None or not allowed[0]:
                    return None
                row = conn.execute(insert[0], _bind(insert[1])).fetchone()
                return None if row is None else dict(row)

        return await self._run(run)

    async def append_event(
        self, trajectory_id: str, event_type: str, data: Json, created_at: datetime
    ) -> int | None:
        return await self._appends.submit(
            (trajectory_id, event_type, data.dumps(), _iso(created_at))
        )

    async def _append_batch(self, batch: Sequence[_Append]) -> list[int | None]:
        def append(conn: sqlite3.Connection) -> list[int | None]:
            seqs: list[int | None] = []
            with _transaction(conn):
                for trajectory_id, event_type, data, stamp in batch:
                    row = conn.execute(
                        "UPDATE trajectories SET last_seq = last_seq + 1, updated_at = ?"
                        " WHERE id = ? RETURNING last_seq",
                        (stamp, trajectory_id),
                    ).fetchone()
                    if row is None:
                        seqs.append(None)
                        continue
                    conn.execute(
                        "INSERT INTO events (trajectory_id, seq, type, data, created_at)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (trajectory_id, row[0], event_type, data, stamp),
                    )
                    seqs.append(int(row[0]))
            return seqs

        return await self._run(append)

    async def announce(self, trajectory_id: str) -> None:
        """Nothing: other processes on the file are not told, they poll."""

    async def listen(self, notifier: ChangeNotifier) -> None:
        """Nothing to hear: SQLite serves one process (others on the file poll)."""

    async def migrate(self) -> None:
        def apply(conn: sqlite3.Connection) -> None:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            current = row[0] or 0
            for version, statements in enumerate(migrations("sqlite"), start=1):
                if version <= current:
                    continue
                with _transaction(conn):
                    for statement in statements:
                        conn.execute(statement)
                    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

        await self._run(apply)

    async def close(self) -> None:
        def close(_: sqlite3.Connection) -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        if self._conn is not None:
            await self._run(close)


class _transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back on any error."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self._conn.execute("COMMIT" if kind is None else "ROLLBACK")


def _bind(params: Params) -> tuple[object, ...]:
    return tuple(_value(value) for value in params)


def _value(value: object) -> object:
    if isinstance(value, Json):
        return value.dumps()
    if isinstance(value, datetime):
        return _iso(value)
    return value


def _iso(moment: datetime) -> str:
    # Fixed width, so that text order is time order.
    return moment.isoformat(timespec="microseconds")
