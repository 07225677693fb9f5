"""Durable state: API keys, trajectories and their events, files, artifacts, collection settings."""

from proxy.store.errors import RecordNotFound, SecretsUnavailable, StoreError
from proxy.store.factory import open_store
from proxy.store.protocol import Store
from proxy.store.records import (
    ApiKey,
    Artifact,
    BlobInfo,
    CollectionEnvironment,
    Label,
    Step,
    StoredEvent,
    StoredFile,
    Trajectory,
    TrajectoryPage,
    TrajectoryStatus,
)

__all__ = [
    "ApiKey",
    "Artifact",
    "BlobInfo",
    "CollectionEnvironment",
    "Label",
    "RecordNotFound",
    "SecretsUnavailable",
    "Step",
    "Store",
    "StoreError",
    "StoredEvent",
    "StoredFile",
    "Trajectory",
    "TrajectoryPage",
    "TrajectoryStatus",
    "open_store",
]
