"""``/v1/files`` through the real openai client and raw HTTP, checked against OpenAI's schemas."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.openapi import validate
from tests.support.stores import create_key, database_url_fixture, live_proxy

__all__ = ["database_url_fixture"]


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_openai_client_round_trip(database_url: str, tmp_path: Path) -> None:
    key = create_key(database_url, "alpha")
    with live_proxy(database_url, tmp_path / "data") as proxy:
        client = openai.OpenAI(base_url=proxy + "/v1", api_key=key, max_retries=0)

        raw = client.files.with_raw_response.create(
            file=("notes.jsonl", b'{"a": 1}\n{"a": 2}\n', "text/html"), purpose="batch"
        )
        validate("OpenAIFile", json.loads(raw.text))
        created = raw.parse()
        assert created.id.startswith("file-")
        assert created.filename == "notes.jsonl"
        assert created.bytes == 18
        assert created.purpose == "batch"
        assert created.status == "processed"

        second = client.files.create(file=("b.txt", b"bee"), purpose="user_data")
        raw_list = client.files.with_raw_response.list()
        validate("ListFilesResponse", json.loads(raw_list.text))
        assert [f.id for f in raw_list.parse()] == [second.id, created.id]
        assert [f.id for f in client.files.list(purpose="batch")] == [created.id]

        raw_one = client.files.with_raw_response.retrieve(created.id)
        validate("OpenAIFile", json.loads(raw_one.text))
        assert raw_one.parse() == created

        content = client.files.content(created.id)
        assert content.read() == b'{"a": 1}\n{"a": 2}\n'

        raw_deleted = client.files.with_raw_response.delete(created.id)
        validate("DeleteFileResponse", json.loads(raw_deleted.text))
        deleted = raw_deleted.parse()
        assert deleted.id == created.id and deleted.deleted is True

        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(created.id)
        with pytest.raises(openai.NotFoundError):
            client.files.content(created.id)
        with pytest.raises(openai.NotFoundError):
            client.files.delete(created.id)
        assert [f.id for f in client.files.list()] == [second.id]

        # Jetty's SDK uploads to /api/v1/files; the ids are the same kind.
        jetty = httpx.post(
            proxy + "/api/v1/files",
            headers=auth(key),
            files={"file": ("runbook.md", b"# Steps")},
            data={"purpose": "user_data"},
        )
        assert jetty.status_code == 200
        assert client.files.retrieve(jetty.json()["id"]).filename == "runbook.md"


def test_cursor_pagination_follows_after(database_url: str, tmp_path: Path) -> None:
    with live_proxy(database_url, tmp_path / "data") as proxy:
        client = openai.OpenAI(base_url=proxy + "/v1", api_key="local", max_retries=0)
        ids = [
            client.files.create(file=(f"{n}.txt", b"x"), purpose="user_data").id for n in range(5)
        ]
        page = client.files.list(limit=2)
        assert page.has_more is True
        assert [f.id for f in page]  # iterating a page fetches the next ones == ids[::-1]
        oldest_first = client.files.list(limit=2, order="asc")
        assert [f.id for f in oldest_first.data] == ids[:2]

        empty = httpx.get(proxy + "/v1/files", params={"purpose": "vision"}).json()
        # OpenAI sends null ids on an empty page (its published schema says string).
        assert empty == {
            "object": "list",
            "data": [],
            "first_id": None,
            "last_id": None,
            "has_more": False,
        }


def test_content_is_an_attachment_never_sniffed(database_url: str, tmp_path: Path) -> None:
    with live_proxy(database_url, tmp_path / "data") as proxy:
        page = b"<html><script>alert(document.cookie)</script></html>"
        # Built by hand: clients would escape the NUL and the backslashes in the name.
        multipart = (
            b"--b0undary\r\n"
            b'Content-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n'
            b"--b0undary\r\n"
            b'Content-Disposition: form-data; name="file"; filename="..\\..\\ev\x00il.html"\r\n'
            b"Content-Type: image/png\r\n\r\n" + page + b"\r\n--b0undary--\r\n"
        )
        created = httpx.post(
            proxy + "/v1/files",
            content=multipart,
            headers={"content-type": "multipart/form-data; boundary=b0undary"},
        )
        assert created.status_code == 200, created.text
        body = created.json()
        assert body["filename"] == "ev_il.html"
        content = httpx.get(proxy + f"/v1/files/{body['id']}/content")
        assert content.content == page
        assert content.headers["content-type"] == "application/octet-stream"
        assert content.headers["x-content-type-options"] == "nosniff"
        assert content.headers["content-disposition"] == (
            "attachment; filename=\"ev_il.html\"; filename*=UTF-8''ev_il.html"
        )
        assert "sandbox" in content.headers["content-security-policy"]

        png = httpx.post(
            proxy + "/v1/files",
            files={"file": ("pic.txt", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "text/html")},
            data={"purpose": "vision"},
        ).json()
        served = httpx.get(proxy + f"/v1/files/{png['id']}/content")
        assert served.headers["content-type"] == "image/png"


def test_keys_see_only_their_collections(database_url: str, tmp_path: Path) -> None:
    alpha = create_key(database_url, "alpha")
    both = create_key(database_url, "beta", "alpha")
    with live_proxy(database_url, tmp_path / "data") as proxy:
        mine = httpx.post(
            proxy + "/v1/files",
            headers=auth(alpha),
            files={"file": ("a.txt", b"a")},
            data={"purpose": "user_data"},
        ).json()
        # A key with several collections files under its first unless it names one.
        theirs = httpx.post(
            proxy + "/v1/files",
            headers=auth(both),
            files={"file": ("b.txt", b"b")},
            data={"purpose": "user_data"},
        ).json()
        shared = httpx.post(
            proxy + "/v1/files",
            headers=auth(both),
            files={"file": ("c.txt", b"c")},
            data={"purpose": "user_data", "collection": "alpha"},
        ).json()

        listed = httpx.get(proxy + "/v1/files", headers=auth(alpha)).json()
        assert [f["id"] for f in listed["data"]] == [shared["id"], mine["id"]]
        beta = httpx.get(proxy + "/v1/files", headers=auth(both)).json()
        assert [f["id"] for f in beta["data"]] == [theirs["id"]]
        for path in (f"/v1/files/{theirs['id']}", f"/v1/files/{theirs['id']}/content"):
            hidden = httpx.get(proxy + path, headers=auth(alpha))
            assert hidden.status_code == 404
            validate("ErrorResponse", hidden.json())
        assert (
            httpx.delete(proxy + f"/v1/files/{theirs['id']}", headers=auth(alpha)).status_code
            == 404
        )
        assert httpx.get(proxy + f"/v1/files/{theirs['id']}", headers=auth(both)).status_code == 200
        foreign = httpx.get(proxy + "/v1/files", headers=auth(alpha), params={"collection": "beta"})
        assert foreign.status_code == 404
        upload = httpx.post(
            proxy + "/v1/files",
            headers=auth(alpha),
            files={"file": ("x.txt", b"x")},
            data={"purpose": "user_data", "collection": "beta"},
        )
        assert upload.status_code == 404
        assert httpx.get(proxy + "/v1/files").status_code == 401


def test_bad_uploads(database_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with live_proxy(database_url, data_dir, upload_max_bytes=1000) as proxy:
        cases = [
            ({"files": {"file": ("a.txt", b"a")}}, "purpose"),
            ({"files": {"file": ("a.txt", b"a")}, "data": {"purpose": "evals"}}, "purpose"),
            # (A form-encoded body would be refused before: a server without keys takes
            # none, as web pages can send them.)
            ({"content": b"purpose=user_data", "headers": {"content-type": "text/csv"}}, None),
            (
                {
                    "content": b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'
                    b"batch\r\n--b--\r\n",
                    "headers": {"content-type": "multipart/form-data; boundary=b"},
                },
                "file",
            ),
            ({"files": {"file": ("a.txt", b"a")}, "data": {"purpose": "user_data", "x": "1"}}, "x"),
            ({"files": {"doc": ("a.txt", b"a")}, "data": {"purpose": "user_data"}}, "doc"),
            ({"json": {"purpose": "user_data"}}, None),
        ]
        for kwargs, param in cases:
            response = httpx.post(proxy + "/v1/files", **kwargs)  # type: ignore[arg-type]
            assert response.status_code == 400, (kwargs, response.text)
            validate("ErrorResponse", response.json())
            assert response.json()["error"]["param"] == param

        # Over the limit by one byte: refused while streaming, and nothing is left behind.
        too_big = httpx.post(
            proxy + "/v1/files", files={"file": ("big.bin", b"x" * 1001)}, data={"purpose": "batch"}
        )
        assert too_big.status_code == 413
        validate("ErrorResponse", too_big.json())
        # Far over: refused from Content-Length before a byte of the body is read.
        huge = httpx.post(
            proxy + "/v1/files",
            files={"file": ("huge.bin", b"x" * 200_000)},
            data={"purpose": "batch"},
        )
        assert huge.status_code == 413
        exact = httpx.post(
            proxy + "/v1/files", files={"file": ("ok.bin", b"x" * 1000)}, data={"purpose": "batch"}
        )
        assert exact.status_code == 200
        listed = httpx.get(proxy + "/v1/files").json()["data"]
        assert [f["filename"] for f in listed] == ["ok.bin"]
        assert httpx.get(proxy + "/v1/files/file-nope").status_code == 404
        assert httpx.get(proxy + "/v1/files", params={"limit": 0}).status_code == 400
    blobs = [p for p in (data_dir / "blobs").rglob("*") if p.is_file()]
    assert len(blobs) == 1
