"""``POST /v1/chat/completions``: relay to the upstream, or hand a runbook to the run engine.

Relayed completions are recorded as one-step trajectories under the task ``_chat`` (or
``jetty.task``) of ``jetty.collection`` or the caller's default collection: model, finish
reason, usage, latency and the upstream's id; the messages and the answer only with the
``record_chat_content`` setting. Recording happens after the last byte has gone out, and
failed or cancelled calls are recorded too; a record is priced from the usage the upstream
reported, and its cost counted against the collection's and the key's budgets.

Every request, relayed or runbook, is first checked against its collection's and its key's
limits (`proxy.quota`): over a request rate or a spent budget it is refused with a 429 before
the upstream is called or a run is planned.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from proxy.api.context import Services, services_of
from proxy.api.params import check_name
from proxy.api.recording import RECORD_OVERHEAD
from proxy.api.runs import start_run
from proxy.auth import Principal
from proxy.chatui.background import is_background_request
from proxy.errors import BadRequest, InvalidField, NotFound, NotImplementedYet
from proxy.presets import Preset, preset_name, preset_request
from proxy.prices import TokenCounts
from proxy.relay.response import RelayJSONResponse, RelayOutcome, RelayStreamResponse
from proxy.relay.summary import ChatSummary, StreamContent, summarize_chat_stream
from proxy.store.chat import ChatRecord, normalise_usage


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """The few fields the proxy itself reads; everything else is forwarded untouched."""

    model: str
    messages: list[Any]
    stream: bool | None = None
    jetty: dict[str, Any] | None = None

    @classmethod
    def from_body(cls, raw: dict[str, Any]) -> ChatRequest:
        """Check the fields in order; the first bad one is named. (By hand rather than with
        a pydantic model: this runs before every relayed first byte, at a fifth of the cost.)"""
        for name, kind, label, required in _FIELDS:
            value = raw.get(name, _MISSING)
            if type(value) is kind or (not required and (value is None or value is _MISSING)):
                continue
            problem = "Field required" if value is _MISSING else f"Input should be {label}"
            raise InvalidField(name, f"Invalid value for '{name}': {problem}")
        return cls(raw["model"], raw["messages"], raw.get("stream"), raw.get("jetty"))


_MISSING = object()
_FIELDS: tuple[tuple[str, type, str, bool], ...] = (
    ("model", str, "a valid string", True),
    ("messages", list, "a valid list", True),
    ("stream", bool, "a valid boolean", False),
    ("jetty", dict, "a valid dictionary", False),
)


def parse_chat_request(body: bytes) -> tuple[ChatRequest, dict[str, Any]]:
    """Parse once at the edge; errors name the offending field."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"Request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(raw, dict):
        raise BadRequest("Request body must be a JSON object.", code="invalid_json")
    return ChatRequest.from_body(raw), raw


async def chat_completions(request: Request) -> Response:
    services = services_of(request)
    principal = await services.authenticator.authenticate(request.headers, "POST")
    body = await _read_body(request)
    chat, raw = parse_chat_request(body)
    preset = _preset(services, principal, chat.model)
    if preset is not None:
        if is_background_request(dict(request.headers), chat.messages):
            # A chat UI's housekeeping (titles, tags): the preset's model answers, no sandbox.
            raw["model"] = preset.background_model or preset.model
            raw.pop("jetty", None)
            body = json.dumps(raw, separators=(",", ":"), ensure_ascii=False).encode()
        else:
            messages, block = preset_request(preset, chat.messages, chat.jetty)
            raw = {**raw, "model": preset.model, "messages": messages, "jetty": block}
        chat = ChatRequest.from_body(raw)
    jetty = chat.jetty or {}

    collection = jetty.get("collection")
    if collection is not None:
        if not isinstance(collection, str) or not collection:
            raise InvalidField("jetty.collection", "'jetty.collection' must be a non-empty string.")
        principal.require(collection)
        check_name(collection, "jetty.collection")
    target = collection if collection is not None else principal.default_collection
    # Relayed and runbook requests alike; refused before any upstream call or any run.
    await services.quotas.admit_request(target, principal.key)

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
            principal,
            chat.model,
            chat.messages,
            raw["jetty"],
            stream=bool(chat.stream),
            include_usage=include_usage is True,
            base_url=services.origins.of(request),
            keepalive=services.settings.keepalive_seconds,
        )
    key = principal.key
    record = _Record(
        collection=target,
        task=_task(jetty),
        jetty=jetty,
        key_id=key.id if key is not None else None,
    )
    await services.recorder.admit()
    if "jetty" in raw:
        # Re-serialise only when the proxy's own block must be stripped.
        del raw["jetty"]
        body = json.dumps(raw, separators=(",", ":"), ensure_ascii=False).encode()
    return _relay(services, chat, body, record)


