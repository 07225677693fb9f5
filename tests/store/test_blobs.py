"""The blob store contract, on every store: a directory and an S3-compatible object store.

Streaming both ways, sizes and hashes recorded while writing, the limit enforced while
streaming, and nothing kept of a write that fails, overflows or is cancelled — also once an
object store's multipart upload has begun.
A directory on a full disk keeps nothing either.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from proxy.store import RecordNotFound
from proxy.store.blobs import (
    BlobStore,
    BlobTooLarge,
    LocalBlobStore,
    StreamedBlob,
    file_source,
    open_blob_store,
    read_all,
)
from proxy.store.blobs.s3 import PART_SIZE
from proxy.store.errors import BlobsUnavailable, StorageFull, StoreError
from tests.support.blobs import BlobPlace, blob_place_fixture, s3_bucket
from tests.support.full_disk import small_filesystem

__all__ = ["blob_place_fixture"]

pytestmark = pytest.mark.anyio

#: Larger than a part, so that an object store writes it as a multipart upload.
MULTIPART = PART_SIZE * 2 + 12345


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def pattern(size: int, chunk: int = 256 * 1024) -> AsyncIterator[bytes]:
    block = os.urandom(chunk)
    for start in range(0, size, chunk):
        yield block[: min(chunk, size - start)]


@pytest.fixture
def blobs(blob_place: BlobPlace) -> BlobStore:
    return open_blob_store(blob_place.url)


async def test_put_open_delete(blobs: BlobStore, blob_place: BlobPlace) -> None:
    content = b"x" * 100_000 + b"end"
    info = await blobs.put(chunks(content[:70_000], b"", content[70_000:]))
    assert info.size == len(content)
    assert info.sha256 == hashlib.sha256(content).hexdigest()
    assert info.head == content[:512]
    assert await read_all(blobs, info.key) == content
    assert blob_place.leftovers() == [_stored(blob_place, info.key)]
    small = [chunk async for chunk in await blobs.open(info.key, chunk_size=40_000)]
    assert b"".join(small) == content
    assert max(len(c) for c in small) <= 40_000
    await blobs.delete(info.key)
    await blobs.delete(info.key)
    with pytest.raises(RecordNotFound):
        await blobs.open(info.key)
    assert blob_place.leftovers() == []


async def test_large_content_streams_both_ways(blobs: BlobStore, blob_place: BlobPlace) -> None:
    digest = hashlib.sha256()

    async def measured() -> AsyncIterator[bytes]:
        async for chunk in pattern(MULTIPART):
            digest.update(chunk)
            yield chunk

    info = await blobs.put(measured())
    assert (info.size, info.sha256) == (MULTIPART, digest.hexdigest())
    assert blob_place.leftovers() == [_stored(blob_place, info.key)]
    back = hashlib.sha256()
    size = 0
    async for chunk in await blobs.open(info.key):
        assert 0 < len(chunk) <= 64 * 1024
        back.update(chunk)
        size += len(chunk)
    assert (size, back.hexdigest()) == (info.size, info.sha256)


@pytest.mark.parametrize("size", [5, MULTIPART], ids=["small", "multipart"])
async def test_too_large_leaves_nothing(blobs: BlobStore, blob_place: BlobPlace, size: int) -> None:
    kept = await blobs.put(pattern(size), max_bytes=size)
    assert kept.size == size
    with pytest.raises(BlobTooLarge):
        await blobs.put(pattern(size + 1), max_bytes=size)
    assert blob_place.leftovers() == [_stored(blob_place, kept.key)]


@pytest.mark.parametrize("size", [7, MULTIPART], ids=["small", "multipart"])
async def test_a_failing_or_cancelled_upload_leaves_nothing(
    blobs: BlobStore, blob_place: BlobPlace, size: int
) -> None:
    async def broken() -> AsyncIterator[bytes]:
        async for chunk in pattern(size):
            yield chunk
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await blobs.put(broken())

    sent = 0
    stalled = anyio.Event()

    async def stalling() -> AsyncIterator[bytes]:
        nonlocal sent
        async for chunk in pattern(size):
            sent += len(chunk)
            yield chunk
        stalled.set()
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(blobs.put, stalling())
        await stalled.wait()
        tg.cancel_scope.cancel()
    assert sent == size
    assert blob_place.leftovers() == []


async def test_keys_cannot_name_other_objects(blobs: BlobStore) -> None:
    for key in ("../../etc/passwd", "ab/../cd", "", "A" * 32, "0" * 31 + "/"):
        with pytest.raises(RecordNotFound):
            await blobs.open(key)
        with pytest.raises(RecordNotFound):
            await blobs.delete(key)


async def test_files_for_sandboxes(blobs: BlobStore, blob_place: BlobPlace) -> None:
    info = await blobs.put(chunks(b"input data"))
    source = await file_source(blobs, info.key)
    if blob_place.kind == "directory":
        assert isinstance(source, Path) and source.read_bytes() == b"input data"
    else:
        assert isinstance(source, StreamedBlob)
        assert b"".join([chunk async for chunk in await source.open()]) == b"input data"


async def test_health(blobs: BlobStore) -> None:
    assert (await blobs.health()).problem is None


async def test_health_reports_a_directory_that_cannot_take_blobs(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    health = await open_blob_store((tmp_path / "file" / "blobs").as_uri()).health()
    assert health.problem is not None and "not writable" in health.problem


@pytest.mark.s3
async def test_health_reports_a_missing_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    with s3_bucket(monkeypatch) as bucket:
        missing = open_blob_store(f"s3://{bucket.name}-missing/blobs")
        health = await missing.health()
        assert health.problem is not None and "NoSuchBucket" in health.problem


@pytest.mark.s3
async def test_an_unreachable_object_store_is_not_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    with s3_bucket(monkeypatch) as bucket:
        # A port nothing listens on: the check reports it at once, without the client's retries.
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        health = await open_blob_store(bucket.url).health()
        assert health.problem is not None and "unavailable" in health.problem


def _stored(place: BlobPlace, key: str) -> str:
    return f"{key[:2]}/{key}" if place.kind == "directory" else f"blobs/{key}"


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


async def test_an_object_store_that_does_not_answer_is_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A port nothing listens on: each call fails after the client's bounded retries with the
    # fault the HTTP edge answers 503 (retry), not a bare OSError.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    blobs = open_blob_store("s3://nowhere/blobs")
    with pytest.raises(BlobsUnavailable, match="writing a blob failed"):
        await blobs.put(chunks(b"a" * 100))
    with pytest.raises(BlobsUnavailable, match="reading a blob failed"):
        await blobs.open("0" * 32)
    with pytest.raises(BlobsUnavailable, match="deleting a blob failed"):
        await blobs.delete("0" * 32)


@pytest.mark.s3
async def test_a_missing_bucket_is_not_a_fault_that_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with s3_bucket(monkeypatch) as bucket:
        missing = open_blob_store(f"s3://{bucket.name}-missing/blobs")
        with pytest.raises(StoreError, match="NoSuchBucket") as raised:
            await missing.put(chunks(b"a" * 100))
        assert not isinstance(raised.value, BlobsUnavailable)
