"""Client API keys: only their SHA-256 and what they may access are stored."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from proxy.store.records import ApiKey
from proxy.store.sql.core import SQLCore
from proxy.store.sql.database import Json, Row, as_datetime, as_json, as_optional_datetime, utcnow


class KeysPart(SQLCore):
    async def create_key(
        self,
        key_hash: str,
        prefix: str,
        collections: tuple[str, ...],
        admin: bool,
        name: str | None,
        limits: Mapping[str, Any] | None = None,
    ) -> ApiKey:
        key = ApiKey(
            id=uuid.uuid4().hex[:12],
            prefix=prefix,
            collections=collections,
            admin=admin,
            created_at=utcnow(),
            name=name,
            limits=dict(limits) if limits else None,
        )
        await self._db.execute(
            "INSERT INTO api_keys"
            " (id, key_hash, prefix, collections, admin, name, created_at, limits)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key.id,
                key_hash,
                prefix,
                "\n".join(collections),
                admin,
                name,
                key.created_at,
                Json(key.limits) if key.limits else None,
            ),
        )
        return key

    async def find_key(self, key_hash: str) -> ApiKey | None:
        row = await self._db.fetchone(
            "SELECT * FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL", (key_hash,)
        )
        return None if row is None else _key_from_row(row)

    async def list_keys(self) -> list[ApiKey]:
        rows = await self._db.fetchall("SELECT * FROM api_keys ORDER BY created_at, id")
        return [_key_from_row(row) for row in rows]

    async def revoke_key(self, key_id: str) -> bool:
        count = await self._db.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE (id = ? OR prefix = ?)"
            " AND revoked_at IS NULL",
            (utcnow(), key_id, key_id),
        )
        return count > 0

    async def has_keys(self) -> bool:
        row = await self._db.fetchone(
            "SELECT 1 AS one FROM api_keys WHERE revoked_at IS NULL LIMIT 1"
        )
        return row is not None


def _key_from_row(row: Row) -> ApiKey:
    return ApiKey(
        id=row["id"],
        prefix=row["prefix"],
        collections=tuple(c for c in row["collections"].split("\n") if c),
        admin=bool(row["admin"]),
        created_at=as_datetime(row["created_at"]),
        revoked_at=as_optional_datetime(row["revoked_at"]),
        name=row["name"],
        limits=as_json(row["limits"]) if row["limits"] is not None else None,
    )
