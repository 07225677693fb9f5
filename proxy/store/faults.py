"""Store errors that describe a bad day rather than a bad request, and how to recognise them.

Both are :class:`~proxy.store.base.StoreError`\\ s that the engines and the blob store raise
instead of a generic one, so that callers can tell a fault that passes from a defect::

    StoreError
    ├── StoreUnavailable    the database did not answer in time (stopped, unreachable,
    │                       overloaded): nothing was written; the same call may succeed later
    └── StorageFull         no space left on the disk (or in the database): nothing was kept

The HTTP edge answers them with 503 (retry) and 507; writers that must not lose what they
hold (chat records) keep it and retry.
"""

from __future__ import annotations

import errno

from proxy.store.base import StoreError


class StoreUnavailable(StoreError):
    """The database did not answer in time; nothing was written."""


class StorageFull(StoreError):
    """No space left for a write; nothing of it was kept."""


#: Faults that pass: the same write may succeed later.
TRANSIENT_FAULTS: tuple[type[StoreError], ...] = (StoreUnavailable, StorageFull)


def is_disk_full(exc: OSError) -> bool:
    """True for "no space left" and "quota exceeded"."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)
