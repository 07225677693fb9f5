"""Per-collection environment: plain variables, and secrets sealed before they are stored."""

from __future__ import annotations

from collections.abc import Mapping

from proxy.store.records import CollectionEnvironment
from proxy.store.sql.core import SQLCore
from proxy.store.sql.database import Statement, utcnow


class EnvironmentPart(SQLCore):
    async def get_environment(self, collection: str) -> CollectionEnvironment:
        variables = await self._db.fetchall(
            "SELECT name, value FROM collection_variables WHERE collection = ? ORDER BY name",
            (collection,),
        )
        secrets = await self._db.fetchall(
            "SELECT name FROM collection_secrets WHERE collection = ? ORDER BY name",
            (collection,),
        )
        return CollectionEnvironment(
            collection=collection,
            variables={row["name"]: row["value"] for row in variables},
            secret_names=tuple(row["name"] for row in secrets),
        )

    async def update_environment(
        self,
        collection: str,
        *,
        variables: Mapping[str, str | None] | None = None,
        secrets: Mapping[str, str | None] | None = None,
    ) -> CollectionEnvironment:
        now = utcnow()
        statements: list[Statement] = []
        for name, value in (variables or {}).items():
            if value is None:
                statements.append(
                    (
                        "DELETE FROM collection_variables WHERE collection = ? AND name = ?",
                        (collection, name),
                    )
                )
            else:
                statements.append(
                    (
                        "INSERT INTO collection_variables (collection, name, value, updated_at)"
                        " VALUES (?, ?, ?, ?) ON CONFLICT (collection, name) DO UPDATE"
                        " SET value = excluded.value, updated_at = excluded.updated_at",
                        (collection, name, value, now),
                    )
                )
        for name, value in (secrets or {}).items():
            if value is None:
                statements.append(
                    (
                        "DELETE FROM collection_secrets WHERE collection = ? AND name = ?",
                        (collection, name),
                    )
                )
            else:
                sealed = self._require_box().seal(value)
                statements.append(
                    (
                        "INSERT INTO collection_secrets (collection, name, ciphertext, updated_at)"
                        " VALUES (?, ?, ?, ?) ON CONFLICT (collection, name) DO UPDATE"
                        " SET ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
                        (collection, name, sealed, now),
                    )
                )
        if statements:
            await self._db.atomic(statements)
        self._forget_secrets(collection)
        return await self.get_environment(collection)

    async def secret_values(self, collection: str) -> dict[str, str]:
        return await self._load_secrets(collection)
