"""``GET /api/v1/snapshots`` and the snapshot entries of ``GET /v1/models``, on a live proxy."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from proxy.app import create_app
from proxy.settings import Settings, SnapshotSettings
from tests.support.live import serve
from tests.support.openapi import validate

pytestmark = pytest.mark.docker


def _settings(tmp_path: Path, docker_host: str, **extra: object) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        upstream_url="http://127.0.0.1:9/v1",
        backend="docker",
        docker_host=docker_host,
        snapshots={"prism-playwright": SnapshotSettings(image="jetty-env/prism-playwright:never")},
        **extra,  # type: ignore[arg-type]
    )


def test_snapshots_endpoint_lists_the_catalog_and_what_is_built(
    tmp_path: Path, docker_host: str, python312_uv: str
) -> None:
    with serve(create_app(_settings(tmp_path, docker_host))) as proxy:
        response = httpx.get(proxy + "/api/v1/snapshots")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert body["default"] == "python312-uv"
    entries = {entry["id"]: entry for entry in body["data"]}
    assert list(entries) == ["python312-uv", "prism-playwright"]
    python = entries["python312-uv"]
    assert python["built"] is True
    assert python["image"] == python312_uv
    assert python["default"] is True
    assert python["image_id"].startswith("sha256:")
    assert python["size_bytes"] > 0
    assert "uv" in python["includes"]
    assert entries["prism-playwright"]["built"] is False
    assert entries["prism-playwright"]["image_id"] is None


def test_models_list_the_snapshots_as_proxy_owned_models(tmp_path: Path, docker_host: str) -> None:
    with serve(create_app(_settings(tmp_path, docker_host))) as proxy:
        response = httpx.get(proxy + "/v1/models")
    assert response.status_code == 200
    body = response.json()
    validate("ListModelsResponse", body)
    owned = {m["id"]: m for m in body["data"] if m["owned_by"] == "jetty-proxy"}
    assert set(owned) == {"snapshot/python312-uv", "snapshot/prism-playwright"}
    assert all(m["object"] == "model" for m in owned.values())


def test_without_an_image_engine_nothing_is_claimed_built(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", upstream_url="http://127.0.0.1:9/v1", backend="local"
    )
    with serve(create_app(settings)) as proxy:
        snapshots = httpx.get(proxy + "/api/v1/snapshots").json()
        models = httpx.get(proxy + "/v1/models").json()
    assert [entry["built"] for entry in snapshots["data"]] == [None, None]
    assert models["data"] == []
