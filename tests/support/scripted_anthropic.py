"""A scripted Anthropic Messages upstream: a real HTTP app speaking Anthropic's SSE.

Its script is just enough for an agent to finish a task:

* no ``tool_result`` in the conversation yet → some text and one ``tool_use`` of the ``Bash``
  tool running ``command`` (a fresh tool-use id every time: a reused id makes Claude Code loop);
* otherwise → ``final_text``, ``stop_reason: end_turn``.

``mode`` changes that: ``"error"`` answers every call with ``error_status`` and an Anthropic
error body; ``"slow"`` waits ``delay`` seconds before each answer; ``"hang"`` starts the stream
and then never finishes (for disconnect tests); ``"truncate"`` ends the stream cleanly but
before ``message_stop``.

Every request is recorded (path, query, headers, body, the bytes streamed back) with when its
connection closed, so tests can check which key reached the upstream and that cancellation did.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

DEFAULT_COMMAND = "mkdir -p /app/results && echo 'hello from the agent' > /app/results/hello.txt"
# The usage every scripted call reports: distinct numbers so tests can tell fields apart.
USAGE = {
    "input_tokens": 11,
    "cache_creation_input_tokens": 7,
    "cache_read_input_tokens": 5,
    "output_tokens": 13,
}

Mode = Literal["script", "error", "slow", "hang", "truncate"]


@dataclass
class Seen:
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    sent: bytearray = field(default_factory=bytearray)
    started: float = field(default_factory=time.monotonic)
    disconnected: float | None = None

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class ScriptedAnthropic:
    """The app and what it has seen."""

    command: str = DEFAULT_COMMAND
    final_text: str = "Done: wrote hello.txt"
    mode: Mode = "script"
    error_status: int = 500
    delay: float = 0.5
    # After this many answered model calls, every further call fails with error_status.
    fail_after: int | None = None
    seen: list[Seen] = field(default_factory=list)

    @property
    def calls(self) -> int:
        """Model calls answered so far (``count_tokens`` and probes not included)."""
        return sum(1 for s in self.seen if s.path == "/v1/messages")

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/messages", self._messages, methods=["POST"]),
                Route("/v1/messages/count_tokens", self._count_tokens, methods=["POST"]),
                Route("/api/hello", self._hello, methods=["GET", "HEAD"]),
            ]
        )

    async def _hello(self, request: Request) -> Response:
        return Response(status_code=200)

    async def _count_tokens(self, request: Request) -> Response:
        self._record(request, await request.body())
        return JSONResponse({"input_tokens": USAGE["input_tokens"]})

    async def _messages(self, request: Request) -> Response:
        body = await request.body()
        answered = self.calls
        seen = self._record(request, body)
        if self.mode == "error" or (self.fail_after is not None and answered >= self.fail_after):
            return JSONResponse(_error(self.error_status), status_code=self.error_status)
        if self.mode == "slow":
            await anyio.sleep(self.delay)
        payload = json.loads(body)
        model = str(payload.get("model") or "claude-scripted")
        blocks = self._answer(payload.get("messages") or [])
        if self.mode == "hang":
            return _Watched(seen, _hang(model))
        if payload.get("stream") is True:
            events = _stream(model, blocks, truncate=self.mode == "truncate")
            return _Watched(seen, events)
        return JSONResponse(_message(model, blocks, with_content=True))

    def _record(self, request: Request, body: bytes) -> Seen:
        seen = Seen(request.url.path, request.url.query, dict(request.headers), body)
        self.seen.append(seen)
        return seen

    def _answer(self, messages: list[Any]) -> list[dict[str, Any]]:
        if not _has_tool_result(messages):
            return [
                {"type": "text", "text": "I will write the file now."},
                {
                    "type": "tool_use",
                    "id": f"toolu_{uuid.uuid4().hex[:24]}",
                    "name": "Bash",
                    "input": {"command": self.command, "description": "Write hello.txt"},
                },
            ]
        return [{"type": "text", "text": self.final_text}]


def _has_tool_result(messages: list[Any]) -> bool:
    # role:"system" entries and string contents are fine: only list contents can hold results.
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in content
        ):
            return True
    return False


def _stop_reason(blocks: list[dict[str, Any]]) -> str:
    return "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"


def _message(model: str, blocks: list[dict[str, Any]], *, with_content: bool) -> dict[str, Any]:
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks if with_content else [],
        "stop_reason": _stop_reason(blocks) if with_content else None,
        "stop_sequence": None,
        "usage": dict(USAGE) if with_content else {**USAGE, "output_tokens": 1},
    }


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()


async def _stream(
    model: str, blocks: list[dict[str, Any]], *, truncate: bool = False
) -> AsyncIterator[bytes]:
    yield _event("message_start", {"message": _message(model, blocks, with_content=False)})
    for index, block in enumerate(blocks):
        if truncate and index > 0:
            return
        start: dict[str, Any]
        if block["type"] == "text":
            start = {"type": "text", "text": ""}
            text = block["text"]
            half = len(text) // 2
            deltas = [{"type": "text_delta", "text": part} for part in (text[:half], text[half:])]
        else:
            start = {**block, "input": {}}
            raw = json.dumps(block["input"])
            half = len(raw) // 2
            deltas = [
                {"type": "input_json_delta", "partial_json": part}
                for part in (raw[:half], raw[half:])
            ]
        yield _event("content_block_start", {"index": index, "content_block": start})
        for delta in deltas:
            yield _event("content_block_delta", {"index": index, "delta": delta})
        yield _event("content_block_stop", {"index": index})
    delta = {"stop_reason": _stop_reason(blocks), "stop_sequence": None}
    usage = {"output_tokens": USAGE["output_tokens"]}
    yield _event("message_delta", {"delta": delta, "usage": usage})
    yield _event("message_stop", {})


async def _hang(model: str) -> AsyncIterator[bytes]:
    yield _event("message_start", {"message": _message(model, [], with_content=False)})
    await anyio.sleep(3600)


def _error(status: int) -> dict[str, Any]:
    kinds = {401: "authentication_error", 429: "rate_limit_error", 529: "overloaded_error"}
    error_type = kinds.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": error_type, "message": f"scripted {status}"}}


class _Watched(Response):
    """Streams ``content`` while watching for the client (the relay) to go away."""

    def __init__(self, seen: Seen, content: AsyncIterator[bytes]):
        self._seen = seen
        self._content = content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            self._seen.disconnected = time.monotonic()
            tg.cancel_scope.cancel()

        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"request-id", b"req_scripted"),
            (b"anthropic-ratelimit-requests-remaining", b"99"),
        ]
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            async for piece in self._content:
                self._seen.sent += piece
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            tg.cancel_scope.cancel()
