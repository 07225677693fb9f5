"""Rendering helpers shared by every route."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.errors import InsufficientStorage, ProxyError, ServiceUnavailable, error_body
from proxy.store.errors import BlobsUnavailable
from proxy.store.faults import StorageFull

logger = logging.getLogger("proxy.api")


def error_response(exc: ProxyError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers())


async def handle_proxy_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProxyError)
    return error_response(exc)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 answers, in OpenAI's error shape."""
    assert isinstance(exc, HTTPException)
    kinds = {
        404: ("not_found_error", "not_found"),
        405: ("invalid_request_error", "method_not_allowed"),
    }
    error_type, code = kinds.get(exc.status_code, ("invalid_request_error", None))
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return JSONResponse(
        error_body(message, error_type, code=code),
        status_code=exc.status_code,
        headers={**(exc.headers or {}), "x-should-retry": "false"},
    )


async def handle_store_fault(request: Request, exc: Exception) -> Response:
    """A fault that passes (:mod:`proxy.store.faults`): the database did not answer in time
    (503, retry) or the disk is full (507). Nothing of the request was kept either way."""
    where = f"{request.method} {request.url.path}"
    if isinstance(exc, StorageFull):
        logger.error("no space left for %s: %s", where, exc)
        error: ProxyError = InsufficientStorage(
            "The server has no space left to store this; nothing of it was kept.",
        )
    elif isinstance(exc, BlobsUnavailable):
        logger.warning("object store unavailable for %s: %s", where, exc)
        error = ServiceUnavailable("The file store is unavailable; retry shortly.")
    else:
        logger.warning("database unavailable for %s: %s", where, exc)
        error = ServiceUnavailable("The database is unavailable; retry shortly.")
    return error_response(error)


async def handle_client_disconnect(request: Request, exc: Exception) -> Response:
    """The client went away (or was cut off) before its request was in: nobody will read an
    answer, and nothing failed on this side. Counted as nginx's 499."""
    return Response(status_code=499)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    """Last resort: an OpenAI-shaped 500 instead of a plain-text traceback page."""
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        error_body("Internal server error.", "server_error", code="internal_error"),
        status_code=500,
    )
