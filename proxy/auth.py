"""Client keys: minting, hashing and checking them, and what a caller may see.

Keys are random 32-byte tokens shown once; only their SHA-256 is stored (a
slow hash buys nothing for secrets with 256 bits of entropy). Lookups are
cached for a couple of seconds so the hot path costs no database round trip;
revocation therefore takes effect within ``auth_cache_seconds`` (or, while the
database is unreachable, within ``auth_grace_seconds``).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

from proxy.browsers import BrowserGuard
from proxy.errors import NotFound, ServiceUnavailable, Unauthorized
from proxy.store import ApiKey, Store
from proxy.store.faults import StoreUnavailable

KEY_PREFIX = "jp-"
LOCAL_COLLECTION = "default"


def mint_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def printable_prefix(key: str) -> str:
    """Enough of a key to recognise it in `keys list`, too little to use it."""
    return key[: len(KEY_PREFIX) + 6]


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key, or the single local user when auth is off."""

    key: ApiKey | None

    @property
    def is_local(self) -> bool:
        return self.key is None

    def can_access(self, collection: str) -> bool:
        return self.key is None or self.key.can_access(collection)

    def require(self, collection: str) -> None:
        """Raise 404 (not 403: a key must not learn what exists) when out of scope."""
        if not self.can_access(collection):
            raise NotFound(f"collection '{collection}' not found", param="collection")

    @property
    def default_collection(self) -> str:
        if self.key is not None and self.key.collections:
            return self.key.collections[0]
        return LOCAL_COLLECTION


#: The single local user, when no key is configured.
LOCAL_PRINCIPAL = Principal(key=None)


class Authenticator:
    """Turns request headers into a :class:`Principal` or raises 401.

    Whether keys are required is fixed when the server starts, and only ever gets stricter:

    * ``keys_required`` (keys existed at start, or the server may not serve a local user:
      a non-loopback bind without ``--insecure-no-auth``): every request needs a live key,
      also once the last key has been revoked — revoking keys never opens the server;
    * otherwise the single local user is served until the first key is created; from then
      on keys are required for as long as the process runs.

    Requests served as the local user must pass ``browser_guard`` (see
    :mod:`proxy.browsers`): web pages may not use a server that has no keys.

    While the database is unreachable, a key that was live when last checked, at most
    ``grace_seconds`` ago, is still accepted (relayed chats go on through a short outage);
    any other key gets a 503 that asks the client to retry.
    """

    def __init__(
        self,
        store: Store,
        *,
        cache_seconds: float,
        keys_required: bool,
        grace_seconds: float = 0.0,
        browser_guard: BrowserGuard | None = None,
    ):
        self._store = store
        self._ttl = cache_seconds
        self._grace = grace_seconds
        self._required = keys_required
        self._guard = browser_guard
        self._keys_checked_at = 0.0
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}

    async def authenticate(self, headers: Mapping[str, str], method: str) -> Principal:
        """The caller of a request with these headers and method."""
        if not self._required and not await self._keys_exist():
            if self._guard is not None:
                self._guard.check(headers, method)
            return LOCAL_PRINCIPAL
        token = bearer_token(headers)
        if not token:
            raise Unauthorized(
                "Missing API key: send it as 'Authorization: Bearer <key>'.", code="missing_api_key"
            )
        key = await self._lookup(hash_key(token))
        if key is None:
            raise Unauthorized("Invalid API key.")
        return Principal(key=key)

    async def _keys_exist(self) -> bool:
        """Whether a key has been created since the server started without any; once one
        has, keys are required for good. Known from the cache, the answer costs no await
        (the hot path of a local install)."""
        now = time.monotonic()
        if now - self._keys_checked_at < self._ttl:
            return False
        try:
            exist = await self._store.has_keys()
        except StoreUnavailable:
            # No key can have been created while the database is away: nothing changed.
            return False
        self._keys_checked_at = now
        self._required = exist
        return exist

    async def _lookup(self, key_hash: str) -> ApiKey | None:
        now = time.monotonic()
        cached = self._cache.get(key_hash)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        try:
            key = await self._store.find_key(key_hash)
        except StoreUnavailable as exc:
            if cached is not None and cached[1] is not None and now - cached[0] < self._grace:
                return cached[1]
            raise ServiceUnavailable(
                "The API key cannot be checked: the database is unavailable. Retry shortly."
            ) from exc
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key_hash] = (now, key)
        return key


def bearer_token(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key") or None
