"""``GET /openapi.json``: valid OpenAPI 3.1, public, and covering every route of the proxy's own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate as validate_openapi
from starlette.routing import Mount, Route

from proxy.api.openapi import ErrorBody, openapi_document
from proxy.app import create_app
from proxy.errors import Conflict, InvalidField, ProxyError
from proxy.settings import Settings
from tests.support.stores import create_key, fresh_database, live_proxy


def _operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item}


def _own_routes(tmp_path: Path) -> set[tuple[str, str]]:
    """Every (method, OpenAPI path) the app serves outside OpenAI's /v1/ namespace, but its
    pages (for browsers) and the signed mount that serves some of them."""
    app = create_app(Settings(data_dir=tmp_path / "data"))
    own = set()
    for route in app.routes:
        if isinstance(route, Mount):
            continue
        assert isinstance(route, Route)
        if route.path.startswith("/v1/") or not route.include_in_schema:
            continue
        path = route.path.replace(":path}", "}")
        own |= {(method, path) for method in route.methods or () if method != "HEAD"}
    return own


def test_the_description_is_public_valid_and_covers_every_own_route(tmp_path: Path) -> None:
    with fresh_database("sqlite", tmp_path) as database_url:
        create_key(database_url, "acme")  # authentication is on
        with live_proxy(database_url, tmp_path / "data") as proxy:
            response = httpx.get(proxy + "/openapi.json")
            refused = httpx.get(proxy + "/api/v1/snapshots")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert refused.status_code == 401
    document = response.json()
    validate_openapi(document)
    assert document["openapi"].startswith("3.1")
    own = _own_routes(tmp_path)
    assert any(path.startswith("/api/v1/") for _, path in own)
    assert _operations(document) == own
    assert not any(path.startswith("/v1/") for path in document["paths"])
    public = {
        path
        for path, item in document["paths"].items()
        for operation in item.values()
        if operation.get("security") == []
    }
    assert public == {"/healthz", "/readyz", "/metrics", "/openapi.json"}
    ErrorBody.model_validate(refused.json())


def test_request_models_are_the_handlers_own(tmp_path: Path) -> None:
    document = openapi_document(create_app(Settings(data_dir=tmp_path / "data")).routes)
    label = document["paths"]["/api/v1/trajectory/{collection}/{task}/{trajectory_id}/labels"]
    assert label["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/LabelBody"
    }
    assert document["components"]["schemas"]["LabelBody"]["required"] == ["key", "value"]
    listing = document["paths"]["/api/v1/db/trajectories/{collection}/{task}"]["get"]
    limit = next(p for p in listing["parameters"] if p["name"] == "limit")
    assert limit["schema"]["maximum"] == 200 and limit["in"] == "query"
    upload = document["paths"]["/api/v1/sandbox/upload"]["post"]["requestBody"]
    form = upload["content"]["multipart/form-data"]["schema"]
    assert set(form["properties"]) == {"collection", "path", "file"}
    assert form["required"] == ["file"]


def test_a_route_without_a_description_is_an_error() -> None:
    async def undescribed(request: object) -> None:
        raise AssertionError("never called")

    with pytest.raises(LookupError, match="/api/v1/new"):
        openapi_document([Route("/api/v1/new", undescribed)])


@pytest.mark.parametrize(
    "error", [ProxyError("boom"), InvalidField("jetty.x", "bad"), Conflict("no", param="id")]
)
def test_the_error_schema_fits_every_error_body(error: ProxyError) -> None:
    ErrorBody.model_validate(error.body(), strict=True)
