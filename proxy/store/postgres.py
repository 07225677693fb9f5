"""PostgreSQL engine, for several proxy processes sharing one database.

psycopg 3 in async mode over a connection pool, opened on first use (inside the
event loop that will use it) and dropped on close, so a store can be reopened in
another event loop.
Connections run in autocommit; multi-statement writes use explicit transactions.
Needs the ``postgres`` extra (``psycopg[binary]`` and ``psycopg-pool``).

Waits are bounded by ``timeout``: for a connection from the pool, for a new connection, and,
through TCP keepalives, for a server that stopped answering. A database that is stopped or
unreachable is a :class:`~proxy.store.faults.StoreUnavailable` within about that time, not a
hang; once it is back, the pool reconnects within seconds.

Several processes on one database hear each other's changes: writes NOTIFY, and `listen`
holds a connection of its own that LISTENs (see :mod:`proxy.store.pgnotify`).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import anyio
import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from proxy.store import pgnotify
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

Connection = psycopg.AsyncConnection[dict[str, Any]]

#: Any constant will do; it only has to be the same in every process.
_MIGRATION_LOCK = 0x6A657474
# insert_if's lock: per schema (installations sharing a server do not wait for each other),
# held until its transaction ends.
_INSERT_IF_LOCK = "SELECT pg_advisory_xact_lock(1785750377, hashtext(current_schema()))"
#: How long the pool may take to open (at start: a database starting beside the proxy).
_OPEN_TIMEOUT = 30.0
#: trajectory id, event type, data, timestamp
_Append = tuple[str, str, Json, datetime]
APPEND_BATCH = 256
# One statement per event: the row lock on the trajectory orders concurrent appends, and
# the counter and the event commit together, so seqs have no gaps and commit in order.
_APPEND_SQL = (
    "WITH bumped AS (UPDATE trajectories SET last_seq = last_seq + 1,"
    " updated_at = %s WHERE id = %s RETURNING id, last_seq)"
    " INSERT INTO events (trajectory_id, seq, type, data, created_at)"
    " SELECT id, last_seq, %s, %s, %s FROM bumped RETURNING seq"
)


class PostgresStore(SQLStore):
    """The store on a PostgreSQL database given by a ``postgresql://`` URL."""

    def __init__(
        self,
        url: str,
        *,
        secret_box: SecretBox | None = None,
        min_connections: int = 1,
        max_connections: int = 10,
        timeout: float = 5.0,
    ):
        self.url = url
        super().__init__(
            PostgresDatabase(
                url, min_size=min_connections, max_size=max_connections, timeout=timeout
            ),
            secret_box=secret_box,
        )


