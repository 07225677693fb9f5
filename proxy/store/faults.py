"""How to recognise a bad day rather than a bad request.

The faults themselves (:class:`~proxy.store.errors.StoreUnavailable`,
:class:`~proxy.store.errors.StorageFull`) are in the store's error tree; the engines and the
blob store raise them instead of a generic :class:`~proxy.store.errors.StoreError`, so that
callers can tell a fault that passes from a defect.
"""

from __future__ import annotations

import errno

from proxy.store.errors import StorageFull, StoreError, StoreUnavailable

__all__ = ["TRANSIENT_FAULTS", "StorageFull", "StoreUnavailable", "is_disk_full"]

#: Faults that pass: the same write may succeed later.
TRANSIENT_FAULTS: tuple[type[StoreError], ...] = (StoreUnavailable, StorageFull)


def is_disk_full(exc: OSError) -> bool:
    """True for "no space left" and "quota exceeded"."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)
