"""The store's logic written once over a small database adapter; engines supply the adapter."""

from proxy.store.sql.store import SQLStore

__all__ = ["SQLStore"]
