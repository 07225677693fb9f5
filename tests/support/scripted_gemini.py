"""A scripted Gemini API upstream: a real HTTP app speaking ``streamGenerateContent`` SSE.

Serve it and use its URL as the base URL (the relay's ``google_base_url``, or Gemini CLI's
``GOOGLE_GEMINI_BASE_URL``). Its script is just enough for Gemini CLI to finish a task:

* no ``functionResponse`` part in the request's ``contents`` since the last user prompt → some
  text, then a ``functionCall`` of ``run_shell_command`` running ``command``;
* otherwise → ``final_text`` in two pieces.

A resumed session resends the earlier turns, so the decision looks only at the contents after
the last user prompt: a ``user`` content with no ``functionResponse`` and a text part that is not
context Gemini CLI adds itself (its ``<session_context>…</session_context>`` part, which shares
the first prompt's content, or any text that is one ``<tag>…</tag>`` block). ``turns`` scripts
later prompts as ScriptedAnthropic's does: entry N-1 is the ``(command, final_text)`` of the Nth
prompt; prompts past the list use ``command`` and ``final_text``.

Streams are bare ``data:`` frames, each a ``GenerateContentResponse``; the last one has
``finishReason: "STOP"`` and the full :data:`USAGE` (the first carries the prompt count only,
as the API's do). ``:generateContent`` answers the same script as one JSON body, a stream
without ``alt=sse`` is one JSON array of the frames, and ``:countTokens`` a fixed count.

Like the real API, a request whose function calls and responses do not pair up (a ``model``
content with N ``functionCall`` parts not followed by a ``user`` content with N
``functionResponse`` parts) is a 400 ``INVALID_ARGUMENT`` with the API's message.

``mode`` works as ScriptedAnthropic's: ``"error"`` answers ``error_status`` with a Google error
body, ``"slow"`` waits ``delay`` seconds, ``"hang"`` sends one frame and never finishes,
``"truncate"`` ends cleanly before the finishing frame. Every request is recorded (see
:class:`~tests.support.scripted_anthropic.Seen`).
"""

from __future__ import annotations

import json
import re
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

# Distinct numbers so tests can tell fields apart; the prompt count includes the cached one,
# the candidates count excludes thoughts.
USAGE = {
    "promptTokenCount": 29,
    "candidatesTokenCount": 13,
    "cachedContentTokenCount": 7,
    "thoughtsTokenCount": 4,
    "totalTokenCount": 46,
}
COUNT_TOKENS = {"totalTokens": 29}
HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"x-goog-request-id", b"req_scripted"),
]
_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 429: "RESOURCE_EXHAUSTED"}
UNPAIRED = (
    "Please ensure that the number of function response parts is equal to the number of function"
    " call parts of the function call turn."
)


@dataclass
class ScriptedGemini:
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
        """Model calls answered so far (``countTokens`` not included)."""
        return sum(1 for s in self.seen if s.path.endswith("Content"))

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1beta/models/{target}", self._models, methods=["POST"])])

    async def _models(self, request: Request) -> Response:
        body = await request.body()
        seen = Seen(request.url.path, request.url.query, dict(request.headers), body)
        self.seen.append(seen)
        model, _, method = request.path_params["target"].rpartition(":")
        if self.mode == "error":
            return JSONResponse(_error(self.error_status), status_code=self.error_status)
        if method == "countTokens":
            return JSONResponse(COUNT_TOKENS)
        if self.mode == "slow":
            await anyio.sleep(self.delay)
        contents = json.loads(body).get("contents")
        if not _paired(contents):
            return JSONResponse(_error(400, UNPAIRED), status_code=400)
        frames = self._answer(contents, model)
        if method == "generateContent":
            return JSONResponse(_merged(frames))
        if request.query_params.get("alt") != "sse":
            return JSONResponse(frames)  # without alt=sse a stream is one JSON array
        if self.mode == "hang":
            return WatchedStream(seen, _hang(frames[0]), HEADERS)
        truncate = self.mode == "truncate"
        return WatchedStream(seen, _stream(frames, truncate=truncate), HEADERS)

    def _answer(self, contents: object, model: str) -> list[dict[str, Any]]:
        history = contents if isinstance(contents, list) else []
        (command, final_text), since = current_turn(
            history, _is_prompt, self.turns, (self.command, self.final_text)
        )
        if not any(_has_function_response(content) for content in since):
            parts: list[list[dict[str, Any]]] = [
                [{"text": "I will write the file now."}],
                [
                    {
                        "functionCall": {
                            "name": "run_shell_command",
                            "args": {"command": command},
                        }
                    }
                ],
            ]
        else:
            half = len(final_text) // 2
            parts = [[{"text": final_text[:half]}], [{"text": final_text[half:]}]]
        frames = [_frame(model, p) for p in parts]
        frames[0]["usageMetadata"] = {"promptTokenCount": USAGE["promptTokenCount"]}
        frames[-1]["candidates"][0]["finishReason"] = "STOP"
        frames[-1]["usageMetadata"] = dict(USAGE)
        return frames


# Context Gemini CLI sends as user text: tag-wrapped blocks such as <session_context>.
_CONTEXT = re.compile(r"<([\w-]+)\b[^>]*>.*</\1>", re.DOTALL)


def _parts(content: object) -> list[Any]:
    parts = content.get("parts") if isinstance(content, dict) else None
    return parts if isinstance(parts, list) else []


def _count(content: object, kind: str) -> int:
    return sum(1 for p in _parts(content) if isinstance(p, dict) and kind in p)


def _has_function_response(content: object) -> bool:
    return _count(content, "functionResponse") > 0


def _paired(contents: object) -> bool:
    """Every function call turn is answered by as many function responses, as the API checks."""
    history = contents if isinstance(contents, list) else []
    for index, content in enumerate(history):
        calls = _count(content, "functionCall")
        if calls == 0:
            continue
        answer = history[index + 1] if index + 1 < len(history) else None
        if _count(answer, "functionResponse") != calls:
            return False
    return True


def _is_prompt(content: object) -> bool:
    if not isinstance(content, dict) or content.get("role", "user") != "user":
        return False
    if _has_function_response(content):
        return False
    texts = [p["text"] for p in _parts(content) if isinstance(p, dict) and "text" in p]
    return any(
        isinstance(t, str) and t.strip() and not _CONTEXT.fullmatch(t.strip()) for t in texts
    )


def _frame(model: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "candidates": [{"content": {"role": "model", "parts": parts}, "index": 0}],
        "modelVersion": model,
        "responseId": "resp-scripted",
    }


def _merged(frames: list[dict[str, Any]]) -> dict[str, Any]:
    whole = json.loads(json.dumps(frames[-1]))
    whole["candidates"][0]["content"]["parts"] = [
        part for frame in frames for part in frame["candidates"][0]["content"]["parts"]
    ]
    return dict(whole)


def _data(frame: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(frame).encode() + b"\r\n\r\n"


async def _stream(frames: list[dict[str, Any]], *, truncate: bool) -> AsyncIterator[bytes]:
    for frame in frames[:-1] if truncate else frames:
        yield _data(frame)


async def _hang(frame: dict[str, Any]) -> AsyncIterator[bytes]:
    yield _data(frame)
    await anyio.sleep(3600)


def _error(status: int, message: str | None = None) -> dict[str, Any]:
    name = _STATUS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
    text = message or f"scripted {status}"
    return {"error": {"code": status, "message": text, "status": name}}
