"""A trajectory's append-only event log, its change notifications, and its artifacts."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from proxy.store.errors import RecordNotFound
from proxy.store.notify import Subscription
from proxy.store.records import Artifact, BlobInfo, StoredEvent
from proxy.store.redact import redact_value
from proxy.store.sql.core import SQLCore
from proxy.store.sql.database import Json, Row, as_datetime, as_json, utcnow


class EventsPart(SQLCore):
    async def append_event(
        self, trajectory_id: str, event_type: str, data: Mapping[str, Any]
    ) -> int:
        hidden = await self._redaction_secrets(await self._collection_of_trajectory(trajectory_id))
        payload = redact_value(dict(data), hidden, credential_fields=False) if hidden else data
        seq = await self._db.append_event(trajectory_id, event_type, Json(dict(payload)), utcnow())
        if seq is None:
            raise RecordNotFound(f"trajectory {trajectory_id} not found")
        self._notifier.notify(trajectory_id)
        return seq

    async def events_after(
        self, trajectory_id: str, after_seq: int = 0, *, limit: int | None = None
    ) -> list[StoredEvent]:
        sql = "SELECT * FROM events WHERE trajectory_id = ? AND seq > ? ORDER BY seq"
        params: tuple[object, ...] = (trajectory_id, after_seq)
        if limit is not None:
            sql += " LIMIT ?"
            params = (*params, limit)
        rows = await self._db.fetchall(sql, params)
        return [_event_from_row(row) for row in rows]

    @contextmanager
    def subscribe(self, trajectory_id: str) -> Iterator[Subscription]:
        with self._notifier.subscribe(trajectory_id) as subscription:
            yield subscription

    @contextmanager
    def subscribe_records(self, wanted: Callable[[str], bool]) -> Iterator[Subscription]:
        with self._notifier.watch(wanted) as subscription:
            yield subscription

    async def listen(self) -> None:
        await self._db.listen(self._notifier)

    async def add_artifact(
        self, trajectory_id: str, path: str, blob: BlobInfo, content_type: str
    ) -> tuple[Artifact, str | None]:
        previous = await self._db.fetchone(
            "SELECT blob_key FROM artifacts WHERE trajectory_id = ? AND path = ?",
            (trajectory_id, path),
        )
        row = await self._db.fetchone(
            "INSERT INTO artifacts (trajectory_id, path, bytes, sha256, content_type, blob_key,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (trajectory_id, path) DO UPDATE SET bytes = excluded.bytes,"
            " sha256 = excluded.sha256, content_type = excluded.content_type,"
            " blob_key = excluded.blob_key, created_at = excluded.created_at RETURNING *",
            (trajectory_id, path, blob.size, blob.sha256, content_type, blob.key, utcnow()),
        )
        assert row is not None
        replaced = previous["blob_key"] if previous and previous["blob_key"] != blob.key else None
        return _artifact_from_row(row), replaced

    async def list_artifacts(self, trajectory_id: str) -> list[Artifact]:
        rows = await self._db.fetchall(
            "SELECT * FROM artifacts WHERE trajectory_id = ? ORDER BY path", (trajectory_id,)
        )
        return [_artifact_from_row(row) for row in rows]

    async def get_artifact(self, trajectory_id: str, path: str) -> Artifact | None:
        row = await self._db.fetchone(
            "SELECT * FROM artifacts WHERE trajectory_id = ? AND path = ?", (trajectory_id, path)
        )
        return None if row is None else _artifact_from_row(row)


def _event_from_row(row: Row) -> StoredEvent:
    return StoredEvent(
        trajectory_id=row["trajectory_id"],
        seq=int(row["seq"]),
        type=row["type"],
        data=as_json(row["data"]),
        created_at=as_datetime(row["created_at"]),
    )


def _artifact_from_row(row: Row) -> Artifact:
    return Artifact(
        trajectory_id=row["trajectory_id"],
        path=row["path"],
        bytes=int(row["bytes"]),
        sha256=row["sha256"],
        content_type=row["content_type"],
        blob_key=row["blob_key"],
        created_at=as_datetime(row["created_at"]),
    )
