"""A scripted OpenAI Responses API upstream: a real HTTP app speaking the Responses SSE.

Serve it and use ``{url}/v1`` as the base URL (the relay's ``openai_base_url``, or a Codex
provider's ``base_url``). Its script is just enough for Codex to finish a task:

* no ``function_call_output`` in the request's ``input`` since the last user prompt → a
  ``function_call`` of ``exec_command`` running ``command`` (arguments ``{"cmd": …}``), with a
  fresh ``call_id``;
* otherwise → a ``message`` whose ``output_text`` is ``final_text``.

A resumed session resends the earlier turns, so the decision looks only at the items after the
last user prompt: a ``message`` item of role ``user`` with text that is not context Codex adds
itself (its ``# AGENTS.md instructions`` and ``<environment_context>`` message, or any text that
is one ``<tag>…</tag>`` block). ``turns`` scripts later prompts as ScriptedAnthropic's does:
entry N-1 is the ``(command, final_text)`` of the Nth prompt; prompts past the list use
``command`` and ``final_text``.

Like the real API, a request with a ``function_call`` that has no ``function_call_output`` (or
an output without its call) is a 400 ``invalid_request_error`` with the API's message.

Streams are ``response.created`` → ``response.output_item.done`` per item →
``response.completed`` with :data:`USAGE`. ``mode`` changes that like ScriptedAnthropic's:
``"error"`` answers ``error_status`` with an OpenAI error body, ``"slow"`` waits ``delay``
seconds, ``"hang"`` sends ``response.created`` and never finishes, ``"truncate"`` ends cleanly
before ``response.completed``. Every request is recorded (see
:class:`~tests.support.scripted_anthropic.Seen`).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.scripted_anthropic import DEFAULT_COMMAND, Mode, Seen
from tests.support.turns import current_turn
from tests.support.watched import WatchedStream

# Distinct numbers so tests can tell fields apart; input includes cached, output reasoning.
USAGE: dict[str, Any] = {
    "input_tokens": 31,
    "input_tokens_details": {"cached_tokens": 5},
    "output_tokens": 17,
    "output_tokens_details": {"reasoning_tokens": 3},
    "total_tokens": 48,
}
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"x-request-id", b"req_scripted"),
    (b"x-ratelimit-remaining-requests", b"99"),
]


@dataclass
class ScriptedResponses:
    """The app and what it has seen."""

    command: str = DEFAULT_COMMAND
    final_text: str = "Done: wrote hello.txt"
    mode: Mode = "script"
    error_status: int = 500
    delay: float = 0.5
    turns: list[tuple[str, str]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)

    @property
    def calls(self) -> int:
        """Model calls answered so far."""
        return sum(1 for s in self.seen if s.path == "/v1/responses")

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/responses", self._responses, methods=["POST"])])

    async def _responses(self, request: Request) -> Response:
        body = await request.body()
        seen = Seen(request.url.path, request.url.query, dict(request.headers), body)
        self.seen.append(seen)
        if self.mode == "error":
            return JSONResponse(_error(self.error_status), status_code=self.error_status)
        if self.mode == "slow":
            await anyio.sleep(self.delay)
        payload = json.loads(body)
        unpaired = _unpaired(payload)
        if unpaired is not None:
            return JSONResponse(_error(400, unpaired), status_code=400)
        response = _response(str(payload.get("model") or "gpt-scripted"))
        if self.mode == "hang":
            return WatchedStream(seen, _hang(response), HEADERS)
        items = self._answer(payload.get("input"))
        if payload.get("stream") is True:
            events = _stream(response, items, truncate=self.mode == "truncate")
            return WatchedStream(seen, events, HEADERS)
        return JSONResponse(_completed(response, items), headers={"x-request-id": "req_scripted"})

    def _answer(self, input_items: object) -> list[dict[str, Any]]:
        items = input_items if isinstance(input_items, list) else []
        (command, final_text), since = current_turn(
            items, _is_prompt, self.turns, (self.command, self.final_text)
        )
        if not any(_is_tool_output(item) for item in since):
            return [
                {
                    "type": "function_call",
                    "id": f"fc_{uuid.uuid4().hex[:24]}",
                    "call_id": f"call_{uuid.uuid4().hex[:24]}",
                    "name": "exec_command",
                    "arguments": json.dumps({"cmd": command}),
                    "status": "completed",
                }
            ]
        return [
            {
                "type": "message",
                "id": f"msg_{uuid.uuid4().hex[:24]}",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": final_text, "annotations": []}],
            }
        ]


# Context Codex sends as user messages: its AGENTS.md wrapper and tag-wrapped blocks such as
# <environment_context>…</environment_context>.
_CONTEXT = re.compile(r"# AGENTS\.md instructions\b.*|<([\w-]+)\b[^>]*>.*</\1>", re.DOTALL)


def _is_tool_output(item: object) -> bool:
    kinds = ("function_call_output", "custom_tool_call_output")
    return isinstance(item, dict) and item.get("type") in kinds


def _unpaired(payload: dict[str, Any]) -> str | None:
    """The API's message for a call without its output or an output without its call."""
    if payload.get("previous_response_id"):
        return None  # the calls may be in the stored response
    raw = payload.get("input")
    items = [i for i in raw if isinstance(i, dict)] if isinstance(raw, list) else []
    kinds = ("function_call", "custom_tool_call")
    calls = {str(i.get("call_id")) for i in items if i.get("type") in kinds}
    outputs = {str(i.get("call_id")) for i in items if _is_tool_output(i)}
    if calls - outputs:
        return f"No tool output found for function call {min(calls - outputs)}."
    if outputs - calls:
        return f"No tool call found for function call output with call_id {min(outputs - calls)}."
    return None


