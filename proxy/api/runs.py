"""Runbook requests at the HTTP edge: parse, start the run, render it as chat chunks.

Everything about the run itself (the checks that refuse it with a 4xx before anything
exists, its trajectory, its sandbox) is `proxy.runs`' business: this module hands it a
`RunRequest` and renders the `StartedRun` it gets back, as ``chat.completion.chunk`` events
(SSE) or as one ``chat.completion``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from proxy.auth import Principal
from proxy.errors import error_body
from proxy.events import Usage
from proxy.jetty import parse_jetty_block
from proxy.runs.live import LiveRun
from proxy.runs.render import Aggregator, ChunkRenderer, finish_reason_for, usage_dict
from proxy.runs.service import RunRequest, Runs, StartedRun


async def start_run(
    runs: Runs,
    principal: Principal,
    model: str,
    messages: list[Any],
    raw_block: object,
    *,
    stream: bool,
    include_usage: bool,
    base_url: str,
    keepalive: float,
) -> Response:
    """Start the run the request asks for; its stream, or its one completion when it ends."""
    request = RunRequest(principal, model, messages, parse_jetty_block(raw_block), base_url)
    started = await runs.start(request)
    renderer = ChunkRenderer(
        f"chatcmpl-{uuid.uuid4().hex}", started.model, int(time.time()), started.tool_activity
    )
    headers = {"x-jetty-trajectory-id": started.trajectory_id}
    if stream:
        return RunStreamResponse(
            started, renderer, include_usage, keepalive=keepalive, headers=headers
        )
    return RunCompletionResponse(started, renderer, headers)


def _meta(live: LiveRun) -> dict[str, Any]:
    usage = live.usage
    return {
        **live.meta(),
        "status": live.outcome,
        "artifacts": live.artifacts,
        "usage": usage_dict(usage) if usage else None,
        # What the proxy priced the run's model calls at; the agent's own figure beside it.
        "cost_usd": live.cost.total,
        "agent_cost_usd": usage.cost_usd if usage else None,
    }


class RunStreamResponse(EventSourceResponse):
    """The run as ``chat.completion.chunk`` events; a disconnect cancels the run unless detached."""

    def __init__(
        self,
        started: StartedRun,
        renderer: ChunkRenderer,
        include_usage: bool,
        *,
        keepalive: float,
        headers: dict[str, str],
    ) -> None:
        self._live = started.live
        super().__init__(
            _chunks(started, renderer, include_usage),
            headers=headers,
            ping=int(keepalive) or 1,
            sep="\n",
            ping_message_factory=lambda: ServerSentEvent(comment="ping"),
            send_timeout=60,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self._live.done and not self._live.detached:
                self._live.cancel()


async def _chunks(
    started: StartedRun, renderer: ChunkRenderer, include_usage: bool
) -> AsyncIterator[ServerSentEvent]:
    live = started.live
    first = renderer.role_chunk()
    # The run's identity and page (a signed link): a client can open the run while it goes.
    yield _event({**first, "jetty": live.meta()})
    async for event in live.follow(still_running=started.still_running):
        for chunk in renderer.render(event):
            yield _event(chunk)
    meta = _meta(live)
    if live.outcome == "completed":
        yield _event(renderer.final_chunk(finish_reason_for(live.finished), meta))
        if include_usage:
            yield _event(renderer.usage_chunk(live.usage or Usage(0, 0)))
    else:
        # No fake finish_reason for a failed run: metadata, then the error in-band.
        closing = renderer.usage_chunk(live.usage or Usage(0, 0))
        yield _event({**closing, "usage": None, "jetty": meta})
        message = live.error or "The run failed."
        yield _event(error_body(message, "agent_error", code=live.error_code))
    yield ServerSentEvent(data="[DONE]")


def _event(data: dict[str, Any]) -> ServerSentEvent:
    return ServerSentEvent(data=json.dumps(data, separators=(",", ":")))


class RunCompletionResponse(Response):
    """The whole run folded into one ``chat.completion`` (or an error when it failed)."""

    def __init__(self, started: StartedRun, renderer: ChunkRenderer, headers: dict[str, str]):
        self._live = started.live
        self._aggregator = Aggregator(
            renderer.completion_id, renderer.model, renderer.created, started.tool_activity
        )
        self._extra_headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        live = self._live

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not live.detached:
                live.cancel()
            tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_disconnect)
            async for event in live.follow():
                self._aggregator.add(event)
            tg.cancel_scope.cancel()
        if not live.done:
            return  # the client went away
        meta = _meta(live)
        if live.outcome == "completed":
            body: dict[str, Any] = self._aggregator.completion(jetty_meta=meta)
            status = 200
        else:
            body = {
                **error_body(live.error or "The run failed.", "agent_error", code=live.error_code)
            }
            body["jetty"] = meta
            status = 502
        payload = json.dumps(body).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"x-should-retry", b"false"),
        ]
        headers += [(k.encode(), v.encode()) for k, v in self._extra_headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
