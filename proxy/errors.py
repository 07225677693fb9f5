"""Errors the proxy raises on purpose, and how each looks on the wire.

Every error a client can see is a :class:`ProxyError`. Each subclass knows its
HTTP status and the OpenAI error ``type``/``code``, so the HTTP edge renders
all of them the same way::

    ProxyError                      500 server_error
    ├── ProviderKeyMissing          500 server_error (the model relay has no key to call with)
    ├── BadRequest                  400 invalid_request_error
    │   └── InvalidField            400 invalid_request_error (param = the field)
    ├── Unauthorized                401 authentication_error
    ├── Forbidden                   403 permission_error
    ├── NotFound                    404 not_found_error
    ├── RequestTimeout              408 invalid_request_error
    ├── Conflict                    409 conflict_error
    ├── PayloadTooLarge             413 invalid_request_error
    ├── UnprocessableEntity         422 invalid_request_error
    ├── HeadersTooLarge             431 invalid_request_error
    ├── NotImplementedYet           501 not_implemented
    ├── UpstreamUnavailable         502 upstream_error
    ├── StreamIncomplete            502 upstream_error (the stream broke off before its end)
    ├── UpstreamTimeout             504 upstream_error
    ├── ServiceUnavailable          503 server_error (the database did not answer in time)
    ├── InsufficientStorage         507 server_error (no space left for a write)
    └── UpstreamError               (the upstream's own status and body)

Foreign errors (httpx, the database, the container engine) are mapped into
this hierarchy inside the module that calls them, chained with ``from``.
"""

from __future__ import annotations

import json
from typing import Any


class ProxyError(Exception):
    """Base class: an error with an HTTP status and an OpenAI-shaped body."""

    status_code = 500
    error_type = "server_error"
    code: str | None = None
    # The SDKs retry 408/409/429/>=500 and honour ``x-should-retry``: each error says
    # whether a retry can help.
    retryable = False

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, param=self.param, code=self.code)

    def headers(self) -> dict[str, str]:
        return {"x-should-retry": "true" if self.retryable else "false"}


class ProviderKeyMissing(ProxyError):
    """The model relay has no key for the provider a run's agent calls."""


class BadRequest(ProxyError):
    status_code = 400
    error_type = "invalid_request_error"


class InvalidField(BadRequest):
    """A request field is malformed; ``param`` names it (dotted path)."""

    code = "invalid_value"

    def __init__(self, param: str, message: str):
        super().__init__(message, param=param)


class Unauthorized(ProxyError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(ProxyError):
    """The request is understood and authenticated, but the server's policy refuses it."""

    status_code = 403
    error_type = "permission_error"
    code = "forbidden"


class NotFound(ProxyError):
    status_code = 404
    error_type = "not_found_error"
    code = "not_found"


class RequestTimeout(ProxyError):
    """The client did not send its request (head or body) in time."""

    status_code = 408
    error_type = "invalid_request_error"
    code = "request_timeout"


class Conflict(ProxyError):
    status_code = 409
    error_type = "conflict_error"
    code = "conflict"


class PayloadTooLarge(ProxyError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "payload_too_large"


class UnprocessableEntity(ProxyError):
    status_code = 422
    error_type = "invalid_request_error"
    code = "unprocessable_entity"


class HeadersTooLarge(ProxyError):
    """The request head is over the server's size or header-count limit."""

    status_code = 431
    error_type = "invalid_request_error"
    code = "request_header_fields_too_large"


class NotImplementedYet(ProxyError):
    status_code = 501
    error_type = "not_implemented"
    code = "not_implemented"


class UpstreamUnavailable(ProxyError):
    """The upstream provider could not be reached or did not answer in time."""

    status_code = 502
    error_type = "upstream_error"
    code = "upstream_unavailable"
    retryable = True


class StreamIncomplete(ProxyError):
    """The upstream closed a stream before its last event."""

    status_code = 502
    error_type = "upstream_error"


class UpstreamTimeout(ProxyError):
    """The upstream accepted the connection but did not answer in time."""

    status_code = 504
    error_type = "upstream_error"
    code = "upstream_timeout"
    retryable = True


class ServiceUnavailable(ProxyError):
    """A dependency of the proxy itself (its database) did not answer in time; a retry
    shortly after may succeed."""

    status_code = 503
    error_type = "server_error"
    code = "service_unavailable"
    retryable = True


class InsufficientStorage(ProxyError):
    """The proxy's disk (or its database's) is full: the write was refused and nothing of it
    was kept."""

    status_code = 507
    error_type = "server_error"
    code = "insufficient_storage"


class UpstreamError(ProxyError):
    """The upstream answered with an error; its status and body are passed on."""

    def __init__(self, status_code: int, body: dict[str, Any], headers: dict[str, str]):
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        assert isinstance(error, dict)
        super().__init__(str(error.get("message") or f"upstream returned HTTP {status_code}"))
        self.status_code = status_code
        self._body = body
        self._headers = headers

    def body(self) -> dict[str, Any]:
        return self._body

    def headers(self) -> dict[str, str]:
        return self._headers


def error_body(
    message: str, error_type: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error body: all four keys are always present."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def normalise_error_body(status_code: int, raw: bytes) -> dict[str, Any]:
    """Turn whatever an upstream sent with an error status into OpenAI's error shape."""
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        error = dict(parsed["error"])
        error.setdefault("message", f"upstream returned HTTP {status_code}")
        error.setdefault("type", "upstream_error")
        error.setdefault("param", None)
        error.setdefault("code", None)
        return {"error": error}
    text = raw.decode("utf-8", "replace").strip()[:500]
    message = f"upstream returned HTTP {status_code}" + (f": {text}" if text else "")
    return error_body(message, "upstream_error", code=str(status_code))
