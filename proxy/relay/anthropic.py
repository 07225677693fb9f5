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
import re
from typing import Any

import httpx
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from proxy.errors import ProviderKeyMissing, ProxyError, UpstreamError
from proxy.relay.context import RelayContext, relay_context
from proxy.relay.provider import (
    Call,
    authenticate,
    error_response,
    forwarded_headers,
    json_object,
    read_json,
    relay_call,
    sse_events,
    upstream_message,
)
from proxy.relay.tokens import ModelUsage, RunGrant, token_from_headers
from proxy.relay.wire import Wire, header_filter

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
_PASSED_RESPONSE_HEADERS = header_filter(
    ("request-id", "retry-after", "retry-after-ms", "x-should-retry"), ("anthropic-ratelimit-",)
)

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


def _upstream_error(status_code: int, raw: bytes, headers: dict[str, str]) -> UpstreamError:
    """The upstream's error, its body kept when it is Anthropic's shape and wrapped otherwise."""
    parsed = json_object(raw)
    if (
        parsed is not None
        and parsed.get("type") == "error"
        and isinstance(parsed.get("error"), dict)
    ):
        return UpstreamError(status_code, parsed, headers)
    return UpstreamError(
        status_code, error_body(status_code, upstream_message(status_code, raw)), headers
    )


WIRE = Wire(PROVIDER, AnthropicDialect(), _upstream_error, _PASSED_RESPONSE_HEADERS)


async def messages(request: Request) -> Response:
    """``POST /v1/messages``: one model call, streamed or not."""
    return await _relay(request, model_call=True)


async def count_tokens(request: Request) -> Response:
    """``POST /v1/messages/count_tokens``: forwarded as is; not a model call, so no usage."""
    return await _relay(request, model_call=False)


async def _relay(request: Request, *, model_call: bool) -> Response:
    context = relay_context(request)
    try:
        grant = authenticate(context, token_from_headers(request.headers), "anthropic")
        body, payload = await read_json(request, MAX_REQUEST_BYTES)
        upstream = _build_request(context, grant, request, body)
    except ProxyError as exc:
        return error_response(exc, WIRE)
    model = payload.get("model")
    usage = UsageReader(model if isinstance(model, str) else "") if model_call else None
    return relay_call(context, Call(grant, upstream, payload.get("stream") is True, usage), WIRE)


def _build_request(
    context: RelayContext, grant: RunGrant, request: Request, body: bytes
) -> httpx.Request:
    settings = context.settings
    override = grant.provider_overrides.anthropic if grant.provider_overrides else None
    base_url = (override.base_url if override else None) or settings.anthropic_base_url
    key: SecretStr | None = override.api_key if override else settings.anthropic_api_key
    if key is None:
        raise ProviderKeyMissing("The proxy has no Anthropic API key configured.")
    headers = forwarded_headers(request, _FORWARDED_REQUEST_HEADERS)
    if override is not None and override.key_header == "bearer":
        headers.append(("authorization", f"Bearer {key.get_secret_value()}"))
    else:
        headers.append(("x-api-key", key.get_secret_value()))
    url = base_url.rstrip("/") + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    return context.build_request(override, url, content=body, headers=headers)


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
        if b"message_" not in block:
            return  # most blocks are content deltas: not worth splitting into events
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
