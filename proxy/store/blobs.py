"""File contents (uploads, artifacts) live in a blob store; the database keeps their metadata.

The seam is small so an object store can implement it later. :class:`LocalBlobStore` keeps
blobs in a directory: each write goes to a temporary file beside its destination and is
renamed into place only when complete, so a failed, oversized or cancelled upload leaves
nothing half-written. The size limit is enforced while streaming and the SHA-256 computed
while writing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, TypeVar, TypeVarTuple

import anyio
import anyio.to_thread

from proxy.store.content import SNIFF_BYTES
from proxy.store.errors import BlobTooLarge, RecordNotFound, StorageFull, StoreError
from proxy.store.faults import is_disk_full
from proxy.store.records import BlobInfo

T = TypeVar("T")
Args = TypeVarTuple("Args")

CHUNK_SIZE = 64 * 1024
_KEY = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class BlobHealth:
    """Whether the store can take writes now, and the space it has left (None: unknown)."""

    problem: str | None = None
    free_bytes: int | None = None


class BlobStore(Protocol):
    async def put(self, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None) -> BlobInfo:
        """Store the content under a new key; raises :class:`BlobTooLarge` past ``max_bytes``."""

    async def open(self, key: str, *, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        """The content as chunks; raises :class:`RecordNotFound` now, not mid-stream."""

    async def delete(self, key: str) -> None:
        """Remove the blob; a missing one is not an error."""

    async def health(self) -> BlobHealth:
        """For readiness checks: quick, and never raises."""


class LocalBlobStore:
    """Blobs as files under ``root``, fanned out by the first two hex digits of the key."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise RecordNotFound(f"invalid blob key: {key!r}")
        return self.root / key[:2] / key

    async def put(self, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None) -> BlobInfo:
        key = uuid.uuid4().hex
        final = self.path(key)
        handle, temp = await _disk(_create_temp, final.parent)
        digest = hashlib.sha256()
        size = 0
        head = b""
        kept = False
        try:
            async for chunk in chunks:
                if not chunk:
                    continue
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise BlobTooLarge(max_bytes)
                if len(head) < SNIFF_BYTES:
                    head += chunk[: SNIFF_BYTES - len(head)]
                await _disk(_write, handle, digest, chunk)
            await _disk(_commit, handle, temp, final)
            kept = True
        finally:
            if not kept:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(_discard, handle, temp)
        return BlobInfo(key=key, size=size, sha256=digest.hexdigest(), head=head)

    async def open(self, key: str, *, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        try:
            handle = await anyio.open_file(self.path(key), "rb")
        except FileNotFoundError as exc:
            raise RecordNotFound(f"blob {key} is missing") from exc
        except OSError as exc:
            raise StoreError(f"reading a blob failed: {exc}") from exc

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while chunk := await handle.read(chunk_size):
                    yield chunk
            finally:
                with anyio.CancelScope(shield=True):
                    await handle.aclose()

        return chunks()

    async def delete(self, key: str) -> None:
        path = self.path(key)
        try:
            await anyio.to_thread.run_sync(path.unlink)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StoreError(f"deleting a blob failed: {exc}") from exc

    async def health(self) -> BlobHealth:
        return await anyio.to_thread.run_sync(self._health)

    def _health(self) -> BlobHealth:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(self.root).free
        except OSError as exc:
            return BlobHealth(problem=f"{self.root}: {exc.strerror or exc}")
        if not os.access(self.root, os.W_OK | os.X_OK):
            return BlobHealth(problem=f"{self.root} is not writable", free_bytes=free)
        return BlobHealth(free_bytes=free)


async def read_all(blobs: BlobStore, key: str) -> bytes:
    """The whole content of a (small) blob."""
    parts = [chunk async for chunk in await blobs.open(key)]
    return b"".join(parts)


async def file_source(blobs: BlobStore, key: str) -> bytes | Path:
    """A blob as `Sandbox.put_files` takes it: its file on a local store (nothing read), else
    its content."""
    if isinstance(blobs, LocalBlobStore):
        return blobs.path(key)
    return await read_all(blobs, key)


async def _disk(fn: Callable[[*Args], T], *args: *Args) -> T:
    """Run a blocking file operation in a worker thread; its OS errors become StoreErrors
    (:class:`~proxy.store.faults.StorageFull` when the disk is full)."""
    try:
        return await anyio.to_thread.run_sync(fn, *args)
    except OSError as exc:
        if is_disk_full(exc):
            raise StorageFull(f"writing a blob failed: {exc}") from exc
        raise StoreError(f"writing a blob failed: {exc}") from exc


def _create_temp(directory: Path) -> tuple[BinaryIO, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=directory, prefix=".partial-")
    return os.fdopen(fd, "wb"), Path(name)


def _write(handle: BinaryIO, digest: hashlib._Hash, chunk: bytes) -> None:
    handle.write(chunk)
    digest.update(chunk)


def _commit(handle: BinaryIO, temp: Path, final: Path) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
    os.replace(temp, final)


def _discard(handle: BinaryIO, temp: Path) -> None:
    # On a full disk, closing fails to flush what is buffered: the file goes all the same.
    with contextlib.suppress(OSError):
        handle.close()
    temp.unlink(missing_ok=True)
