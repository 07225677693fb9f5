"""Serving processes: a heartbeat each, so that one can tell which of them are alive."""

from __future__ import annotations

from datetime import datetime

from proxy.store.sql.core import SQLCore
from proxy.store.sql.database import utcnow


class ServersPart(SQLCore):
    async def beat(self, server_id: str) -> None:
        await self._db.execute(
            "INSERT INTO servers (id, heartbeat_at) VALUES (?, ?)"
            " ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
            (server_id, utcnow()),
        )

    async def live_servers(self, since: datetime) -> set[str]:
        rows = await self._db.fetchall("SELECT id FROM servers WHERE heartbeat_at >= ?", (since,))
        return {str(row["id"]) for row in rows}

    async def forget_server(self, server_id: str) -> None:
        await self._db.execute("DELETE FROM servers WHERE id = ?", (server_id,))

    async def forget_servers_before(self, before: datetime) -> int:
        return await self._db.execute("DELETE FROM servers WHERE heartbeat_at < ?", (before,))
