"""Storage paths: ``/api/v1/sandbox/upload``, ``/api/v1/file/{path}``, ``/api/v1/list-files``."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.openapi import validate
from tests.support.stores import create_key, database_url_fixture, live_proxy

__all__ = ["database_url_fixture"]


def upload(proxy: str, key: str | None = None, **data: str) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    content = data.pop("content", "a,b\n1,2\n")
    return httpx.post(
        proxy + "/api/v1/sandbox/upload",
        headers=headers,
        files={"file": (data.pop("filename", "data.csv"), content.encode())},
        data=data,
    )


def test_upload_download_and_list(database_url: str, tmp_path: Path) -> None:
    key = create_key(database_url, "alpha", "beta")
    auth = {"authorization": f"Bearer {key}"}
    with live_proxy(database_url, tmp_path / "data") as proxy:
        first = upload(proxy, key)
        assert first.status_code == 201
        stored = first.json()
        path = stored["storage_path"]
        assert path.startswith("alpha/uploads/") and path.endswith("/data.csv")
        assert stored["file_id"].startswith("file-")
        assert stored["bytes"] == 8
        assert stored["content_type"] == "text/csv; charset=utf-8"

        named = upload(proxy, key, collection="beta", path="inputs/./q1//sales.csv")
        assert named.json()["storage_path"] == "beta/inputs/q1/sales.csv"
        replaced = upload(proxy, key, collection="beta", path="inputs/q1/sales.csv", content="new")
        assert replaced.json()["file_id"] != named.json()["file_id"]
        upload(proxy, key, collection="beta", path="inputs/q2.csv")

        got = httpx.get(proxy + f"/api/v1/file/{path}", headers=auth)
        assert got.status_code == 200 and got.content == b"a,b\n1,2\n"
        assert got.headers["content-disposition"].startswith('attachment; filename="data.csv"')
        assert got.headers["x-content-type-options"] == "nosniff"
        newer = httpx.get(proxy + "/api/v1/file/beta/inputs/q1/sales.csv", headers=auth)
        assert newer.content == b"new"

        listing = httpx.get(
            proxy + "/api/v1/list-files", params={"prefix": "beta/inputs/"}, headers=auth
        )
        assert listing.status_code == 200
        assert [f["storage_path"] for f in listing.json()["files"]] == [
            "beta/inputs/q1/sales.csv",
            "beta/inputs/q2.csv",
        ]
        default = httpx.get(proxy + "/api/v1/list-files", headers=auth).json()
        assert default["prefix"] == "alpha/"
        assert [f["storage_path"] for f in default["files"]] == [path]
        paged = httpx.get(
            proxy + "/api/v1/list-files", params={"prefix": "beta", "limit": 1}, headers=auth
        ).json()
        assert paged["has_more"] is True and len(paged["files"]) == 1

        # An OpenAI-style upload has a storage path too, and the reverse: same file table.
        via_files = httpx.post(
            proxy + "/v1/files",
            headers=auth,
            files={"file": ("r.md", b"# r")},
            data={"purpose": "user_data"},
        ).json()
        listed = httpx.get(
            proxy + "/api/v1/list-files", params={"prefix": "alpha/files/"}, headers=auth
        )
        assert [f["file_id"] for f in listed.json()["files"]] == [via_files["id"]]
        same = httpx.get(proxy + f"/v1/files/{stored['file_id']}/content", headers=auth)
        assert same.content == b"a,b\n1,2\n"


def test_other_collections_are_not_found(database_url: str, tmp_path: Path) -> None:
    alpha = create_key(database_url, "alpha")
    beta = create_key(database_url, "beta")
    with live_proxy(database_url, tmp_path / "data") as proxy:
        path = upload(proxy, beta).json()["storage_path"]
        auth = {"authorization": f"Bearer {alpha}"}
        assert httpx.get(proxy + f"/api/v1/file/{path}", headers=auth).status_code == 404
        assert httpx.get(proxy + "/api/v1/file/alpha/nothing.txt", headers=auth).status_code == 404
        assert httpx.get(proxy + "/api/v1/file/alpha", headers=auth).status_code == 404
        listing = httpx.get(proxy + "/api/v1/list-files", params={"prefix": "beta/"}, headers=auth)
        assert listing.status_code == 404
        validate("ErrorResponse", listing.json())
        assert upload(proxy, alpha, collection="beta").status_code == 404
        assert httpx.get(proxy + f"/api/v1/file/{path}").status_code == 401


@pytest.mark.parametrize(
    "raw_path",
    [
        "/api/v1/file/alpha/%2e%2e/beta/secret.txt",
        "/api/v1/file/alpha/..%2fbeta/x",
        "/api/v1/file/%2fetc/passwd",
        "/api/v1/file//etc/passwd",
        "/api/v1/file/alpha/a%00b",
        "/api/v1/file/alpha/a%5cb",
        "/api/v1/file/alpha%5c..%5cbeta",
    ],
)
def test_traversal_in_file_paths_is_refused(raw_path: str, tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'db' / 'jetty-proxy.db'}"
    with live_proxy(database_url, tmp_path / "data") as proxy, httpx.Client() as client:
        request = client.build_request("GET", proxy)
        request.url = request.url.copy_with(raw_path=raw_path.encode())
        response = client.send(request)
        assert response.status_code == 400, response.text
        validate("ErrorResponse", response.json())
        assert response.json()["error"]["param"] == "storage_path"


def test_traversal_in_upload_paths_and_prefixes_is_refused(
    database_url: str, tmp_path: Path
) -> None:
    with live_proxy(database_url, tmp_path / "data") as proxy:
        for bad in ("../beta/x", "a/../../x", "/etc/passwd", "a\\b", "a\x00b", "files/x", ""):
            response = upload(proxy, path=bad)
            assert response.status_code == 400, (bad, response.text)
            assert response.json()["error"]["param"] == "path"
        for bad in ("default/../beta/", "/default", "default\\x", "a\x00"):
            listing = httpx.get(proxy + "/api/v1/list-files", params={"prefix": bad})
            assert listing.status_code == 400, (bad, listing.text)
            assert listing.json()["error"]["param"] == "prefix"
        assert upload(proxy, collection="../x").status_code == 400
        assert httpx.get(proxy + "/api/v1/list-files").json()["files"] == []


def test_upload_limit(database_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with live_proxy(database_url, data_dir, upload_max_bytes=100) as proxy:
        assert upload(proxy, content="x" * 101).status_code == 413
        assert upload(proxy, content="x" * 100_000).status_code == 413
        assert upload(proxy, content="x" * 100).status_code == 201
        assert len(httpx.get(proxy + "/api/v1/list-files").json()["files"]) == 1
    assert len([p for p in (data_dir / "blobs").rglob("*") if p.is_file()]) == 1
