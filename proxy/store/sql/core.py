"""State every part of the SQL store shares: the adapter, the notifier, the secret box,
and the caches that keep redaction off the database's back on the event hot path."""

from __future__ import annotations

import logging
import time

from proxy.store.crypto import SecretBox
from proxy.store.errors import RecordNotFound, SecretsUnavailable, StoreError
from proxy.store.notify import ChangeNotifier
from proxy.store.sql.database import Database

logger = logging.getLogger("proxy.store")

#: How long a process trusts its copy of a collection's secrets for redaction. Another
#: process that changes them is seen within this time; this process sees its own at once.
SECRETS_CACHE_SECONDS = 5.0
_MAX_CACHED = 10_000


class SQLCore:
    """Base of the SQL store's parts (keys, trajectories, files, environment)."""

    def __init__(self, db: Database, *, secret_box: SecretBox | None = None):
        self._db = db
        self._box = secret_box
        self._notifier = ChangeNotifier()
        self._secrets_cache: dict[str, tuple[float, dict[str, str]]] = {}
        self._collection_of: dict[str, str] = {}

    def _require_box(self) -> SecretBox:
        if self._box is None:
            raise SecretsUnavailable("collection secrets need a secret key (secret_key)")
        return self._box

    async def _load_secrets(self, collection: str) -> dict[str, str]:
        rows = await self._db.fetchall(
            "SELECT name, ciphertext FROM collection_secrets WHERE collection = ?", (collection,)
        )
        if not rows:
            return {}
        box = self._require_box()
        return {row["name"]: box.open(row["ciphertext"]) for row in rows}

    async def _redaction_secrets(self, collection: str) -> dict[str, str]:
        """The collection's secrets for redaction, cached for a few seconds."""
        cached = self._secrets_cache.get(collection)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            values = await self._load_secrets(collection)
        except SecretsUnavailable:
            # Without the key nothing can be matched; refusing to record would lose the run.
            logger.warning("cannot redact collection %r: its secrets cannot be opened", collection)
            values = {}
        if len(self._secrets_cache) > _MAX_CACHED:
            self._secrets_cache.clear()
        self._secrets_cache[collection] = (now + SECRETS_CACHE_SECONDS, values)
        return values

    async def _record_changed(self, trajectory_id: str) -> None:
        """Wake whoever waits on the trajectory here, and tell the other processes."""
        self._notifier.notify(trajectory_id, record=True)
        try:
            await self._db.announce(trajectory_id)
        except StoreError as exc:  # the change is made; those not told find it by polling
            logger.warning("could not tell other servers that %s changed: %s", trajectory_id, exc)

    def _forget_secrets(self, collection: str) -> None:
        self._secrets_cache.pop(collection, None)

    async def _collection_of_trajectory(self, trajectory_id: str) -> str:
        collection = self._collection_of.get(trajectory_id)
        if collection is None:
            row = await self._db.fetchone(
                "SELECT collection FROM trajectories WHERE id = ?", (trajectory_id,)
            )
            if row is None:
                raise RecordNotFound(f"trajectory {trajectory_id} not found")
            collection = str(row["collection"])
            self._remember_collection(trajectory_id, collection)
        return collection

    def _remember_collection(self, trajectory_id: str, collection: str) -> None:
        if len(self._collection_of) > _MAX_CACHED:
            self._collection_of.clear()
        self._collection_of[trajectory_id] = collection
