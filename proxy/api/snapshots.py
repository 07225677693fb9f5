"""``GET /api/v1/snapshots``: the snapshot catalog, and whether each snapshot is built."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.api.context import authenticate, services_of
from proxy.environments import Catalog, EnvironmentFailed, Environments, Snapshot


async def list_snapshots(request: Request) -> Response:
    """Each snapshot with ``built`` true or false, or null when no engine can tell."""
    await authenticate(request)
    services = services_of(request)
    catalog = Catalog.from_settings(services.settings)
    environments = services.runs.environments if services.runs else None
    images = await _images(environments, list(catalog))
    data = [
        _entry(snapshot, images.get(snapshot.name), images, catalog.default) for snapshot in catalog
    ]
    return JSONResponse({"object": "list", "data": data, "default": catalog.default})


async def _images(
    environments: Environments | None, snapshots: list[Snapshot]
) -> dict[str, dict[str, Any] | None]:
    """The engine's record of each snapshot's image; empty when there is no engine to ask."""
    if environments is None:
        return {}
    try:
        return {s.name: await environments.snapshot_image(s) for s in snapshots}
    except EnvironmentFailed:
        return {}


def _entry(
    snapshot: Snapshot,
    info: dict[str, Any] | None,
    images: dict[str, dict[str, Any] | None],
    default: str | None,
) -> dict[str, Any]:
    return {
        "id": snapshot.name,
        "object": "snapshot",
        "image": snapshot.image,
        "description": snapshot.description,
        "includes": list(snapshot.includes),
        "default": snapshot.name == default,
        "built": (info is not None) if snapshot.name in images else None,
        "image_id": info["Id"] if info else None,
        "size_bytes": int(info.get("Size") or 0) if info else None,
        "created": info.get("Created") if info else None,
    }
