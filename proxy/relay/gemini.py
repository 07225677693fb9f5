"""The Gemini API relay: what Gemini CLI talks to from inside a sandbox.

Routes: ``POST /v1beta/models/{model}:streamGenerateContent`` (SSE with ``?alt=sse``),
``:generateContent`` and ``:countTokens``, forwarded to the same path under
``google_base_url``. The agent authenticates with its run token as ``x-goog-api-key`` or as
the ``key`` query parameter; both are removed, and the upstream gets the server's key (or the
run's own, see :class:`~proxy.relay.tokens.ProviderCreds`) as ``x-goog-api-key``. Bodies pass
through byte for byte, with one repair (:func:`without_repeated_responses`); each call's usage
is read from the last ``usageMetadata`` that passes.

Errors use Google's shape, ``{"error": {"code", "message", "status"}}``; once a stream has
started, an error is a final ``data:`` frame holding that object, as the API sends its own.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

import httpx
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from proxy.errors import NotFound, ProviderKeyMissing, ProxyError, UpstreamError
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
    upstream_message,
)
from proxy.relay.tokens import ModelUsage, RunGrant
from proxy.relay.wire import Wire, header_filter

PROVIDER = "google"
MAX_REQUEST_BYTES = 64 * 1024 * 1024
METHODS = ("streamGenerateContent", "generateContent", "countTokens")

_KEY_HEADER = "x-goog-api-key"
_KEY_PARAM = "key"
_FORWARDED_REQUEST_HEADERS = ("content-type", "accept", "user-agent", "x-goog-api-client")
_PASSED_RESPONSE_HEADERS = header_filter(("retry-after", "x-goog-request-id", "server-timing"))
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
# Gemini streams have no closing event: the last frame carries a finish (or block) reason, or
# the stream is an error frame.
_STREAM_END = re.compile(rb'"(?:finishReason|blockReason)"\s*:|^data: ?\{\s*"error"', re.MULTILINE)


def routes() -> list[BaseRoute]:
    """The relay's routes, for :func:`proxy.relay.app.create_relay_app`."""
    return [Route("/v1beta/models/{target}", models, methods=["POST"])]


def error_body(status_code: int, message: str) -> dict[str, Any]:
    """Google's error body for ``status_code``."""
    default = "INTERNAL" if status_code >= 500 else "INVALID_ARGUMENT"
    status = _STATUS_NAMES.get(status_code, default)
    return {"error": {"code": status_code, "message": message, "status": status}}


class GeminiDialect:
    """Streams end with a finish reason (there is no end event); errors in Google's shape."""

    def is_end(self, block: bytes) -> bool:
        return _STREAM_END.search(block) is not None

    def error_body(self, exc: ProxyError) -> dict[str, Any]:
        if isinstance(exc, UpstreamError):
            return exc.body()  # already Google's: see _upstream_error
        return error_body(exc.status_code, exc.message)

    def in_band_error(self, body: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(body).encode() + b"\r\n\r\n"


def _upstream_error(status_code: int, raw: bytes, headers: dict[str, str]) -> UpstreamError:
    """The upstream's error, its body kept when it is Google's shape and wrapped otherwise."""
    parsed = json_object(raw)
    if parsed is not None and isinstance(parsed.get("error"), dict):
        return UpstreamError(status_code, parsed, headers)
    return UpstreamError(
        status_code, error_body(status_code, upstream_message(status_code, raw)), headers
    )


WIRE = Wire(PROVIDER, GeminiDialect(), _upstream_error, _PASSED_RESPONSE_HEADERS)


async def models(request: Request) -> Response:
    """``POST /v1beta/models/{model}:{method}``: one call of one of :data:`METHODS`."""
    context = relay_context(request)
    model, _, method = request.path_params["target"].rpartition(":")
    try:
        grant = authenticate(context, _token(request), "google")
        if not model or method not in METHODS:
            raise NotFound(f"Unknown Gemini API method {method!r}; the relay serves {METHODS}.")
        body, payload = await read_json(request, MAX_REQUEST_BYTES)
        body = without_repeated_responses(body, payload)
        upstream = _build_request(context, grant, request, body)
    except ProxyError as exc:
        return error_response(exc, WIRE)
    # Without alt=sse a stream is one JSON array sent in pieces: relayed whole, like a body.
    stream = method == "streamGenerateContent" and request.query_params.get("alt") == "sse"
    usage = UsageReader(model) if method != "countTokens" else None
    return relay_call(context, Call(grant, upstream, stream=stream, usage=usage), WIRE)


def without_repeated_responses(body: bytes, payload: dict[str, Any]) -> bytes:
    """``body`` without repeated function responses to the same call within one turn.

    Gemini CLI (0.61.0) replays every tool result of a resumed session twice (once more per
    later resume), google-gemini/gemini-cli#29365, and the API rejects a turn whose function
    responses outnumber its function calls. A response part that repeats an earlier one of the
    same turn (same call id, or the same part when it has no id) is dropped; any other body is
    passed on unchanged.
    """
    contents = payload.get("contents")
    if not isinstance(contents, list):
        return body
    changed = False
    for content in contents:
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list):
            continue
        kept: list[Any] = []
        answered: set[str] = set()
        for part in parts:
            response = part.get("functionResponse") if isinstance(part, dict) else None
            if isinstance(response, dict):
                call = response.get("id")
                key = f"id:{call}" if isinstance(call, str) and call else json.dumps(part)
                if key in answered:
                    changed = True
                    continue
                answered.add(key)
            kept.append(part)
        content["parts"] = kept
    return json.dumps(payload, ensure_ascii=False).encode() if changed else body