async def _read_body(request: Request) -> bytes:
    """``await request.body()``, for the hot path: without its async generator."""
    chunks = []
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _preset(services: Services, principal: Principal, model: str) -> Preset | None:
    """The preset a ``jetty/NAME`` model names; 404 when the caller may not see it."""
    name = preset_name(model)
    if name is None:
        return None
    preset = services.settings.presets.get(name)
    if preset is None or not principal.can_access(preset.collection):
        raise NotFound(
            f"The model '{model}' does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )
    return preset


@dataclass(frozen=True)
class _Record:
    """Where a relayed completion is recorded."""

    collection: str
    task: str | None
    jetty: dict[str, Any]
    key_id: str | None


def _cost(services: Services, model: str, summary: ChatSummary) -> float | None:
    """What the completion cost, from the usage the upstream reported (None without it: a
    stream sent without ``stream_options.include_usage`` reports none)."""
    usage = normalise_usage(summary.usage)
    if usage is None:
        return None
    tokens = TokenCounts(
        usage["input_tokens"],
        usage["output_tokens"],
        usage["cache_read_tokens"],
        usage["cache_write_tokens"],
    )
    base_url, _ = services.settings.route_for(model)
    return services.prices.cost([model, summary.model], tokens, api_url=base_url)


def _task(jetty: dict[str, Any]) -> str | None:
    task = jetty.get("task")
    if task is None:
        return None
    if not isinstance(task, str):
        raise InvalidField("jetty.task", "'jetty.task' must be a string.")
    return check_name(task, "jetty.task")


def _relay(services: Services, chat: ChatRequest, body: bytes, record: _Record) -> Response:
    """Relay to the upstream; once the last byte is out, record the call as a trajectory."""
    keep_content = services.settings.record_chat_content
    stream = bool(chat.stream)
    # Streams only carry their text in pieces: gather it while relaying, if it is kept.
    content = StreamContent() if stream and keep_content else None

    # Sent now, before the relay is made ready: the upstream has the request meanwhile.
    pending = services.upstreams.begin(chat.model, "/chat/completions", body)

    async def on_finish(outcome: RelayOutcome) -> None:
        # Only queued now, right after the last byte, when the client may already be sending
        # its next request: the summary is made when the writer's turn comes. The record
        # holds the outcome's head and tail (a few KiB), not the response's buffers.
        head, tail = outcome.head, outcome.tail if stream else b""
        streamed = content.text if content is not None else None
        status, status_code, error = outcome.status, outcome.status_code, outcome.error
        duration, first_byte = outcome.duration_seconds, outcome.first_byte_seconds
        model, messages = chat.model, chat.messages if keep_content else None
        ended = datetime.now(UTC)

        def make() -> ChatRecord:
            summary = summarize_chat_stream(head, tail)
            cost = _cost(services, model, summary)
            services.quotas.spent(record.collection, record.key_id, cost)
            return ChatRecord(
                collection=record.collection,
                task=record.task,
                jetty=record.jetty,
                model=model,
                stream=stream,
                status=status,
                status_code=status_code,
                error=error,
                duration_seconds=duration,
                first_byte_seconds=first_byte,
                upstream_id=summary.upstream_id,
                upstream_model=summary.model,
                finish_reason=summary.finish_reason,
                usage=summary.usage,
                messages=messages,
                content=streamed if stream else summary.content,
                keep_content=keep_content,
                ended=ended,
                cost_usd=cost,
                key_id=record.key_id,
            )

        size = RECORD_OVERHEAD + len(head) + len(tail) + len(streamed or "")
        await services.recorder.submit(make, size + (len(body) if keep_content else 0))

    if stream:
        return RelayStreamResponse(
            pending.open,
            keepalive=services.settings.keepalive_seconds,
            on_finish=on_finish,
            on_block=content.feed if content is not None else None,
            abandon=pending.abandon,
        )
    return RelayJSONResponse(pending.open, on_finish=on_finish, abandon=pending.abandon)
