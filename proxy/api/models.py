"""``GET /v1/models``: the upstreams' models merged with the proxy's own entries."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.api.context import authenticate, services_of


async def list_models(request: Request) -> Response:
    await authenticate(request)
    services = services_of(request)
    models = {m["id"]: m for m in await services.upstreams.list_models()}
    return JSONResponse({"object": "list", "data": list(models.values())})
