"""Liveness, readiness and metrics: unauthenticated, for orchestrators and scrapers."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.api.context import services_of
from proxy.store import StoreError


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    try:
        await services_of(request).store.ping()
    except StoreError as exc:
        return JSONResponse({"status": "unavailable", "store": str(exc)}, status_code=503)
    return JSONResponse({"status": "ok", "store": "ok"})


async def metrics(request: Request) -> Response:
    registry = services_of(request).metrics
    return Response(registry.render(), media_type=registry.content_type)