def _token(request: Request) -> str | None:
    """The run token, from the header the Gemini SDKs use or the ``key`` query parameter."""
    token = request.headers.get(_KEY_HEADER) or request.query_params.get(_KEY_PARAM)
    return token.strip() if token else None


def _build_request(
    context: RelayContext, grant: RunGrant, request: Request, body: bytes
) -> httpx.Request:
    override = grant.provider_overrides.google if grant.provider_overrides else None
    base_url = (override.base_url if override else None) or context.settings.google_base_url
    key: SecretStr | None = override.api_key if override else context.settings.google_api_key
    if key is None:
        raise ProviderKeyMissing("The proxy has no Google API key configured.")
    headers = forwarded_headers(request, _FORWARDED_REQUEST_HEADERS)
    headers.append((_KEY_HEADER, key.get_secret_value()))
    url = base_url.rstrip("/") + request.url.path
    query = [(k, v) for k, v in request.query_params.multi_items() if k != _KEY_PARAM]
    if query:
        url += "?" + urlencode(query)
    return context.build_request(override, url, content=body, headers=headers)


class UsageReader:
    """Reads one call's usage from the ``usageMetadata`` of its frames; the last one counts.

    Gemini's ``promptTokenCount`` includes cached tokens and ``candidatesTokenCount`` excludes
    thoughts; both are converted to :class:`ModelUsage`'s convention. Malformed frames are
    ignored: usage is never worth breaking a stream for.
    """

    def __init__(self, requested_model: str) -> None:
        self._model = requested_model
        self._usage: ModelUsage | None = None

    def feed_sse(self, block: bytes) -> None:
        for _, data in sse_events(block):
            if b"usageMetadata" in data:
                self._read(json_object(data))

    def feed_json(self, body: bytes) -> None:
        try:
            parsed = json.loads(body)
        except ValueError:
            return
        # A non-SSE stream is a JSON array of responses.
        for response in parsed if isinstance(parsed, list) else [parsed]:
            self._read(response)

    def result(self, *, complete: bool) -> ModelUsage | None:
        return None if self._usage is None else replace(self._usage, complete=complete)

    def _read(self, response: object) -> None:
        if not isinstance(response, dict):
            return
        if isinstance(response.get("modelVersion"), str) and response["modelVersion"]:
            self._model = response["modelVersion"]
        usage = response.get("usageMetadata")
        if not isinstance(usage, dict):
            return
        prompt = count(usage.get("promptTokenCount")) + count(usage.get("toolUsePromptTokenCount"))
        cached = min(count(usage.get("cachedContentTokenCount")), prompt)
        thoughts = count(usage.get("thoughtsTokenCount"))
        self._usage = ModelUsage(
            PROVIDER,
            self._model,
            input_tokens=prompt - cached,
            output_tokens=count(usage.get("candidatesTokenCount")) + thoughts,
            cache_read_input_tokens=cached,
            reasoning_tokens=thoughts,
        )
