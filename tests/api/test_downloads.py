"""Downloads (files, artifacts, the results zip) on every blob store, streamed both ways."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from proxy.store import Store
from proxy.store.blobs import open_blob_store
from tests.support.blobs import BlobPlace, blob_place_fixture
from tests.support.memory import peak_rss_rise
from tests.support.stores import live_proxy, with_store

__all__ = ["blob_place_fixture"]

MIB = 1024 * 1024
#: Large enough that holding it whole would dwarf what streaming needs (a few parts).
LARGE = 160 * MIB


def test_a_large_file_streams_in_and_out(blob_place: BlobPlace, tmp_path: Path) -> None:
    source = tmp_path / "large.bin"
    digest = hashlib.sha256()
    with source.open("wb") as out:
        block = os.urandom(MIB)
        for _ in range(LARGE // MIB):
            out.write(block)
            digest.update(block)
    database = f"sqlite:///{tmp_path / 'db.sqlite'}"
    with live_proxy(database, tmp_path / "data", blob_url=blob_place.url) as proxy:
        with peak_rss_rise() as upload, source.open("rb") as file:
            created = httpx.post(
                proxy + "/v1/files",
                files={"file": ("large.bin", file)},
                data={"purpose": "user_data"},
                timeout=120,
            )
        assert created.status_code == 200, created.text
        assert created.json()["bytes"] == LARGE
        assert len(blob_place.leftovers()) == 1

        received = hashlib.sha256()
        size = 0
        with (
            peak_rss_rise() as download,
            httpx.stream(
                "GET", proxy + f"/v1/files/{created.json()['id']}/content", timeout=120
            ) as response,
        ):
            assert response.status_code == 200
            assert response.headers["content-length"] == str(LARGE)
            for chunk in response.iter_bytes():
                received.update(chunk)
                size += len(chunk)
        assert (size, received.hexdigest()) == (LARGE, digest.hexdigest())
    # Neither direction held the file: memory rose by a few buffers, not by its size.
    assert upload.bytes < LARGE // 3, upload.bytes
    assert download.bytes < LARGE // 3, download.bytes


def test_artifacts_and_the_zip_come_back_identical(blob_place: BlobPlace, tmp_path: Path) -> None:
    blobs = open_blob_store(blob_place.url)
    contents = {
        "summary.md": b"# Done\n",
        "out/data.bin": os.urandom(3 * MIB + 17),
        "out/empty.txt": b"",
    }

    async def seed(store: Store) -> str:
        run = await store.create_trajectory("alpha", "nightly", status="completed")
        for path, content in contents.items():
            info = await blobs.put(_once(content))
            await store.add_artifact(run.id, path, info, "application/octet-stream")
        return run.id

    database = f"sqlite:///{tmp_path / 'db.sqlite'}"
    run_id = with_store(database, seed)
    base = f"/api/v1/trajectory/alpha/nightly/{run_id}"
    with live_proxy(database, tmp_path / "data", blob_url=blob_place.url) as proxy:
        for path, content in contents.items():
            response = httpx.get(proxy + f"{base}/artifacts/{path}")
            assert response.status_code == 200
            assert response.content == content
            assert response.headers["etag"] == f'"{hashlib.sha256(content).hexdigest()}"'
        archive = zipfile.ZipFile(io.BytesIO(httpx.get(proxy + f"{base}/download").content))
        assert archive.testzip() is None
        assert {name: archive.read(name) for name in archive.namelist()} == contents


async def _once(content: bytes) -> AsyncIterator[bytes]:
    yield content
