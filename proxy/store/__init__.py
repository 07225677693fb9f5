"""Durable state: API keys, and (as the store grows) trajectories, files and artifacts."""

from proxy.store.base import ApiKey, Store, StoreError, open_store

__all__ = ["ApiKey", "Store", "StoreError", "open_store"]
