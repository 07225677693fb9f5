"""Trajectories over REST: list, get, labels, statuses, artifacts, the results zip."""

from __future__ import annotations

import io
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from proxy.store import Step, Store
from proxy.store.blobs import LocalBlobStore
from tests.support.openapi import validate
from tests.support.stores import create_key, database_url_fixture, live_proxy, with_store

__all__ = ["database_url_fixture"]

BASE = "/api/v1"


async def _bytes(content: bytes) -> AsyncIterator[bytes]:
    yield content


def seed(database_url: str, data_dir: Path) -> dict[str, str]:
    """Three runs in alpha/nightly (one with artifacts), one in alpha/other, one in beta."""
    blobs = LocalBlobStore(data_dir / "blobs")

    async def work(store: Store) -> dict[str, str]:
        ids: dict[str, str] = {}
        done = await store.create_trajectory(
            "alpha",
            "nightly",
            model="claude-sonnet-4",
            agent="claude-code",
            jetty={"runbook": True},
        )
        await store.update_trajectory(
            done.id,
            status="completed",
            usage={"input_tokens": 100, "output_tokens": 20},
            cost_usd=0.01,
            environment={"image": "python312-uv", "digest": "sha256:abc"},
            steps={"agent": Step(inputs={"prompt": "go"}, outputs={"result": "ok"})},
        )
        for path, content in [
            ("summary.md", b"# Done\n"),
            ("out/data.json", b'{"rows": 3}'),
            ("out/page.html", b"<script>alert(1)</script>"),
        ]:
            info = await blobs.put(_bytes(content))
            kind = "text/html" if path.endswith(".html") else "text/plain"
            await store.add_artifact(done.id, path, info, kind)
        ids["done"] = done.id
        ids["running"] = (await store.create_trajectory("alpha", "nightly", status="running")).id
        ids["pending"] = (await store.create_trajectory("alpha", "nightly")).id
        ids["other_task"] = (await store.create_trajectory("alpha", "other")).id
        ids["beta"] = (await store.create_trajectory("beta", "nightly")).id
        return ids

    return with_store(database_url, work)


