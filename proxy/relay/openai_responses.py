"""The OpenAI Responses API relay: what Codex talks to from inside a sandbox.

Route: ``POST /v1/responses``, forwarded to ``{openai_base_url}/responses`` (the base URL names
the API root, ``https://api.openai.com/v1`` by default). The agent authenticates with its run
token as ``Authorization: Bearer``; the upstream gets the server's key (or the run's own, see
:class:`~proxy.relay.tokens.ProviderCreds`) and never the token. Bodies pass through byte for
byte; each call's usage is read from ``response.completed`` (or the JSON body) as it passes.

Errors use OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``. Once a stream
has started, an error is reported as a ``response.failed`` event, which ends the stream the way
the API's own failures do.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from proxy.errors import ProviderKeyMissing, ProxyError
from proxy.relay.context import RelayContext, relay_context
from proxy.relay.provider import (
    Call,
    authenticate,
    count,
    error_response,
    forwarded_headers,
    json_object,
    read_json,
    relay_call,
    sse_events,
)
from proxy.relay.tokens import ModelUsage, RunGrant, token_from_headers
from proxy.relay.wire import Wire, header_filter, openai_error

PROVIDER = "openai"
# The path prefix of the agent's base URL; the upstream's base URL carries its own.
API_PREFIX = "/v1"
MAX_REQUEST_BYTES = 64 * 1024 * 1024

_FORWARDED_REQUEST_HEADERS = (
    "content-type",
    "accept",
    "user-agent",
    "openai-beta",
    # Codex's client and session identifiers: they help the upstream's prompt caching.
    "originator",
    "version",
    "session_id",
    "conversation_id",
)
_PASSED_RESPONSE_HEADERS = header_filter(
    (
        "x-request-id",
        "openai-processing-ms",
        "openai-model",
        "retry-after",
        "retry-after-ms",
        "x-should-retry",
    ),
    ("x-ratelimit-",),
)
_TERMINAL_EVENTS = (b"response.completed", b"response.failed", b"response.incomplete", b"error")
_TYPE = re.compile(rb'^\{\s*"type"\s*:\s*"([^"]+)"')


def routes() -> list[BaseRoute]:
    """The relay's routes, for :func:`proxy.relay.app.create_relay_app`."""
    return [Route(f"{API_PREFIX}/responses", responses, methods=["POST"])]


class ResponsesDialect:
    """Responses streams end with a terminal ``response.*`` event; errors in OpenAI's shape."""

    def is_end(self, block: bytes) -> bool:
        return any(kind in _TERMINAL_EVENTS for kind, _ in _typed_events(block))

    def error_body(self, exc: ProxyError) -> dict[str, Any]:
        return exc.body()

    def in_band_error(self, body: dict[str, Any]) -> bytes:
        error = body.get("error")
        if not isinstance(error, dict):
            error = {}
        event = {
            "type": "response.failed",
            "response": {
                "object": "response",
                "status": "failed",
                "error": {
                    "code": error.get("code") or error.get("type") or "server_error",
                    "message": error.get("message") or "The relay failed.",
                },
                "output": [],
                "usage": None,
            },
        }
        return b"event: response.failed\ndata: " + json.dumps(event).encode() + b"\n\n"


def _typed_events(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Each event's type (its name, else the ``type`` its data starts with) and its data."""
    for name, data in sse_events(block):
        if not name:
            match = _TYPE.match(data)
            name = match.group(1) if match else b""
        yield name, data


WIRE = Wire(PROVIDER, ResponsesDialect(), openai_error, _PASSED_RESPONSE_HEADERS)


async def responses(request: Request) -> Response:
    """``POST /v1/responses``: one model call, streamed or not."""
    context = relay_context(request)
    try:
        grant = authenticate(context, token_from_headers(request.headers), "openai")
        body, payload = await read_json(request, MAX_REQUEST_BYTES)
        upstream = _build_request(context, grant, request, body)
    except ProxyError as exc:
        return error_response(exc, WIRE)
    model = payload.get("model")
    usage = UsageReader(model if isinstance(model, str) else "")
    call = Call(grant, upstream, stream=payload.get("stream") is True, usage=usage)
    return relay_call(context, call, WIRE)


def _build_request(
    context: RelayContext, grant: RunGrant, request: Request, body: bytes
) -> httpx.Request:
    override = grant.provider_overrides.openai if grant.provider_overrides else None
    base_url = (override.base_url if override else None) or context.settings.openai_base_url
    key: SecretStr | None = override.api_key if override else context.settings.openai_api_key
    if key is None:
        raise ProviderKeyMissing("The proxy has no OpenAI API key configured.")
    headers = forwarded_headers(request, _FORWARDED_REQUEST_HEADERS)
    headers.append(("authorization", f"Bearer {key.get_secret_value()}"))
    url = base_url.rstrip("/") + request.url.path.removeprefix(API_PREFIX)
    if request.url.query:
        url += "?" + request.url.query
    return context.build_request(override, url, content=body, headers=headers)


class UsageReader:
    """Reads one call's usage from the response's terminal event or its JSON body.

    The Responses API reports usage once, in the ``response`` of ``response.completed`` (or
    ``response.incomplete``/``response.failed``); ``input_tokens`` there includes cached tokens,
    which are moved to ``cache_read_input_tokens`` here (see :class:`ModelUsage`). Malformed
    events are ignored: usage is never worth breaking a stream for.
    """

    def __init__(self, requested_model: str) -> None:
        self._model = requested_model
        self._usage: ModelUsage | None = None

    def feed_sse(self, block: bytes) -> None:
        if b'"usage"' not in block:
            return  # only a terminal event's response carries usage (and its model)
        for kind, data in _typed_events(block):
            if kind in _TERMINAL_EVENTS and kind != b"error":
                event = json_object(data)
                if event is not None:
                    self._read(event.get("response"))

    def feed_json(self, body: bytes) -> None:
        self._read(json_object(body))

    def result(self, *, complete: bool) -> ModelUsage | None:
        return None if self._usage is None else replace(self._usage, complete=complete)

    def _read(self, response: object) -> None:
        if not isinstance(response, dict):
            return
        if isinstance(response.get("model"), str) and response["model"]:
            self._model = response["model"]
        usage = response.get("usage")
        if not isinstance(usage, dict):
            return
        inputs = usage.get("input_tokens_details")
        outputs = usage.get("output_tokens_details")
        prompt = count(usage.get("input_tokens"))
        cached = min(count(inputs.get("cached_tokens")) if isinstance(inputs, dict) else 0, prompt)
        reasoning = count(outputs.get("reasoning_tokens")) if isinstance(outputs, dict) else 0
        self._usage = ModelUsage(
            PROVIDER,
            self._model,
            input_tokens=prompt - cached,
            output_tokens=count(usage.get("output_tokens")),
            cache_read_input_tokens=cached,
            reasoning_tokens=reasoning,
        )
