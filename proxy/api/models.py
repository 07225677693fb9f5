"""``GET /v1/models``: the upstreams' models merged with the proxy's own entries.

The proxy's own entries are the presets the caller may use (``jetty/NAME``: choosing one runs
the preset, see :mod:`proxy.presets`) and its snapshots (``snapshot/NAME``), so that a client
can discover the environments it may name in ``jetty.snapshot``. Snapshots are left out when
the sandbox backend builds no images (the local one, say): runs cannot use them there.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.api.context import authenticate, services_of
from proxy.environments import Catalog
from proxy.presets import model_entries

SNAPSHOT_PREFIX = "snapshot/"
OWNER = "jetty-proxy"


async def list_models(request: Request) -> Response:
    principal = await authenticate(request)
    services = services_of(request)
    models = {m["id"]: m for m in await services.upstreams.list_models()}
    for preset in model_entries(services.settings.presets, principal.can_access):
        models[preset["id"]] = preset
    if services.runs is not None and services.runs.environments is not None:
        for snapshot in Catalog.from_settings(services.settings):
            entry: dict[str, Any] = {
                "id": SNAPSHOT_PREFIX + snapshot.name,
                "object": "model",
                "created": 0,
                "owned_by": OWNER,
            }
            models.setdefault(entry["id"], entry)
    return JSONResponse({"object": "list", "data": list(models.values())})
