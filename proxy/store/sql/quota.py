"""What limits count: runs (admitted under a cap in one transaction), spend by day, request
rates, and the limits set at runtime."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from proxy.store.records import (
    NewTrajectory,
    RateAdvance,
    RunGate,
    RunUsage,
    SpendEntry,
    Trajectory,
)
from proxy.store.sql.database import (
    Json,
    Statement,
    as_datetime,
    as_json,
    placeholders,
    utcnow,
)
from proxy.store.sql.trajectories import TrajectoriesPart

_LIVE = "status IN ('pending', 'running')"


class QuotaPart(TrajectoriesPart):
    async def create_run(self, new: NewTrajectory, gate: RunGate) -> Trajectory | None:
        if not gate.caps:
            return await self._insert_trajectory(new, lambda insert: self._db.fetchone(*insert))
        guard = _guard(new.collection, gate)
        return await self._insert_trajectory(new, lambda insert: self._db.insert_if(guard, insert))

    async def run_usage(
        self,
        since: datetime,
        *,
        collection: str | None = None,
        key_id: str | None = None,
        cap: int | None = None,
    ) -> RunUsage:
        column, value = _scope_column(collection, key_id)
        row = await self._db.fetchone(
            f"SELECT (SELECT COUNT(*) FROM trajectories WHERE {column} = ? AND kind = 'run'"  # noqa: S608
            f" AND {_LIVE}) AS live, (SELECT COUNT(*) FROM trajectories WHERE {column} = ?"
            " AND kind = 'run' AND created_at >= ?) AS recent",
            (value, value, since),
        )
        live, recent = (int(row["live"]), int(row["recent"])) if row else (0, 0)
        frees_at = None
        if cap is not None and recent >= cap:
            # The window drops below the cap once recent - cap + 1 runs have aged out of it.
            oldest = await self._db.fetchone(
                f"SELECT created_at FROM trajectories WHERE {column} = ? AND kind = 'run'"  # noqa: S608
                " AND created_at >= ? ORDER BY created_at LIMIT 1 OFFSET ?",
                (value, since, recent - cap),
            )
            frees_at = as_datetime(oldest["created_at"]) if oldest else None
        return RunUsage(live=live, recent=recent, slot_frees_at=frees_at)

    async def collection_limits(self) -> dict[str, dict[str, Any]]:
        rows = await self._db.fetchall("SELECT collection, limits FROM collection_limits")
        return {str(row["collection"]): dict(as_json(row["limits"])) for row in rows}

    async def update_collection_limits(
        self, collection: str, changes: Mapping[str, Any]
    ) -> dict[str, Any]:
        row = await self._db.fetchone(
            "SELECT limits FROM collection_limits WHERE collection = ?", (collection,)
        )
        limits = dict(as_json(row["limits"])) if row else {}
        for name, value in changes.items():
            if value is None:
                limits.pop(name, None)
            else:
                limits[name] = value
        await self._db.execute(
            "INSERT INTO collection_limits (collection, limits, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (collection) DO UPDATE"
            " SET limits = excluded.limits, updated_at = excluded.updated_at",
            (collection, Json(limits), utcnow()),
        )
        return limits

    async def add_spend(self, entries: Sequence[SpendEntry]) -> None:
        if entries:
            await self._db.atomic(
                [
                    (
                        "INSERT INTO spend_by_day (scope, day, usd, calls) VALUES (?, ?, ?, ?)"
                        " ON CONFLICT (scope, day) DO UPDATE SET"
                        " usd = spend_by_day.usd + excluded.usd,"
                        " calls = spend_by_day.calls + excluded.calls",
                        (entry.scope, entry.day, entry.usd, entry.calls),
                    )
                    for entry in entries
                ]
            )

    async def spend_since(self, scopes: Collection[str], first_day: str) -> dict[str, float]:
        spent = dict.fromkeys(scopes, 0.0)
        if not spent:
            return spent
        marks = placeholders(len(spent))
        rows = await self._db.fetchall(
            f"SELECT scope, SUM(usd) AS usd FROM spend_by_day WHERE scope IN ({marks})"  # noqa: S608
            " AND day >= ? GROUP BY scope",
            (*spent, first_day),
        )
        spent.update({str(row["scope"]): float(row["usd"] or 0.0) for row in rows})
        return spent

    async def advance_rates(self, advances: Sequence[RateAdvance]) -> dict[str, float]:
        if not advances:
            return {}
        statements: list[Statement] = [
            (
                "INSERT INTO rate_buckets (scope, tat) VALUES (?, ?) ON CONFLICT (scope)"
                " DO UPDATE SET tat = CASE WHEN rate_buckets.tat > ? THEN rate_buckets.tat"
                " ELSE ? END + ?",
                (item.scope, item.floor + item.add, item.floor, item.floor, item.add),
            )
            for item in advances
        ]
        await self._db.atomic(statements)
        return await self.rate_times({item.scope for item in advances})

    async def rate_times(self, scopes: Collection[str]) -> dict[str, float]:
        if not scopes:
            return {}
        names = list(scopes)
        rows = await self._db.fetchall(
            f"SELECT scope, tat FROM rate_buckets WHERE scope IN ({placeholders(len(names))})",  # noqa: S608
            names,
        )
        return {str(row["scope"]): float(row["tat"]) for row in rows}


def _guard(collection: str, gate: RunGate) -> Statement:
    """One row, one column: whether one more run keeps every cap of ``gate``."""
    conditions: list[str] = []
    params: list[object] = []

    def under(column: str, value: str, live: int | None, recent: int | None) -> None:
        if live is not None:
            conditions.append(
                f"(SELECT COUNT(*) FROM trajectories WHERE {column} = ? AND kind = 'run'"  # noqa: S608
                f" AND {_LIVE}) < ?"
            )
            params.extend((value, live))
        if recent is not None:
            conditions.append(
                f"(SELECT COUNT(*) FROM trajectories WHERE {column} = ? AND kind = 'run'"  # noqa: S608
                " AND created_at >= ?) < ?"
            )
            params.extend((value, gate.since, recent))

    under("collection", collection, gate.collection_live, gate.collection_recent)
    if gate.key_id is not None:
        under("key_id", gate.key_id, gate.key_live, gate.key_recent)
    condition = " AND ".join(conditions) or "1 = 1"
    sql = f"SELECT CASE WHEN {condition} THEN 1 ELSE 0 END AS allowed"
    return sql, tuple(params)


def _scope_column(collection: str | None, key_id: str | None) -> tuple[str, str]:
    if (collection is None) == (key_id is None):
        raise ValueError("give a collection or a key id")
    return ("collection", collection) if collection is not None else ("key_id", str(key_id))
