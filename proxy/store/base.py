"""The store seam: one Protocol, one implementation per database engine."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol


class StoreError(Exception):
    """The database failed or is unreachable."""


@dataclass(frozen=True)
class ApiKey:
    """A client key. The secret itself is never stored, only its SHA-256."""

    id: str
    prefix: str
    collections: tuple[str, ...]
    admin: bool
    created_at: datetime
    revoked_at: datetime | None = None
    name: str | None = None

    def can_access(self, collection: str) -> bool:
        return self.admin or collection in self.collections


class Store(Protocol):
    """What the rest of the proxy may ask of the database."""

    async def migrate(self) -> None:
        """Create or upgrade the schema; safe to call on every start."""

    async def ping(self) -> None:
        """Raise :class:`StoreError` unless the database answers."""

    async def close(self) -> None: ...

    async def create_key(
        self,
        key_hash: str,
        prefix: str,
        collections: tuple[str, ...],
        admin: bool,
        name: str | None,
    ) -> ApiKey: ...

    async def find_key(self, key_hash: str) -> ApiKey | None:
        """The live (not revoked) key with this hash, if any."""

    async def list_keys(self) -> list[ApiKey]: ...

    async def revoke_key(self, key_id: str) -> bool:
        """Revoke by id or by printed prefix; False when nothing matched."""

    async def has_keys(self) -> bool:
        """True when at least one live key exists (authentication is then required)."""


def open_store(database_url: str) -> Store:
    """Pick the engine from the URL scheme; the caller must ``await store.migrate()``."""
    if database_url.startswith("sqlite:///"):
        from proxy.store.sqlite import SQLiteStore

        return SQLiteStore(Path(database_url.removeprefix("sqlite:///")))
    if database_url.startswith(("postgresql://", "postgres://")):
        try:
            from proxy.store.postgres import PostgresStore  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise StoreError(
                "PostgreSQL support needs the extra: pip install 'jetty-proxy[postgres]'"
            ) from exc
        store: Store = PostgresStore(database_url)
        return store
    raise StoreError(f"unsupported database URL (use sqlite:/// or postgresql://): {database_url}")