def test_list_and_get(database_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    ids = seed(database_url, data_dir)
    with live_proxy(database_url, data_dir) as proxy:
        listing = httpx.get(proxy + f"{BASE}/db/trajectories/alpha/nightly", params={"limit": 2})
        assert listing.status_code == 200
        body = listing.json()
        assert body["total"] == 3 and body["limit"] == 2 and body["page"] == 1
        assert body["has_more"] is True
        assert [t["trajectory_id"] for t in body["trajectories"]] == [
            ids["pending"],
            ids["running"],
        ]
        page2 = httpx.get(
            proxy + f"{BASE}/db/trajectories/alpha/nightly", params={"limit": 2, "page": 2}
        ).json()
        assert [t["trajectory_id"] for t in page2["trajectories"]] == [ids["done"]]
        assert page2["has_more"] is False
        completed = httpx.get(
            proxy + f"{BASE}/db/trajectories/alpha/nightly", params={"status": "completed"}
        ).json()
        assert [t["trajectory_id"] for t in completed["trajectories"]] == [ids["done"]]

        one = httpx.get(proxy + f"{BASE}/db/trajectory/alpha/nightly/{ids['done']}")
        assert one.status_code == 200
        record = one.json()
        assert record["status"] == "completed"
        assert record["init_params"] == {"runbook": True}
        assert record["model"] == "claude-sonnet-4" and record["agent"] == "claude-code"
        assert record["environment"]["digest"] == "sha256:abc"
        assert record["usage"] == {"input_tokens": 100, "output_tokens": 20}
        assert record["steps"]["agent"]["outputs"] == {"result": "ok"}
        assert set(record["steps"]["agent"]) >= {
            "inputs",
            "outputs",
            "activity",
            "created",
            "ended",
        }
        assert record["labels"] == []
        assert [a["path"] for a in record["artifacts"]] == [
            "out/data.json",
            "out/page.html",
            "summary.md",
        ]
        assert record["results_files"] == [{"path": a["path"]} for a in record["artifacts"]]
        summary = record["artifacts"][2]
        assert (
            summary["url"]
            == f"{proxy}{BASE}/trajectory/alpha/nightly/{ids['done']}/artifacts/summary.md"
        )
        downloaded = httpx.get(summary["url"])
        assert downloaded.status_code == 200 and downloaded.content == b"# Done\n"
        assert downloaded.headers["content-disposition"].startswith("attachment;")
        nested = httpx.get(record["artifacts"][0]["url"])
        assert nested.content == b'{"rows": 3}'
        html = httpx.get(record["artifacts"][1]["url"])
        assert html.headers["content-type"] == "application/octet-stream"
        assert html.headers["x-content-type-options"] == "nosniff"


def test_not_found_and_out_of_scope(database_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    ids = seed(database_url, data_dir)
    key = create_key(database_url, "alpha")
    auth = {"authorization": f"Bearer {key}"}
    with live_proxy(database_url, data_dir) as proxy:
        for path in (
            f"/db/trajectory/alpha/other/{ids['done']}",  # right id, wrong task
            f"/db/trajectory/alpha/nightly/{ids['beta']}",  # another collection's run
            f"/db/trajectory/beta/nightly/{ids['beta']}",  # a collection the key may not use
            "/db/trajectory/alpha/nightly/00000000",
            "/db/trajectory/alpha/nightly/NOT-AN-ID",
            "/db/trajectories/beta/nightly",
            f"/trajectory/alpha/nightly/{ids['done']}/artifacts/missing.txt",
            f"/trajectory/beta/nightly/{ids['beta']}/download",
            f"/trajectory/beta/nightly/{ids['beta']}/events",
        ):
            response = httpx.get(proxy + BASE + path, headers=auth)
            assert response.status_code == 404, path
            validate("ErrorResponse", response.json())
        assert httpx.get(proxy + f"{BASE}/db/trajectories/alpha/nightly").status_code == 401
        bad_name = httpx.get(proxy + f"{BASE}/db/trajectories/alpha/.hidden", headers=auth)
        assert bad_name.status_code == 400
        bad_query = httpx.get(
            proxy + f"{BASE}/db/trajectories/alpha/nightly", params={"status": "done"}, headers=auth
        )
        assert bad_query.status_code == 400 and bad_query.json()["error"]["param"] == "status"


@pytest.mark.parametrize(
    "raw_path",
    [
        "artifacts/%2e%2e/%2e%2e/secret",
        "artifacts/out%5cdata.json",
        "artifacts/a%00b",
        "artifacts//etc/passwd",
    ],
)
def test_artifact_path_traversal_is_refused(raw_path: str, tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'db' / 'jetty-proxy.db'}"
    ids = seed(database_url, tmp_path / "data")
    with live_proxy(database_url, tmp_path / "data") as proxy, httpx.Client() as client:
        request = client.build_request("GET", proxy)
        full = f"{BASE}/trajectory/alpha/nightly/{ids['done']}/{raw_path}"
        request.url = request.url.copy_with(raw_path=full.encode())
        response = client.send(request)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "path"


def test_labels(database_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    ids = seed(database_url, data_dir)
    with live_proxy(database_url, data_dir) as proxy:
        url = proxy + f"{BASE}/trajectory/alpha/nightly/{ids['done']}/labels"
        first = httpx.post(url, json={"key": "quality", "value": "good", "author": "ann"})
        assert first.status_code == 200
        httpx.post(url, json={"key": "quality", "value": "great", "author": "ben"})
        labels = httpx.post(url, json={"key": "owner", "value": "ops"}).json()["labels"]
        assert [(x["key"], x["value"], x["author"]) for x in labels] == [
            ("owner", "ops", None),
            ("quality", "great", "ben"),
        ]
        record = httpx.get(proxy + f"{BASE}/db/trajectory/alpha/nightly/{ids['done']}").json()
        assert [x["key"] for x in record["labels"]] == ["owner", "quality"]
        for bad in (
            {"key": "", "value": "x"},
            {"value": "x"},
            {"key": "k", "value": "v", "extra": 1},
        ):
            response = httpx.post(url, json=bad)
            assert response.status_code == 400, bad
        assert httpx.post(url, content=b"{nope").status_code == 400
        assert httpx.post(url, json=["key"]).status_code == 400
        missing = proxy + f"{BASE}/trajectory/alpha/nightly/00000000/labels"
        assert httpx.post(missing, json={"key": "k", "value": "v"}).status_code == 404


def test_statuses(database_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    ids = seed(database_url, data_dir)
    with live_proxy(database_url, data_dir) as proxy:
        url = proxy + f"{BASE}/trajectory/alpha/nightly/statuses"
        changed = httpx.post(url, json={ids["running"]: "cancelled", ids["done"]: "archived"})
        assert changed.status_code == 200
        assert changed.json() == {
            "statuses": {ids["running"]: "cancelled", ids["done"]: "archived"}
        }
        record = httpx.get(proxy + f"{BASE}/db/trajectory/alpha/nightly/{ids['running']}").json()
        assert record["status"] == "cancelled" and record["ended"] is not None
        # Asking again for the same status is fine; a finished run cannot be cancelled.
        assert httpx.post(url, json={ids["running"]: "cancelled"}).status_code == 200
        conflict = httpx.post(url, json={ids["done"]: "cancelled"})
        assert conflict.status_code == 409
        # An unknown or foreign id changes nothing, not even the valid ones beside it.
        for stranger in ("00000000", ids["beta"], ids["other_task"]):
            response = httpx.post(url, json={ids["pending"]: "cancelled", stranger: "cancelled"})
            assert response.status_code == 404
        pending = httpx.get(proxy + f"{BASE}/db/trajectory/alpha/nightly/{ids['pending']}").json()
        assert pending["status"] == "pending"
        for bad in ({ids["pending"]: "completed"}, {}, [ids["pending"]]):
            assert httpx.post(url, json=bad).status_code == 400, bad


def test_results_zip(database_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    ids = seed(database_url, data_dir)
    with live_proxy(database_url, data_dir) as proxy:
        response = httpx.get(proxy + f"{BASE}/trajectory/alpha/nightly/{ids['done']}/download")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/zip"
        assert response.headers["content-disposition"].startswith(
            f'attachment; filename="{ids["done"]}.zip"'
        )
        archive = zipfile.ZipFile(io.BytesIO(response.content))
        assert archive.testzip() is None
        assert sorted(archive.namelist()) == ["out/data.json", "out/page.html", "summary.md"]
        assert archive.read("summary.md") == b"# Done\n"
        empty = httpx.get(proxy + f"{BASE}/trajectory/alpha/nightly/{ids['pending']}/download")
        assert zipfile.ZipFile(io.BytesIO(empty.content)).namelist() == []


def test_a_page_past_any_listing_is_a_400(database_url: str, tmp_path: Path) -> None:
    with live_proxy(database_url, tmp_path / "data") as proxy:
        response = httpx.get(
            f"{proxy}{BASE}/db/trajectories/alpha/nightly", params={"page": str(10**21)}
        )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "page"
