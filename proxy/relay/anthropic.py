"""The Anthropic Messages relay: what Claude Code talks to from inside a sandbox.

Routes: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``. The agent authenticates
with its run token (``x-api-key`` or ``Authorization: Bearer``); the upstream gets the server's
key (or the run's own, see :class:`~proxy.relay.tokens.ProviderCreds`: another provider such as
OpenRouter, or a collection's key) and never the token.
Request and response bodies pass through byte for byte; the usage of each model call is read
from the stream as it passes and reported once the call ends.

Errors use Anthropic's shape, ``{"type": "error", "error": {"type": …, "message": …}}``, so the
CLI reports them as it would Anthropic's own.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import httpx
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from proxy.errors import BadRequest, ProxyError, UpstreamError
from proxy.relay.context import RelayContext, read_body, relay_context
from proxy.relay.provider import AsResponse, authenticate, json_object, sse_events
from proxy.relay.response import RelayJSONResponse, RelayOutcome, RelayStreamResponse
from proxy.relay.tokens import ModelUsage, RunGrant, attributed, token_from_headers
from proxy.relay.upstream import UpstreamResponse, send_streaming

logger = logging.getLogger("proxy.relay")

PROVIDER = "anthropic"
# Anthropic's own limit for a Messages request.
MAX_REQUEST_BYTES = 32 * 1024 * 1024

# Request headers the upstream needs; everything else (the run token above all) stays here.
_FORWARDED_REQUEST_HEADERS = (
    "anthropic-version",
    "anthropic-beta",
    "content-type",
    "accept",
    "user-agent",
    "x-app",
)
_PASSED_RESPONSE_HEADERS = ("request-id", "retry-after", "retry-after-ms", "x-should-retry")
_PASSED_RESPONSE_PREFIXES = ("anthropic-ratelimit-",)

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_STREAM_END = re.compile(rb"^event: ?(?:message_stop|error)\r?$", re.MULTILINE)


def routes() -> list[BaseRoute]:
    """The relay's routes, for :func:`proxy.relay.app.create_relay_app`."""
    return [
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
    ]


def error_body(status_code: int, message: str) -> dict[str, Any]:
    """Anthropic's error body for ``status_code``."""
    default = "api_error" if status_code >= 500 else "invalid_request_error"
    error_type = _ERROR_TYPES.get(status_code, default)
    return {"type": "error", "error": {"type": error_type, "message": message}}


def error_response(exc: ProxyError) -> JSONResponse:
    return JSONResponse(
        AnthropicDialect().error_body(exc), status_code=exc.status_code, headers=exc.headers()
    )


class AnthropicDialect:
    """Messages streams end with ``message_stop`` (or ``error``); errors in Anthropic's shape."""

    def is_end(self, block: bytes) -> bool:
        return _STREAM_END.search(block) is not None

    def error_body(self, exc: ProxyError) -> dict[str, Any]:
        if isinstance(exc, UpstreamError):
            return exc.body()  # already Anthropic's: see _upstream_error
        return error_body(exc.status_code, exc.message)

    def in_band_error(self, body: dict[str, Any]) -> bytes:
        return b"event: error\ndata: " + json.dumps(body).encode() + b"\n\n"


async def messages(request: Request) -> Response:
    """``POST /v1/messages``: one model call, streamed or not."""
    return await _forward(request, count_usage=True)


async def count_tokens(request: Request) -> Response:
    """``POST /v1/messages/count_tokens``: forwarded as is; not a model call, so no usage."""
    return await _forward(request, count_usage=False)


async def _forward(request: Request, *, count_usage: bool) -> Response:
    context = relay_context(request)
    try:
        grant = _authenticate(context, request)
        body = await read_body(request, MAX_REQUEST_BYTES)
        if body is None:
            raise _TooLarge(f"Request body exceeds {MAX_REQUEST_BYTES} bytes.")
        model, stream = _inspect(body)
        upstream_request = _build_request(context, grant, request, body)
    except ProxyError as exc:
        return error_response(exc)

    usage = UsageReader(model)

    async def open_upstream() -> UpstreamResponse:
        return await _open(context.client_for(upstream_request), upstream_request)

    async def on_finish(outcome: RelayOutcome) -> None:
        if not stream and outcome.status == "completed":
            usage.feed_json(outcome.head)
        logger.debug(
            "anthropic call for run %s: %s %s in %.2fs",
            grant.run_id,
            outcome.status,
            outcome.status_code,
            outcome.duration_seconds,
        )
        found = usage.result(complete=outcome.status == "completed")
        if count_usage and found is not None:
            await context.report_usage(grant, attributed(grant, found))

    relay: RelayStreamResponse | RelayJSONResponse
    if stream:
        relay = RelayStreamResponse(
            open_upstream,
            keepalive=context.settings.keepalive_seconds,
            on_finish=on_finish,
            dialect=AnthropicDialect(),
            on_block=usage.feed_sse,
        )
    else:
        relay = RelayJSONResponse(open_upstream, on_finish=on_finish, dialect=AnthropicDialect())
    return AsResponse(relay)


