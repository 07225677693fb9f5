"""A scripted OpenAI-compatible upstream: a real HTTP app speaking real SSE.

Behaviour is chosen by the request's ``model``:

* ``echo`` (anything else): streams the last user message back word by word.
* ``count-N``: streams N small chunks (for benchmarks).
* ``error-STATUS``: answers STATUS with an OpenAI error body.
* ``slow-S``: waits S seconds before answering, then behaves like ``echo``.
* ``linger-S``: behaves like ``echo``, but ends the response S seconds after ``[DONE]``.
* ``break-after-N``: streams N chunks, then drops the connection mid-stream.
* ``truncate``: streams two chunks and ends cleanly but without ``[DONE]``.
* ``hang`` / ``hang-after-first``: never finishes; records when the client went away.

Every request is recorded (path, headers, body) together with when its
connection closed, so tests can prove cancellation reached the upstream.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes
    started: float = field(default_factory=time.monotonic)
    disconnected: float | None = None

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class ScriptedUpstream:
    """The app and what it has seen; ``models`` is what ``GET /models`` lists."""

    models: list[str] = field(default_factory=lambda: ["echo", "count-200"])
    owned_by: str = "scripted"
    seen: list[Seen] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )

    async def _models(self, request: Request) -> Response:
        data = [
            {"id": m, "object": "model", "created": 1, "owned_by": self.owned_by}
            for m in self.models
        ]
        return JSONResponse({"object": "list", "data": data})

    async def _chat(self, request: Request) -> Response:
        body = await request.body()
        seen = Seen(request.url.path, dict(request.headers), body)
        self.seen.append(seen)
        payload = json.loads(body)
        model = str(payload.get("model", "echo"))
        if model.startswith("error-"):
            status = int(model.removeprefix("error-"))
            error = {
                "message": f"scripted {status}",
                "type": "scripted",
                "param": None,
                "code": "x",
            }
            return JSONResponse({"error": error}, status_code=status)
        if model.startswith("slow-"):
            await anyio.sleep(float(model.removeprefix("slow-")))
        if model.startswith("hang"):
            return _Watched(seen, self._hang(model, seen))
        words = _words(payload)
        if not payload.get("stream"):
            return JSONResponse(_completion(model, "".join(words)))
        include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
        return _Watched(seen, self._stream(model, words, include_usage))

    async def _stream(
        self, model: str, words: list[str], include_usage: bool
    ) -> AsyncIterator[bytes]:
        if model.startswith("count-"):
            words = [f"w{i} " for i in range(int(model.removeprefix("count-")))]
        broken = (
            int(model.removeprefix("break-after-")) if model.startswith("break-after-") else None
        )
        yield _event(_chunk(model, {"role": "assistant", "content": ""}))
        for index, word in enumerate(words):
            if broken is not None and index >= broken:
                raise ConnectionAbortedError("scripted mid-stream failure")
            if model == "truncate" and index >= 2:
                return
            yield _event(_chunk(model, {"content": word}))
        yield _event(_chunk(model, {}, finish_reason="stop"))
        if include_usage:
            usage = {
                "prompt_tokens": 5,
                "completion_tokens": len(words),
                "total_tokens": 5 + len(words),
            }
            yield _event({**_chunk(model, None), "choices": [], "usage": usage})
        yield b"data: [DONE]\n\n"
        if model.startswith("linger-"):
            await anyio.sleep(float(model.removeprefix("linger-")))

    async def _hang(self, model: str, seen: Seen) -> AsyncIterator[bytes]:
        if model == "hang-after-first":
            yield _event(_chunk(model, {"role": "assistant", "content": "first"}))
        await anyio.sleep(3600)
        yield b""


class _Watched(Response):
    """Streams ``content`` while watching for the client (the proxy) to go away."""

    def __init__(self, seen: Seen, content: AsyncIterator[bytes]):
        self._seen = seen
        self._content = content

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            self._seen.disconnected = time.monotonic()
            tg.cancel_scope.cancel()

        headers = [(b"content-type", b"text/event-stream")]
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            async for piece in self._content:
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            tg.cancel_scope.cancel()


def _words(payload: dict[str, Any]) -> list[str]:
    messages = payload.get("messages") or [{}]
    text = str(messages[-1].get("content") or "")
    parts = text.split(" ")
    return [part + (" " if i < len(parts) - 1 else "") for i, part in enumerate(parts)]


def _chunk(
    model: str, delta: dict[str, Any] | None, finish_reason: str | None = None
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": "chatcmpl-scripted",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [],
    }
    if delta is not None:
        chunk["choices"] = [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        ]
    return chunk


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def _completion(model: str, text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }
