"""``/api/v1/collections/{c}/environment``: variables readable, secrets write-only and redacted."""

from __future__ import annotations

from pathlib import Path

import httpx

from proxy.store import Store
from tests.support.openapi import validate
from tests.support.stores import create_key, database_url_fixture, live_proxy, with_store

__all__ = ["database_url_fixture"]

SECRET = "ghp_f4k3T0k3nV4lu3"


def test_environment_round_trip(database_url: str, tmp_path: Path) -> None:
    key = create_key(database_url, "alpha")
    auth = {"authorization": f"Bearer {key}"}
    with live_proxy(database_url, tmp_path / "data") as proxy:
        url = proxy + "/api/v1/collections/alpha/environment"
        empty = httpx.get(url, headers=auth)
        assert empty.json() == {"collection": "alpha", "variables": {}, "secrets": []}
        patched = httpx.patch(
            url,
            headers=auth,
            json={"variables": {"REGION": "eu"}, "secrets": {"GITHUB_TOKEN": SECRET, "B": "bbbb"}},
        )
        assert patched.status_code == 200
        assert patched.json() == {
            "collection": "alpha",
            "variables": {"REGION": "eu"},
            "secrets": ["B", "GITHUB_TOKEN"],
        }
        assert SECRET not in patched.text
        removed = httpx.patch(
            url, headers=auth, json={"variables": {"REGION": None}, "secrets": {"B": None}}
        )
        assert removed.json() == {
            "collection": "alpha",
            "variables": {},
            "secrets": ["GITHUB_TOKEN"],
        }
        assert SECRET not in httpx.get(url, headers=auth).text

        # The run engine reads them in clear; a run that echoes one is recorded redacted.
        async def echo(store: Store) -> str:
            assert await store.secret_values("alpha") == {"GITHUB_TOKEN": SECRET}
            run = await store.create_trajectory("alpha", "t", jetty={"note": SECRET})
            await store.append_event(run.id, "tool_result", {"output": f"token={SECRET}"})
            await store.update_trajectory(run.id, status="completed")
            return run.id

        run = with_store(database_url, echo)
        record = httpx.get(proxy + f"/api/v1/db/trajectory/alpha/t/{run}", headers=auth)
        events = httpx.get(proxy + f"/api/v1/trajectory/alpha/t/{run}/events", headers=auth)
        for text in (record.text, events.text):
            assert SECRET not in text
            assert "[redacted:GITHUB_TOKEN]" in text


def test_environment_scope_and_bad_input(database_url: str, tmp_path: Path) -> None:
    key = create_key(database_url, "alpha")
    auth = {"authorization": f"Bearer {key}"}
    with live_proxy(database_url, tmp_path / "data") as proxy:
        other = proxy + "/api/v1/collections/beta/environment"
        assert httpx.get(other, headers=auth).status_code == 404
        denied = httpx.patch(other, headers=auth, json={"secrets": {"X": "yyyy"}})
        assert denied.status_code == 404
        validate("ErrorResponse", denied.json())
        assert httpx.get(proxy + "/api/v1/collections/alpha/environment").status_code == 401

        url = proxy + "/api/v1/collections/alpha/environment"
        bad_patches: list[dict[str, object]] = [
            {"variables": {"1BAD": "x"}},
            {"variables": {"OK": 3}},
            {"secrets": {"A-B": "x"}},
            {"unknown": {}},
            {"secrets": {"BIG": "x" * 70_000}},
        ]
        for bad in bad_patches:
            response = httpx.patch(url, headers=auth, json=bad)
            assert response.status_code == 400, bad
            validate("ErrorResponse", response.json())
        assert httpx.patch(url, headers=auth, content=b"not json").status_code == 400
        assert httpx.get(
            proxy + "/api/v1/collections/..%2Fx/environment", headers=auth
        ).status_code in (
            400,
            404,
        )
        assert httpx.get(url, headers=auth).json()["secrets"] == []
