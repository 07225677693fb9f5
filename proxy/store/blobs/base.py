"""The blob seam: file contents (uploads, artifacts, saved sessions) by key; metadata lives in
the database.

Every implementation streams both ways, enforces the size limit while streaming and keeps
nothing of a failed, oversized or cancelled write. A caller writes::

    info = await blobs.put(chunks, max_bytes=limit)   # BlobTooLarge: nothing was kept
    async for chunk in await blobs.open(info.key):    # RecordNotFound before the first chunk
        ...
    await blobs.delete(info.key)                      # a missing blob is not an error

Errors: :class:`~proxy.store.errors.StoreError` when the storage fails or is unreachable,
:class:`~proxy.store.errors.RecordNotFound` for a missing or malformed key, and
:class:`BlobTooLarge` past ``max_bytes``.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from proxy.store.content import SNIFF_BYTES
from proxy.store.errors import BlobTooLarge, RecordNotFound
from proxy.store.records import BlobInfo

CHUNK_SIZE = 64 * 1024
_KEY = re.compile(r"^[0-9a-f]{32}$")


class BlobStore(Protocol):
    async def put(self, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None) -> BlobInfo:
        """Store the content under a new key; raises :class:`BlobTooLarge` past ``max_bytes``."""

    async def open(self, key: str, *, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        """The content in chunks of at most ``chunk_size`` bytes; raises
        :class:`RecordNotFound` now, not mid-stream."""

    async def delete(self, key: str) -> None:
        """Remove the blob; a missing one is not an error."""

    def local_path(self, key: str) -> Path | None:
        """The blob's file when it is on this machine (nothing read), else None."""

    async def health(self) -> BlobHealth:
        """For readiness checks: whether the store can take blobs now (quick, never raises),
        and the space it has left where that is known."""


@dataclass(frozen=True)
class BlobHealth:
    """Whether the store can take writes now, and the space it has left (None: unknown)."""

    problem: str | None = None
    free_bytes: int | None = None


def new_key() -> str:
    return uuid.uuid4().hex


def check_key(key: str) -> str:
    """``key`` when it is one that :func:`new_key` makes; other names are never looked up."""
    if not _KEY.match(key):
        raise RecordNotFound(f"invalid blob key: {key!r}")
    return key


class Meter:
    """Measures content as it streams: size (held to ``max_bytes``), SHA-256 and the head
    that content sniffing reads."""

    def __init__(self, max_bytes: int | None):
        self.max_bytes = max_bytes
        self.size = 0
        self.head = b""
        self.digest = hashlib.sha256()

    def count(self, chunk: bytes) -> None:
        """Count ``chunk`` in; raises :class:`BlobTooLarge` once the total passes the limit.

        The digest is the caller's to update (it may do so off the event loop)."""
        self.size += len(chunk)
        if self.max_bytes is not None and self.size > self.max_bytes:
            raise BlobTooLarge(self.max_bytes)
        if len(self.head) < SNIFF_BYTES:
            self.head += chunk[: SNIFF_BYTES - len(self.head)]

    def info(self, key: str) -> BlobInfo:
        return BlobInfo(key=key, size=self.size, sha256=self.digest.hexdigest(), head=self.head)


@dataclass(frozen=True)
class StreamedBlob:
    """A blob that is not on this machine, read as it is copied (see
    :class:`proxy.sandbox.base.StreamedFile`)."""

    blobs: BlobStore
    key: str

    async def open(self) -> AsyncIterator[bytes]:
        return await self.blobs.open(self.key)


async def read_all(blobs: BlobStore, key: str) -> bytes:
    """The whole content of a (small) blob."""
    parts = [chunk async for chunk in await blobs.open(key)]
    return b"".join(parts)


async def file_source(blobs: BlobStore, key: str) -> Path | StreamedBlob:
    """A blob as `Sandbox.put_files` takes it: its file on a local store (nothing read), else
    a source it streams from when the files are put (never whole in memory)."""
    return blobs.local_path(key) or StreamedBlob(blobs, key)
