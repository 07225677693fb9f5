"""``GET /v1/models``: the upstreams' models merged with the proxy's own entries.

The proxy's own entries are its snapshots (``snapshot/NAME``, owned by ``jetty-proxy``), so
that a client can discover the environments it may name in ``jetty.snapshot``. They are left
out when the server runs sandboxes without an image engine (the local backend).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.api.context import authenticate, services_of
from proxy.environments import Catalog

SNAPSHOT_PREFIX = "snapshot/"
OWNER = "jetty-proxy"


async def list_models(request: Request) -> Response:
    await authenticate(request)
    services = services_of(request)
    models = {m["id"]: m for m in await services.upstreams.list_models()}
    if services.settings.backend != "local":
        for snapshot in Catalog.from_settings(services.settings):
            entry: dict[str, Any] = {
                "id": SNAPSHOT_PREFIX + snapshot.name,
                "object": "model",
                "created": 0,
                "owned_by": OWNER,
            }
            models.setdefault(entry["id"], entry)
    return JSONResponse({"object": "list", "data": list(models.values())})
