"""The adapter each engine implements, and the value conventions both sides keep.

SQL is written once with ``?`` placeholders (the PostgreSQL adapter rewrites them), so it
must not contain a literal ``?`` or ``%``. Parameters are plain Python values plus
:class:`Json` for JSON columns and timezone-aware datetimes; rows come back as dicts whose
timestamp and JSON columns are read with :func:`as_datetime` and :func:`as_json`, which
accept either engine's representation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from proxy.store.notify import ChangeNotifier

Row = dict[str, Any]
Params = Sequence[object]
Statement = tuple[str, Params]


@dataclass(frozen=True)
class Json:
    """A parameter bound for a JSON column."""

    value: Any

    def dumps(self) -> str:
        return json.dumps(self.value, separators=(",", ":"), ensure_ascii=False)


class Database(Protocol):
    """One engine's connection handling, statement execution and error mapping.

    Foreign-key violations are raised as :class:`~proxy.store.errors.RecordNotFound`, unique
    violations as :class:`~proxy.store.errors.DuplicateKey`, anything else as :class:`StoreError`.
    """

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None: ...

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]: ...

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; returns the number of rows it changed."""

    async def atomic(self, statements: Sequence[Statement]) -> None:
        """Run the statements in one transaction: all of them or none."""

    async def insert_if(self, guard: Statement, insert: Statement) -> Row | None:
        """Run ``guard`` (one row, one column) and, when its value is true, ``insert``, whose
        returned row is the result; None when the guard said no. Both run in one transaction
        that no other ``insert_if`` on the database, from any process, interleaves with."""

    async def append_event(
        self, trajectory_id: str, event_type: str, data: Json, created_at: datetime
    ) -> int | None:
        """Bump the trajectory's ``last_seq`` and insert the event under it, atomically.

        Returns the new seq, or None when the trajectory does not exist.
        """

    async def announce(self, trajectory_id: str) -> None:
        """Tell the other processes on the database that the trajectory's record changed
        (its events are announced by `append_event`). Best effort: they also poll."""

    async def listen(self, notifier: ChangeNotifier) -> None:
        """Until cancelled, pass on to ``notifier`` the changes other processes announce, and
        tell it whether they are heard (`ChangeNotifier.hearing`); return at once on an engine
        that cannot hear them."""

    async def migrate(self) -> None: ...

    async def close(self) -> None: ...


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_datetime(value: Any) -> datetime:
    """A UTC datetime from a column, whichever engine (and session time zone) wrote it."""
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def as_optional_datetime(value: Any) -> datetime | None:
    return None if value is None else as_datetime(value)


def as_json(value: Any) -> Any:
    if isinstance(value, str | bytes | bytearray):
        return json.loads(value)
    return value


def placeholders(count: int) -> str:
    """``?, ?, ?`` for an ``IN (…)`` list of ``count`` values."""
    return ", ".join("?" * count)
