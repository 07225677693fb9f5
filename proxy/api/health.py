"""Liveness, readiness and metrics: unauthenticated, for orchestrators and scrapers."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.api.context import services_of
from proxy.store import StoreError


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when the database answers and the blob store can take blobs; each says why not."""
    services = services_of(request)
    report = {"status": "ok", "store": "ok", "blobs": "ok"}
    for name, check in (("store", services.store.ping), ("blobs", services.blobs.check)):
        try:
            await check()
        except StoreError as exc:
            report[name] = str(exc)
            report["status"] = "unavailable"
    return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)


async def metrics(request: Request) -> Response:
    registry = services_of(request).metrics
    return Response(registry.render(), media_type=registry.content_type)
