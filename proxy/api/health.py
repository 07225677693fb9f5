"""Liveness, readiness and metrics: unauthenticated, for orchestrators and scrapers."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.api.context import Services, services_of
from proxy.store import StoreError

logger = logging.getLogger("proxy.api")


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when the database answers (within ``database_timeout``), the blob store can
    take writes, and the disks they use have ``min_free_disk_bytes`` left. Answers within
    about ``database_timeout`` whatever state the database is in."""
    services = services_of(request)
    settings = services.settings
    body: dict[str, Any] = {"store": await _store_problem(services) or "ok"}
    blobs = await services.blobs.health()
    if blobs.problem is not None:
        logger.warning("not ready: blob store: %s", blobs.problem)
    body["blobs"] = "unavailable" if blobs.problem else "ok"
    free = [blobs.free_bytes] if blobs.free_bytes is not None else []
    database = settings.database
    if database.startswith("sqlite:///"):
        free.append(await _free_bytes(Path(database.removeprefix("sqlite:///")).parent))
    body["free_disk_bytes"] = min(free) if free else None
    low = bool(free) and min(free) < settings.min_free_disk_bytes
    if low:
        body["disk"] = f"less than {settings.min_free_disk_bytes} bytes free"
    ready = body["store"] == "ok" and body["blobs"] == "ok" and not low
    body = {"status": "ok" if ready else "unavailable", **body}
    return JSONResponse(body, status_code=200 if ready else 503)


async def _store_problem(services: Services) -> str | None:
    """What is wrong with the database, in words fit for anyone who can reach ``/readyz``
    (the details, which may name hosts and users, go to the log)."""
    timeout = services.settings.database_timeout
    with anyio.move_on_after(timeout):
        try:
            await services.store.ping()
        except StoreError as exc:
            logger.warning("not ready: %s", exc)
            return "unavailable"
        return None
    logger.warning("not ready: the database did not answer within %g s", timeout)
    return f"no answer within {timeout:g} s"


async def _free_bytes(directory: Path) -> int:
    def free() -> int:
        try:
            return shutil.disk_usage(directory).free
        except OSError:
            return 0

    return await anyio.to_thread.run_sync(free)


async def metrics(request: Request) -> Response:
    registry = services_of(request).metrics
    return Response(registry.render(), media_type=registry.content_type)
