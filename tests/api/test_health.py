"""``/readyz``: the database and the blob store, each saying whether it is ready (the reasons
go to the log, not to whoever can reach ``/readyz``)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.blobs import BlobPlace, blob_place_fixture, s3_bucket
from tests.support.stores import live_proxy

__all__ = ["blob_place_fixture"]


def test_ready_on_every_blob_store(blob_place: BlobPlace, tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'db.sqlite'}"
    with live_proxy(database, tmp_path / "data", blob_url=blob_place.url) as proxy:
        response = httpx.get(proxy + "/readyz")
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["store"], body["blobs"]) == ("ok", "ok", "ok")


def test_a_blob_directory_that_cannot_be_written_is_not_ready(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file where the blob directory should be")
    database = f"sqlite:///{tmp_path / 'db.sqlite'}"
    with live_proxy(database, tmp_path / "data", blob_dir=tmp_path / "taken" / "blobs") as proxy:
        response = httpx.get(proxy + "/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable" and body["store"] == "ok"
    assert body["blobs"] == "unavailable"


@pytest.mark.s3
def test_a_missing_bucket_is_not_ready(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    database = f"sqlite:///{tmp_path / 'db.sqlite'}"
    with s3_bucket(monkeypatch) as bucket:
        url = f"s3://{bucket.name}-missing/blobs"
        with live_proxy(database, tmp_path / "data", blob_url=url) as proxy:
            response = httpx.get(proxy + "/readyz")
    assert response.status_code == 503
    assert response.json()["blobs"] == "unavailable"
