"""The store's errors, drawn as a tree::

    StoreError                the database failed, is unreachable, or refused the data
    ├── RecordNotFound        the trajectory (or other record) a write refers to does not exist
    ├── SecretsUnavailable    no secret key is configured, or it cannot open a stored secret
    ├── BlobTooLarge          a blob grew past its limit while being stored; nothing was kept
    ├── StoreUnavailable      the database did not answer in time (stopped, unreachable,
    │   │                     overloaded): nothing was written; the same call may succeed later
    │   └── BlobsUnavailable  the same, of the object store that keeps the blobs
    ├── StorageFull           no space left on the disk (or in the database): nothing was kept
    └── DuplicateKey          an insert collided with a unique key (the SQL adapters raise it;
                              the store retries with a fresh id and never lets it out)

Each engine maps its driver's errors into this tree where it calls the driver. The HTTP edge
answers StoreUnavailable with 503 (retry) and StorageFull with 507; writers that must not lose
what they hold (chat records) keep it and retry (see :mod:`proxy.store.faults`).
"""

from __future__ import annotations


class StoreError(Exception):
    """The database failed or is unreachable."""


class RecordNotFound(StoreError, LookupError):
    """A write referred to a record that does not exist."""


class SecretsUnavailable(StoreError):
    """Collection secrets cannot be sealed or opened (no key, or the wrong one)."""


class BlobTooLarge(StoreError):
    """The content grew past the limit; nothing was kept."""

    def __init__(self, limit: int):
        super().__init__(f"content is larger than the limit of {limit} bytes")
        self.limit = limit


class DuplicateKey(StoreError):
    """An insert collided with a unique key (the adapter maps each engine's error to this)."""


class StoreUnavailable(StoreError):
    """The database did not answer in time; nothing was written."""


class BlobsUnavailable(StoreUnavailable):
    """The object store did not answer (or failed) within its bounded retries; nothing was
    written."""


class StorageFull(StoreError):
    """No space left for a write; nothing of it was kept."""