class PostgresDatabase:
    def __init__(self, url: str, *, min_size: int, max_size: int, timeout: float = 5.0):
        self._url = url
        self._min_size = min_size
        self._max_size = max_size
        self._timeout = timeout
        self._pool: AsyncConnectionPool[Connection] | None = None
        self._opening: anyio.Event | None = None
        # Names this store in its notifications (see proxy.store.pgnotify); the channel is
        # read on the first connection.
        self._origin = secrets.token_hex(4)
        self._channel = ""
        # Concurrent appends share one transaction (and one round trip) per batch.
        self._appends: Coalescer[_Append, int | None] = Coalescer(
            self._append_batch, max_batch=APPEND_BATCH
        )

    async def _open_pool(self) -> AsyncConnectionPool[Connection]:
        if self._pool is not None:
            return self._pool
        if self._opening is not None:
            # Another task is opening the pool: psycopg's pool must be opened only once.
            await self._opening.wait()
            if self._pool is None:
                raise StoreUnavailable("PostgreSQL is unreachable")
            return self._pool
        opening = self._opening = anyio.Event()
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            self._url,
            connection_class=psycopg.AsyncConnection[dict[str, Any]],
            kwargs={
                "autocommit": True,
                "row_factory": dict_row,
                **_network_limits(self._url, self._timeout),
            },
            min_size=self._min_size,
            max_size=self._max_size,
            open=False,
            timeout=self._timeout,
            # psycopg retries a lost connection with a doubling delay for this long, then
            # gives up and connects afresh on the next request: after an outage the pool is
            # back within seconds, not after a delay grown through the whole outage.
            reconnect_timeout=max(10.0, 2 * self._timeout),
            name="jetty-proxy",
        )
        try:
            await pool.open(wait=True, timeout=max(_OPEN_TIMEOUT, self._timeout))
            async with pool.connection() as conn:
                self._channel = await pgnotify.channel_of(conn)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await pool.close()
            if isinstance(exc, PoolTimeout | psycopg.Error):
                raise StoreUnavailable(f"PostgreSQL is unreachable: {exc}") from exc
            raise
        else:
            self._pool = pool
        finally:
            self._opening = None
            opening.set()
        return pool

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        pool = await self._open_pool()
        try:
            async with pool.connection() as conn:
                yield conn
        except pg_errors.UniqueViolation as exc:
            raise DuplicateKey(f"PostgreSQL: {exc}") from exc
        except pg_errors.ForeignKeyViolation as exc:
            raise RecordNotFound(f"PostgreSQL: {exc}") from exc
        except pg_errors.DiskFull as exc:
            raise StorageFull(f"PostgreSQL: {exc}") from exc
        except psycopg.OperationalError as exc:
            # Lost or refused connections, a server shutting down or out of resources.
            raise StoreUnavailable(f"PostgreSQL is unavailable: {exc}") from exc
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL error: {exc}") from exc
        except PoolTimeout as exc:
            raise StoreUnavailable(
                f"PostgreSQL did not give a connection within {self._timeout:g} s: {exc}"
            ) from exc

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        async with self._connection() as conn:
            cursor = await conn.execute(_sql(sql), _bind(params))
            return await cursor.fetchone()

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        async with self._connection() as conn:
            cursor = await conn.execute(_sql(sql), _bind(params))
            return await cursor.fetchall()

    async def execute(self, sql: str, params: Params = ()) -> int:
        async with self._connection() as conn:
            cursor = await conn.execute(_sql(sql), _bind(params))
            return cursor.rowcount

    async def atomic(self, statements: Sequence[Statement]) -> None:
        async with self._connection() as conn, conn.transaction():
            for sql, params in statements:
                await conn.execute(_sql(sql), _bind(params))

    async def insert_if(self, guard: Statement, insert: Statement) -> Row | None:
        async with self._connection() as conn, conn.transaction():
            # Under READ COMMITTED each statement sees what committed before it began: once
            # the lock is held, the guard counts every row an earlier holder inserted.
            await conn.execute(_INSERT_IF_LOCK)
            cursor = await conn.execute(_sql(guard[0]), _bind(guard[1]))
            allowed = await cursor.fetchone()
            if allowed is None or not next(iter(allowed.values())):
                return None
            cursor = await conn.execute(_sql(insert[0]), _bind(insert[1]))
            return await cursor.fetchone()

    async def append_event(
        self, trajectory_id: str, event_type: str, data: Json, created_at: datetime
    ) -> int | None:
        return await self._appends.submit((trajectory_id, event_type, data, created_at))

    async def _append_batch(self, batch: Sequence[_Append]) -> list[int | None]:
        # Lock trajectories in id order (stable, so one run's events keep their order):
        # batches from several processes then never deadlock on each other.
        order = sorted(range(len(batch)), key=lambda i: batch[i][0])
        seqs: list[int | None] = [None] * len(batch)
        async with self._connection() as conn, conn.transaction():
            cursors = []
            async with conn.pipeline():
                for i in order:
                    trajectory_id, event_type, data, created_at = batch[i]
                    cursor = conn.cursor()
                    await cursor.execute(
                        _APPEND_SQL,
                        (created_at, trajectory_id, event_type, Jsonb(data.value), created_at),
                    )
                    cursors.append((i, cursor))
                # Told to the other processes when (and if) the batch commits: one notification.
                await conn.execute(
                    pgnotify.NOTIFY_SQL,
                    (self._channel, self._payload(pgnotify.EVENTS, {item[0] for item in batch})),
                )
            for i, cursor in cursors:
                row = await cursor.fetchone()
                seqs[i] = None if row is None else int(row["seq"])
        return seqs

    async def announce(self, trajectory_id: str) -> None:
        async with self._connection() as conn:
            await conn.execute(
                pgnotify.NOTIFY_SQL,
                (self._channel, self._payload(pgnotify.RECORD, {trajectory_id})),
            )

    async def listen(self, notifier: ChangeNotifier) -> None:
        options: dict[str, object] = dict(_network_limits(self._url, self._timeout))
        if "application_name" not in conninfo_to_dict(self._url):
            options["application_name"] = "jetty-proxy-listen"
        await pgnotify.Listener(self._url, options, self._origin).run(notifier)

    def _payload(self, kind: pgnotify.Kind, trajectory_ids: Collection[str]) -> str:
        return pgnotify.payload(kind, self._origin, trajectory_ids)

    async def migrate(self) -> None:
        async with self._connection() as conn, conn.transaction():
            # Several processes may start at once; one migrates, the others wait here.
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
            )
            cursor = await conn.execute("SELECT MAX(version) AS version FROM schema_version")
            row = await cursor.fetchone()
            current = (row or {}).get("version") or 0
            for version, statements in enumerate(migrations("postgres"), start=1):
                if version <= current:
                    continue
                for statement in statements:
                    await conn.execute(statement)
                await conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()


def _network_limits(url: str, timeout: float) -> dict[str, int]:
    """libpq options that bound each wait on the network by about ``timeout`` (unless the
    URL sets them): connecting, and a server that stops answering mid-query (keepalives,
    and TCP_USER_TIMEOUT for data it never acknowledges)."""
    seconds = max(1, round(timeout))
    limits = {
        "connect_timeout": max(2, seconds),
        "keepalives": 1,
        "keepalives_idle": seconds,
        "keepalives_interval": 1,
        "keepalives_count": 3,
        "tcp_user_timeout": seconds * 1000,
    }
    given = conninfo_to_dict(url)
    return {name: value for name, value in limits.items() if name not in given}


def _sql(sql: str) -> str:
    return sql.replace("?", "%s")


def _bind(params: Params) -> tuple[object, ...]:
    return tuple(Jsonb(value.value) if isinstance(value, Json) else value for value in params)
