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


def test_an_upload_to_an_unreachable_object_store_is_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    database = f"sqlite:///{tmp_path / 'db.sqlite'}"
    with live_proxy(database, tmp_path / "data", blob_url="s3://nowhere/blobs") as proxy:
        response = httpx.post(
            proxy + "/v1/files",
            files={"file": ("notes.txt", b"hello")},
            data={"purpose": "user_data"},
            timeout=60,
        )
        listed = httpx.get(proxy + "/v1/files").json()
    assert response.status_code == 503, response.text
    assert response.headers["x-should-retry"] == "true"
    assert response.json()["error"]["message"] == "The file store is unavailable; retry shortly."
    assert listed["data"] == []
