"""Trajectories (runs and relayed completions), their statuses and labels."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from proxy.store.errors import DuplicateKey, RecordNotFound, StoreError
from proxy.store.records import (
    Label,
    NewTrajectory,
    Step,
    Trajectory,
    TrajectoryKind,
    TrajectoryPage,
    TrajectoryStatus,
)
from proxy.store.redact import redact, redact_value
from proxy.store.sql.core import SQLCore
from proxy.store.sql.database import (
    Json,
    Row,
    Statement,
    as_datetime,
    as_json,
    as_optional_datetime,
    placeholders,
    utcnow,
)

_ID_ATTEMPTS = 8
_IDS_PER_QUERY = 500


class TrajectoriesPart(SQLCore):
    async def create_trajectory(
        self,
        collection: str,
        task: str,
        *,
        model: str | None = None,
        agent: str | None = None,
        jetty: Mapping[str, Any] | None = None,
        kind: TrajectoryKind = "run",
        status: TrajectoryStatus = "pending",
        environment: Mapping[str, Any] | None = None,
        steps: Mapping[str, Step] | None = None,
        usage: Mapping[str, Any] | None = None,
        cost_usd: float | None = None,
        error: str | None = None,
        started_at: datetime | None = None,
        finished_at: datetime | None = None,
        session: Mapping[str, Any] | None = None,
        key_id: str | None = None,
    ) -> Trajectory:
        new = NewTrajectory(
            collection,
            task,
            kind=kind,
            status=status,
            model=model,
            agent=agent,
            jetty=jetty,
            environment=environment,
            steps=steps,
            usage=usage,
            cost_usd=cost_usd,
            error=error,
            started_at=started_at,
            finished_at=finished_at,
            session=session,
            key_id=key_id,
        )
        created = await self._insert_trajectory(new, lambda insert: self._db.fetchone(*insert))
        assert created is not None
        return created

    async def _insert_trajectory(
        self,
        new: NewTrajectory,
        run: Callable[[Statement], Awaitable[Row | None]],
    ) -> Trajectory | None:
        """Insert ``new`` under a fresh id with ``run`` (the ``INSERT … RETURNING *``
        statement in, its row out; None when it inserted nothing)."""
        values = _row(new, await self._redaction_secrets(new.collection), utcnow(), Json)
        columns = ", ".join(["id", *values])
        sql = (
            f"INSERT INTO trajectories ({columns}) VALUES ({placeholders(len(values) + 1)})"  # noqa: S608
            " RETURNING *"
        )
        for _ in range(_ID_ATTEMPTS):
            # 32 random bits: collisions are rare until millions of rows, and then retried.
            trajectory_id = secrets.token_hex(4)
            try:
                row = await run((sql, (trajectory_id, *values.values())))
            except DuplicateKey:
                continue
            if row is None:
                return None
            self._remember_collection(trajectory_id, new.collection)
            return trajectory_from_row(row)
        raise StoreError("could not find a free trajectory id")

    async def add_trajectories(self, items: Sequence[NewTrajectory]) -> None:
        if not items:
            return
        hidden = {
            collection: await self._redaction_secrets(collection)
            for collection in {item.collection for item in items}
        }
        now = utcnow()
        # JSON is serialised here, on the event loop: SQLite's worker thread holds the
        # interpreter while it binds parameters, and then only passes the text on.
        rows = [_row(item, hidden[item.collection], now, _serialised) for item in items]
        columns = ", ".join(["id", *rows[0]])
        sql = f"INSERT INTO trajectories ({columns}) VALUES ({placeholders(len(rows[0]) + 1)})"  # noqa: S608
        for _ in range(_ID_ATTEMPTS):
            # Fresh ids for every attempt: a collision (rare: 32 random bits) fails them all.
            statements: list[Statement] = [
                (sql, (secrets.token_hex(4), *row.values())) for row in rows
            ]
            try:
                await self._db.atomic(statements)
                return
            except DuplicateKey:
                continue
        raise StoreError("could not find free trajectory ids")

    async def get_trajectory(self, trajectory_id: str) -> Trajectory | None:
        row = await self._db.fetchone("SELECT * FROM trajectories WHERE id = ?", (trajectory_id,))
        return None if row is None else trajectory_from_row(row)

    async def get_trajectories(self, trajectory_ids: Collection[str]) -> list[Trajectory]:
        wanted = sorted(set(trajectory_ids))
        found: list[Trajectory] = []
        for start in range(0, len(wanted), _IDS_PER_QUERY):
            chunk = wanted[start : start + _IDS_PER_QUERY]
            rows = await self._db.fetchall(
                f"SELECT * FROM trajectories WHERE id IN ({placeholders(len(chunk))})",  # noqa: S608
                chunk,
            )
            found += [trajectory_from_row(row) for row in rows]
        return found

    async def update_trajectory(
        self,
        trajectory_id: str,
        *,
        status: TrajectoryStatus | None = None,
        model: str | None = None,
        agent: str | None = None,
        environment: Mapping[str, Any] | None = None,
        steps: Mapping[str, Step] | None = None,
        usage: Mapping[str, Any] | None = None,
        cost_usd: float | None = None,
        error: str | None = None,
        started_at: datetime | None = None,
        finished_at: datetime | None = None,
        session: Mapping[str, Any] | None = None,
    ) -> Trajectory:
        changes: dict[str, object] = {
            "status": status,
            "model": model,
            "agent": agent,
            "environment": None if environment is None else Json(dict(environment)),
            "usage": None if usage is None else Json(dict(usage)),
            "cost_usd": cost_usd,
            "started_at": started_at,
            "finished_at": finished_at,
            "session": None if session is None else Json(dict(session)),
        }
        if error is not None or steps:
            hidden = await self._redaction_secrets(
                await self._collection_of_trajectory(trajectory_id)
            )
            if error is not None:
                changes["error"] = redact(error, hidden)
            if steps:
                # Read-merge-write: a trajectory's steps have a single writer (its run).
                current = await self.get_trajectory(trajectory_id)
                if current is None:
                    raise RecordNotFound(f"trajectory {trajectory_id} not found")
                merged = {**current.steps, **steps}
                changes["steps"] = Json(_steps_json(merged, hidden))
        changes = {column: value for column, value in changes.items() if value is not None}
        changes["updated_at"] = utcnow()
        assignments = ", ".join(f"{column} = ?" for column in changes)
        row = await self._db.fetchone(
            f"UPDATE trajectories SET {assignments} WHERE id = ? RETURNING *",  # noqa: S608
            (*changes.values(), trajectory_id),
        )
        if row is None:
            raise RecordNotFound(f"trajectory {trajectory_id} not found")
        await self._record_changed(trajectory_id)
        return trajectory_from_row(row)

    async def transition(
        self,
        trajectory_id: str,
        status: TrajectoryStatus,
        *,
        allowed_from: Collection[TrajectoryStatus],
        finished_at: datetime | None = None,
    ) -> Trajectory | None:
        if not allowed_from:
            return None
        sources = list(allowed_from)
        row = await self._db.fetchone(
            "UPDATE trajectories SET status = ?, updated_at = ?,"  # noqa: S608
            " finished_at = COALESCE(?, finished_at)"
            f" WHERE id = ? AND status IN ({placeholders(len(sources))}) RETURNING *",
            (status, utcnow(), finished_at, trajectory_id, *sources),
        )
        if row is None:
            return None
        await self._record_changed(trajectory_id)
        return trajectory_from_row(row)

    async def list_trajectories(
        self,
        collection: str,
        task: str | None = None,
        *,
        status: TrajectoryStatus | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> TrajectoryPage:
        where = ["collection = ?"]
        params: list[object] = [collection]
        if task is not None:
            where.append("task = ?")
            params.append(task)
        if status is not None:
            where.append("status = ?")
            params.append(status)
        condition = " AND ".join(where)
        rows = await self._db.fetchall(
            f"SELECT * FROM trajectories WHERE {condition} ORDER BY pk DESC LIMIT ? OFFSET ?",  # noqa: S608
            (*params, limit, offset),
        )
        counting = f"SELECT COUNT(*) AS n FROM trajectories WHERE {condition}"  # noqa: S608
        count = await self._db.fetchone(counting, params)
        total = int(count["n"]) if count else 0
        return TrajectoryPage(items=[trajectory_from_row(row) for row in rows], total=total)

    async def live_trajectories(self) -> list[Trajectory]:
        rows = await self._db.fetchall(
            "SELECT * FROM trajectories WHERE status IN ('pending', 'running') ORDER BY pk", ()
        )
        return [trajectory_from_row(row) for row in rows]

    async def set_label(
        self, trajectory_id: str, key: str, value: str, author: str | None
    ) -> Label:
        row = await self._db.fetchone(
            "INSERT INTO labels (trajectory_id, key, value, author, created_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (trajectory_id, key) DO UPDATE"
            " SET value = excluded.value, author = excluded.author,"
            " created_at = excluded.created_at RETURNING *",
            (trajectory_id, key, value, author, utcnow()),
        )
        assert row is not None
        return _label_from_row(row)

    async def list_labels(self, trajectory_id: str) -> list[Label]:
        rows = await self._db.fetchall(
            "SELECT * FROM labels WHERE trajectory_id = ? ORDER BY key", (trajectory_id,)
        )
        return [_label_from_row(row) for row in rows]


def trajectory_from_row(row: Row) -> Trajectory:
    steps = as_json(row["steps"]) or {}
    usage = as_json(row["usage"]) if row["usage"] is not None else None
    return Trajectory(
        id=row["id"],
        collection=row["collection"],
        task=row["task"],
        kind=cast(TrajectoryKind, row["kind"]),
        status=cast(TrajectoryStatus, row["status"]),
        created_at=as_datetime(row["created_at"]),
        updated_at=as_datetime(row["updated_at"]),
        model=row["model"],
        agent=row["agent"],
        jetty=as_json(row["jetty"]) or {},
        environment=as_json(row["environment"]) or {},
        steps={name: Step.from_dict(step) for name, step in steps.items()},
        usage=usage,
        cost_usd=row["cost_usd"],
        error=row["error"],
        started_at=as_optional_datetime(row["started_at"]),
        finished_at=as_optional_datetime(row["finished_at"]),
        last_seq=int(row["last_seq"]),
        session=as_json(row["session"]) if row["session"] is not None else None,
        key_id=row["key_id"],
    )


def _steps_json(steps: Mapping[str, Step], hidden: Mapping[str, str]) -> dict[str, Any]:
    return {
        name: redact_value(step.to_dict(), hidden, credential_fields=True)
        for name, step in steps.items()
    }


def _label_from_row(row: Row) -> Label:
    return Label(
        key=row["key"],
        value=row["value"],
        author=row["author"],
        created_at=as_datetime(row["created_at"]),
    )


def _row(
    new: NewTrajectory,
    hidden: Mapping[str, str],
    now: datetime,
    json_value: Callable[[Any], Json],
) -> dict[str, object]:
    """The column values of a new trajectory, its collection's secrets redacted."""
    return {
        "collection": new.collection,
        "task": new.task,
        "kind": new.kind,
        "status": new.status,
        "model": new.model,
        "agent": new.agent,
        "jetty": json_value(redact_value(dict(new.jetty or {}), hidden)),
        "environment": json_value(dict(new.environment or {})),
        "steps": json_value(_steps_json(new.steps or {}, hidden)),
        "usage": None if new.usage is None else json_value(dict(new.usage)),
        "cost_usd": new.cost_usd,
        "error": None if new.error is None else redact(new.error, hidden),
        "created_at": now,
        "updated_at": now,
        "started_at": new.started_at,
        "finished_at": new.finished_at,
        "session": None if new.session is None else json_value(dict(new.session)),
        "key_id": new.key_id,
    }


@dataclass(frozen=True)
class _Serialised(Json):
    """A JSON parameter whose text was made in advance."""

    text: str = ""

    def dumps(self) -> str:
        return self.text


def _serialised(value: Any) -> Json:
    return _Serialised(value, Json(value).dumps())