class _TooLarge(ProxyError):
    status_code = 413


class _NotConfigured(ProxyError):
    status_code = 500


def _authenticate(context: RelayContext, request: Request) -> RunGrant:
    token = token_from_headers(request.headers)
    return authenticate(context, token, "anthropic")


def _inspect(body: bytes) -> tuple[str, bool]:
    """The request's model and whether it asks for a stream; the body itself is not changed."""
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise BadRequest(f"Request body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise BadRequest("Request body must be a JSON object.")
    model = payload.get("model")
    return (model if isinstance(model, str) else ""), payload.get("stream") is True


def _build_request(
    context: RelayContext, grant: RunGrant, request: Request, body: bytes
) -> httpx.Request:
    settings = context.settings
    override = grant.provider_overrides.anthropic if grant.provider_overrides else None
    base_url = (override.base_url if override else None) or settings.anthropic_base_url
    key: SecretStr | None = override.api_key if override else settings.anthropic_api_key
    if key is None:
        raise _NotConfigured("The proxy has no Anthropic API key configured.")
    headers = [
        (name, value)
        for name in _FORWARDED_REQUEST_HEADERS
        for value in request.headers.getlist(name)
    ]
    if "content-type" not in request.headers:
        headers.append(("content-type", "application/json"))  # the body parsed as JSON
    if override is not None and override.key_header == "bearer":
        headers.append(("authorization", f"Bearer {key.get_secret_value()}"))
    else:
        headers.append(("x-api-key", key.get_secret_value()))
    url = base_url.rstrip("/") + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    return context.build_request(override, url, content=body, headers=headers)


async def _open(client: httpx.AsyncClient, upstream_request: httpx.Request) -> UpstreamResponse:
    response = await send_streaming(client, upstream_request)
    if response.status_code >= 400:
        try:
            raw = await response.aread()
        except httpx.HTTPError:
            raw = b""
        finally:
            await response.aclose()
        raise _upstream_error(response.status_code, raw, _passed_headers(response.headers))
    return UpstreamResponse(response, select_headers=_passed_headers)


def _upstream_error(status_code: int, raw: bytes, headers: dict[str, str]) -> UpstreamError:
    """The upstream's error, its body kept when it is Anthropic's shape and wrapped otherwise."""
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    if (
        isinstance(parsed, dict)
        and parsed.get("type") == "error"
        and isinstance(parsed.get("error"), dict)
    ):
        return UpstreamError(status_code, parsed, headers)
    text = raw.decode("utf-8", "replace").strip()[:500]
    message = f"upstream returned HTTP {status_code}" + (f": {text}" if text else "")
    return UpstreamError(status_code, error_body(status_code, message), headers)


def _passed_headers(headers: httpx.Headers) -> dict[str, str]:
    return {
        name: value
        for name, value in headers.items()
        if name in _PASSED_RESPONSE_HEADERS or name.startswith(_PASSED_RESPONSE_PREFIXES)
    }


class UsageReader:
    """Collects one call's token usage from its SSE events or JSON body, without altering them.

    Streams report usage twice: ``message_start`` carries the input side, and ``message_delta``
    the (cumulative) output tokens and, in newer API versions, final input numbers too; later
    numbers replace earlier ones. Malformed events are ignored: usage is never worth breaking a
    stream for.
    """

    _FIELDS = (
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    )

    def __init__(self, requested_model: str) -> None:
        self._model = requested_model
        self._counts: dict[str, int] = {}
        self._seen = False

    def feed_sse(self, block: bytes) -> None:
        """Read the events in ``block`` (complete SSE events, as relayed)."""
        for name, data in sse_events(block):
            if name in (b"message_start", b"message_delta") or (not name and b'"message_' in data):
                self._read(json_object(data))

    def feed_json(self, body: bytes) -> None:
        """Read a whole (non-streaming) Messages response."""
        message = json_object(body)
        if message is not None:
            self._read({"type": "message_start", "message": message})

    def result(self, *, complete: bool) -> ModelUsage | None:
        """The usage seen so far, or None when the upstream reported none."""
        if not self._seen:
            return None
        return ModelUsage(PROVIDER, self._model, complete=complete, **self._counts)

    def _read(self, event: dict[str, Any] | None) -> None:
        if event is None:
            return
        usage: object = None
        if event.get("type") == "message_start":
            message = event.get("message")
            if isinstance(message, dict):
                usage = message.get("usage")
                if isinstance(message.get("model"), str) and message["model"]:
                    self._model = message["model"]
        elif event.get("type") == "message_delta":
            usage = event.get("usage")
        if not isinstance(usage, dict):
            return
        self._seen = True
        for name in self._FIELDS:
            value = usage.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                self._counts[name] = value
