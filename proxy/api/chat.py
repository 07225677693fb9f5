"""``POST /v1/chat/completions``: relay to the upstream, or hand a runbook to the run engine."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, StrictBool, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from proxy.api.context import Services, authenticate, services_of
from proxy.api.runs import start_run
from proxy.errors import BadRequest, InvalidField, NotImplementedYet
from proxy.relay.response import RelayJSONResponse, RelayStreamResponse
from proxy.relay.upstream import UpstreamResponse


class ChatRequest(BaseModel):
    """The few fields the proxy itself reads; everything else is forwarded untouched."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[Any]
    stream: StrictBool | None = None
    jetty: dict[str, Any] | None = None


def parse_chat_request(body: bytes) -> tuple[ChatRequest, dict[str, Any]]:
    """Parse once at the edge; errors name the offending field."""
    try:
        raw = json.loads(body)
    except ValueError as exc:
        raise BadRequest(f"Request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(raw, dict):
        raise BadRequest("Request body must be a JSON object.", code="invalid_json")
    try:
        parsed = ChatRequest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        message = f"Invalid value for '{param}': {first['msg']}" if param else first["msg"]
        raise InvalidField(param or "body", message) from exc
    return parsed, raw


async def chat_completions(request: Request) -> Response:
    services = services_of(request)
    principal = await authenticate(request)
    body = await request.body()
    chat, raw = parse_chat_request(body)
    jetty = chat.jetty or {}

    collection = jetty.get("collection")
    if collection is not None:
        if not isinstance(collection, str) or not collection:
            raise InvalidField("jetty.collection", "'jetty.collection' must be a non-empty string.")
        principal.require(collection)

    if jetty.get("runbook") is True:
        if services.runs is None:
            raise NotImplementedYet(
                "Runbook mode (jetty.runbook: true) is not enabled on this server.",
                param="jetty.runbook",
            )
        stream_options = raw.get("stream_options")
        include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage")
        return await start_run(
            services.runs,
            services.store,
            services.blobs,
            principal,
            chat.model,
            chat.messages,
            raw["jetty"],
            stream=bool(chat.stream),
            include_usage=include_usage is True,
            base_url=services.settings.public_base_url or str(request.base_url).rstrip("/"),
        )
    if "jetty" in raw:
        # Re-serialise only when the proxy's own block must be stripped.
        del raw["jetty"]
        body = json.dumps(raw, separators=(",", ":"), ensure_ascii=False).encode()
    return _relay(services, chat, body)


def _relay(services: Services, chat: ChatRequest, body: bytes) -> Response:
    async def open_upstream() -> UpstreamResponse:
        return await services.upstreams.send(chat.model, "/chat/completions", body)

    relay: RelayStreamResponse | RelayJSONResponse
    if chat.stream:
        relay = RelayStreamResponse(
            open_upstream, keepalive=services.settings.keepalive_seconds, on_finish=None
        )
    else:
        relay = RelayJSONResponse(open_upstream, on_finish=None)
    return _AsResponse(relay)


class _AsResponse(Response):
    """Lets an ASGI callable stand where Starlette expects a Response."""

    def __init__(self, app: RelayStreamResponse | RelayJSONResponse):
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)
