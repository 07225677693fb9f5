"""Open the store a database URL names; each engine is imported only when it is used."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from proxy.store.errors import StoreError
from proxy.store.protocol import Store

if TYPE_CHECKING:
    from proxy.store.crypto import SecretBox


def open_store(
    database_url: str, *, secret_box: SecretBox | None = None, timeout: float = 5.0
) -> Store:
    """Pick the engine from the URL scheme; the caller must ``await store.migrate()``.

    Without ``secret_box`` everything but collection secrets works. ``timeout`` bounds each
    wait for the database (see :mod:`proxy.store.faults`).
    """
    if database_url.startswith("sqlite:///"):
        from proxy.store.sqlite import SQLiteStore

        path = Path(database_url.removeprefix("sqlite:///"))
        return SQLiteStore(path, secret_box=secret_box, timeout=timeout)
    if database_url.startswith(("postgresql://", "postgres://")):
        try:
            from proxy.store.postgres import PostgresStore
        except ImportError as exc:
            raise StoreError(
                "PostgreSQL support needs the extra: pip install 'jetty-proxy[postgres]'"
            ) from exc
        store: Store = PostgresStore(database_url, secret_box=secret_box, timeout=timeout)
        return store
    raise StoreError(f"unsupported database URL (use sqlite:/// or postgresql://): {database_url}")
