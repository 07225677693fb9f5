"""A scripted Anthropic Messages upstream: a real HTTP app speaking Anthropic's SSE.

Its script is just enough for an agent to finish a task:

* no ``tool_result`` since the last user prompt → some text and one ``tool_use`` of the
  ``Bash`` tool running ``command`` (a fresh tool-use id every time: a reused id makes Claude
  Code loop);
* otherwise → ``final_text``, ``stop_reason: end_turn``.

A resumed session resends the earlier turns, so the decision looks only at the messages after
the last user prompt (a user message with text and no tool result). ``turns`` scripts later
prompts: entry N-1 is the ``(command, final_text)`` of the Nth prompt in the conversation;
prompts past the list use ``command`` and ``final_text``.

``mode`` changes that: ``"error"`` answers every call with ``error_status`` and an Anthropic
error body; ``"slow"`` waits ``delay`` seconds before each answer; ``"hang"`` starts the stream
and then never finishes (for disconnect tests); ``"truncate"`` ends the stream cleanly but
before ``message_stop``.

``cut_calls`` cuts the stream of the first that many streamed model calls after
``cut_after_deltas`` content deltas, the way a broken connection does (the response ends without
its terminating chunk), or, with ``cut_error`` set, with an in-band ``event: error`` of that
status (as Anthropic reports overload mid-stream). ``cut_text``, when given, is the text those
cut attempts stream instead of the scripted one (a retry that says something else).

Every request is recorded (path, query, headers, body, the bytes streamed back) with when its
connection closed, so tests can check which key reached the upstream and that cancellation did.
"""

from __future__ import annotations

import json
import threading
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

from tests.support.turns import current_turn

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
    # The first this many streamed model calls break off after cut_after_deltas deltas.
    cut_calls: int = 0
    cut_after_deltas: int = 1
    cut_error: int | None = None
    cut_text: str | None = None
    cuts: int = 0
    turns: list[tuple[str, str]] = field(default_factory=list)
    # While this event is unset, every model call after the first waits for it: the run
    # stays live (its first tool call done) until the test lets it finish.
    gate: threading.Event | None = None
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
        if self.gate is not None and answered >= 1:
            while not self.gate.is_set():
                await anyio.sleep(0.05)
        payload = json.loads(body)
        model = str(payload.get("model") or "claude-scripted")
        blocks = self._answer(payload.get("messages") or [])
        if self.mode == "hang":
            return _Watched(seen, _hang(model))
        if payload.get("stream") is True:
            if self.cuts < self.cut_calls:
                self.cuts += 1
                if self.cut_text is not None:
                    blocks = [
                        {**b, "text": self.cut_text} if b["type"] == "text" else b for b in blocks
                    ]
                cut = _Cut(self.cut_after_deltas, self.cut_error)
                return _Watched(seen, _stream(model, blocks, cut=cut))
            events = _stream(model, blocks, truncate=self.mode == "truncate")
            return _Watched(seen, events)
        return JSONResponse(_message(model, blocks, with_content=True))

    def _record(self, request: Request, body: bytes) -> Seen:
        seen = Seen(request.url.path, request.url.query, dict(request.headers), body)
        self.seen.append(seen)
        return seen

    def _answer(self, messages: list[Any]) -> list[dict[str, Any]]:
        (command, final_text), since = current_turn(
            messages, _is_prompt, self.turns, (self.command, self.final_text)
        )
        if not any(_has_tool_result(m) for m in since):
            return [
                {"type": "text", "text": "I will write the file now."},
                {
                    "type": "tool_use",
                    "id": f"toolu_{uuid.uuid4().hex[:24]}",
                    "name": "Bash",
                    "input": {"command": command, "description": "Write hello.txt"},
                },
            ]
        return [{"type": "text", "text": final_text}]


def _blocks(message: Any) -> list[Any]:
    # role:"system" entries and string contents are fine: only list contents can hold results.
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, list) else []


def _has_tool_result(message: Any) -> bool:
    return any(isinstance(b, dict) and b.get("type") == "tool_result" for b in _blocks(message))


def _is_prompt(message: Any) -> bool:
    if not isinstance(message, dict) or message.get("role") != "user":
        return False
    if isinstance(message.get("content"), str):
        return True
    return not _has_tool_result(message) and any(
        isinstance(b, dict) and b.get("type") == "text" for b in _blocks(message)
    )


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
    model: str, blocks: list[dict[str, Any]], *, truncate: bool = False, cut: _Cut | None = None
) -> AsyncIterator[bytes]:
    sent_deltas = 0
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
            sent_deltas += 1
            if cut is not None and sent_deltas >= cut.after_deltas:
                if cut.error is None:
                    raise StreamCut
                yield _event("error", _error(cut.error))
                return
        yield _event("content_block_stop", {"index": index})
    delta = {"stop_reason": _stop_reason(blocks), "stop_sequence": None}
    usage = {"output_tokens": USAGE["output_tokens"]}
    yield _event("message_delta", {"delta": delta, "usage": usage})
    yield _event("message_stop", {})


async def _hang(model: str) -> AsyncIterator[bytes]:
    yield _event("message_start", {"message": _message(model, [], with_content=False)})
    await anyio.sleep(3600)


@dataclass
class _Cut:
    after_deltas: int
    error: int | None


class StreamCut(Exception):
    """Raised inside a streaming response: the server drops the connection mid-body."""


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
