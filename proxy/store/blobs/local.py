"""Blobs in a local directory (the default, ``file://``).

Each write goes to a temporary file beside its destination and is renamed into place only
when complete, so a failed, oversized or cancelled upload leaves nothing half-written. File
work runs in worker threads, the SHA-256 with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO, TypeVar, TypeVarTuple

import anyio
import anyio.to_thread

from proxy.store.blobs.base import CHUNK_SIZE, BlobHealth, Meter, check_key, new_key
from proxy.store.errors import RecordNotFound, StorageFull, StoreError
from proxy.store.faults import is_disk_full
from proxy.store.records import BlobInfo

T = TypeVar("T")
Args = TypeVarTuple("Args")


class LocalBlobStore:
    """Blobs as files under ``root``, fanned out by the first two hex digits of the key."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, key: str) -> Path:
        check_key(key)
        return self.root / key[:2] / key

    def local_path(self, key: str) -> Path:
        return self.path(key)

    async def put(self, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None) -> BlobInfo:
        key = new_key()
        final = self.path(key)
        handle, temp = await _disk(_create_temp, final.parent)
        meter = Meter(max_bytes)
        kept = False
        try:
            async for chunk in chunks:
                if not chunk:
                    continue
                meter.count(chunk)
                await _disk(_write, handle, meter.digest, chunk)
            await _disk(_commit, handle, temp, final)
            kept = True
        finally:
            if not kept:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(_discard, handle, temp)
        return meter.info(key)

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
        """The directory can be written (a probe file is made and removed); its free space."""
        try:
            free = await anyio.to_thread.run_sync(_probe, self.root)
        except OSError as exc:
            return BlobHealth(problem=f"{self.root} is not writable: {exc.strerror or exc}")
        return BlobHealth(free_bytes=free)


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


def _probe(root: Path) -> int:
    """Free bytes under ``root`` after proving a file can be created there."""
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=root, prefix=".probe-"):
        pass
    return shutil.disk_usage(root).free
