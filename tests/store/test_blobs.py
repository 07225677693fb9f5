"""The local blob store: atomic writes, size limits enforced while streaming, hashes, and
nothing kept when the disk fills up."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from proxy.store import RecordNotFound
from proxy.store.blobs import LocalBlobStore, read_all
from proxy.store.errors import BlobTooLarge, StorageFull
from tests.support.full_disk import small_filesystem

pytestmark = pytest.mark.anyio


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


async def test_put_open_delete(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    content = b"x" * 100_000 + b"end"
    info = await blobs.put(chunks(content[:70_000], b"", content[70_000:]))
    assert info.size == len(content)
    assert info.sha256 == hashlib.sha256(content).hexdigest()
    assert info.head == content[:512]
    assert await read_all(blobs, info.key) == content
    assert [p.name for p in files_under(tmp_path)] == [info.key]
    small = [chunk async for chunk in await blobs.open(info.key, chunk_size=40_000)]
    assert [len(c) for c in small] == [40_000, 40_000, 20_003]
    await blobs.delete(info.key)
    await blobs.delete(info.key)
    with pytest.raises(RecordNotFound):
        await blobs.open(info.key)


async def test_too_large_leaves_nothing(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    assert (await blobs.put(chunks(b"12345"), max_bytes=5)).size == 5
    with pytest.raises(BlobTooLarge):
        await blobs.put(chunks(b"123", b"456"), max_bytes=5)
    assert len(files_under(tmp_path)) == 1


async def test_a_failing_or_cancelled_upload_leaves_nothing(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")

    async def broken() -> AsyncIterator[bytes]:
        yield b"partial"
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await blobs.put(broken())

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"z" * 1024
            await anyio.sleep(0)

    with anyio.move_on_after(0.05):
        await blobs.put(endless())
    assert files_under(tmp_path) == []


async def test_keys_cannot_name_other_files(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    for key in ("../../etc/passwd", "ab/../cd", "", "A" * 32):
        with pytest.raises(RecordNotFound):
            await blobs.open(key)


async def test_a_full_disk_keeps_nothing_of_a_blob(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "disk", size="1m") as disk:
        blobs = LocalBlobStore(disk / "blobs")
        kept = await blobs.put(chunks(b"a" * 1000))
        with pytest.raises(StorageFull):
            await blobs.put(chunks(*[b"b" * 65536] * 32))
        assert files_under(disk) == [blobs.path(kept.key)]
        health = await blobs.health()
        assert health.problem is None and health.free_bytes is not None
        assert health.free_bytes < 1024 * 1024
