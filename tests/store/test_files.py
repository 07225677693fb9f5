"""Files and artifacts on every engine: ids, storage paths, listings, replacement."""

from __future__ import annotations

import pytest

from proxy.store import BlobInfo, RecordNotFound, Store

pytestmark = pytest.mark.anyio


def blob(n: int) -> BlobInfo:
    return BlobInfo(key=f"{n:032x}", size=n, sha256=f"{n:064x}")


async def test_file_ids_and_default_paths(store: Store) -> None:
    record, replaced = await store.add_file(
        "alpha", None, "notes.txt", "user_data", blob(1), "text/plain"
    )
    assert replaced is None
    assert record.id.startswith("file-") and len(record.id) == 29
    assert record.storage_path == f"alpha/files/{record.id}/notes.txt"
    assert await store.get_file(record.id) == record
    assert await store.get_file_by_path(record.storage_path) == record
    assert await store.get_file("file-missing") is None


async def test_list_files_orders_pages_and_filters(store: Store) -> None:
    ids = []
    for n in range(5):
        purpose = "batch" if n == 2 else "user_data"
        record, _ = await store.add_file("alpha", None, f"f{n}", purpose, blob(n), "text/plain")
        ids.append(record.id)
    await store.add_file("beta", None, "other", "user_data", blob(9), "text/plain")

    newest = await store.list_files("alpha", limit=2)
    assert [f.id for f in newest] == [ids[4], ids[3]]
    rest = await store.list_files("alpha", after=ids[3], limit=10)
    assert [f.id for f in rest] == [ids[2], ids[1], ids[0]]
    oldest = await store.list_files("alpha", order="asc", after=ids[1], limit=2)
    assert [f.id for f in oldest] == [ids[2], ids[3]]
    assert [f.id for f in await store.list_files("alpha", purpose="batch")] == [ids[2]]
    assert len(await store.list_files("beta")) == 1


async def test_storage_paths_replace_and_list_by_prefix(store: Store) -> None:
    first, replaced = await store.add_file(
        "alpha", "alpha/data/a.csv", "a.csv", "user_data", blob(1), "text/csv"
    )
    assert replaced is None
    second, replaced = await store.add_file(
        "alpha", "alpha/data/a.csv", "a.csv", "user_data", blob(2), "text/csv"
    )
    assert replaced == blob(1).key
    assert second.id != first.id
    assert await store.get_file(first.id) is None
    await store.add_file("alpha", "alpha/data/B.csv", "B.csv", "user_data", blob(3), "text/csv")
    await store.add_file("alpha", "alpha/data/sub/c.csv", "c.csv", "user_data", blob(4), "text/csv")
    await store.add_file(
        "alpha", "alpha/database.txt", "database.txt", "user_data", blob(5), "text/plain"
    )
    await store.add_file("alpha", "alpha/data_%_/x", "x", "user_data", blob(6), "text/plain")

    paths = [f.storage_path for f in await store.list_paths("alpha", "alpha/data/")]
    # Byte order on both engines: upper case before lower case.
    assert paths == ["alpha/data/B.csv", "alpha/data/a.csv", "alpha/data/sub/c.csv"]
    after = [
        f.storage_path
        for f in await store.list_paths("alpha", "alpha/data/", after="alpha/data/a.csv")
    ]
    assert after == ["alpha/data/sub/c.csv"]
    assert len(await store.list_paths("alpha", "alpha/data", limit=10)) == 5
    # LIKE wildcards in a prefix are plain characters.
    assert [f.storage_path for f in await store.list_paths("alpha", "alpha/data_%")] == [
        "alpha/data_%_/x"
    ]
    assert await store.list_paths("beta", "alpha/") == []


async def test_delete_file_returns_what_it_deleted(store: Store) -> None:
    record, _ = await store.add_file("alpha", None, "x", "user_data", blob(1), "text/plain")
    deleted = await store.delete_file(record.id)
    assert deleted == record
    assert await store.delete_file(record.id) is None
    assert await store.list_files("alpha") == []


async def test_artifacts(store: Store) -> None:
    run = await store.create_trajectory("alpha", "t")
    first, replaced = await store.add_artifact(run.id, "summary.md", blob(1), "text/markdown")
    assert replaced is None and first.path == "summary.md" and first.bytes == 1
    await store.add_artifact(run.id, "out/data.json", blob(2), "application/json")
    again, replaced = await store.add_artifact(run.id, "summary.md", blob(3), "text/markdown")
    assert replaced == blob(1).key and again.blob_key == blob(3).key
    assert [a.path for a in await store.list_artifacts(run.id)] == ["out/data.json", "summary.md"]
    assert await store.get_artifact(run.id, "out/data.json") is not None
    assert await store.get_artifact(run.id, "nope") is None
    with pytest.raises(RecordNotFound):
        await store.add_artifact("ffffffff", "x", blob(4), "text/plain")