def _is_prompt(item: object) -> bool:
    """A user message with text that is not context (the type may be left out of the item)."""
    if not isinstance(item, dict) or item.get("role") != "user":
        return False
    if item.get("type", "message") != "message":
        return False
    content = item.get("content")
    if isinstance(content, str):
        texts = [content]
    elif isinstance(content, list):
        texts = [
            part["text"]
            for part in content
            if isinstance(part, dict)
            and part.get("type") == "input_text"
            and isinstance(part.get("text"), str)
        ]
    else:
        texts = []
    return any(text.strip() and not _CONTEXT.fullmatch(text.strip()) for text in texts)


def _response(model: str) -> dict[str, Any]:
    return {
        "id": f"resp_{uuid.uuid4().hex[:24]}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "model": model,
        "output": [],
        "usage": None,
    }


def _completed(response: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any]:
    return {**response, "status": "completed", "output": items, "usage": USAGE}


def _event(name: str, sequence: int, data: dict[str, Any]) -> bytes:
    payload = {"type": name, "sequence_number": sequence, **data}
    return f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()


async def _stream(
    response: dict[str, Any], items: list[dict[str, Any]], *, truncate: bool = False
) -> AsyncIterator[bytes]:
    yield _event("response.created", 0, {"response": response})
    for index, item in enumerate(items):
        yield _event("response.output_item.done", index + 1, {"output_index": index, "item": item})
    if truncate:
        return
    done = _completed(response, items)
    yield _event("response.completed", len(items) + 1, {"response": done})


async def _hang(response: dict[str, Any]) -> AsyncIterator[bytes]:
    yield _event("response.created", 0, {"response": response})
    await anyio.sleep(3600)


def _error(status: int, message: str | None = None) -> dict[str, Any]:
    kinds = {401: "invalid_request_error", 429: "rate_limit_error"}
    error_type = kinds.get(status, "server_error" if status >= 500 else "invalid_request_error")
    code = "invalid_api_key" if status == 401 else None
    text = message or f"scripted {status}"
    return {"error": {"message": text, "type": error_type, "param": None, "code": code}}
