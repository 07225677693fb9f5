"""A scripted Gemini API upstream: a real HTTP app speaking ``streamGenerateContent`` SSE.

Serve it and use its URL as the base URL (the relay's ``google_base_url``, or Gemini CLI's
``GOOGLE_GEMINI_BASE_URL``). Its script is just enough for Gemini CLI to finish a task:

* no ``functionResponse`` part in the request's ``contents`` yet → some text, then a
  ``functionCall`` of ``run_shell_command`` running ``command``;
* otherwise → ``final_text`` in two pieces.

Streams are bare ``data:`` frames, each a ``GenerateContentResponse``; the last one has
``finishReason: "STOP"`` and the full :data:`USAGE` (the first carries the prompt count only,
as the API's do). ``:generateContent`` answers the same script as one JSON body, a stream
without ``alt=sse`` is one JSON array of the frames, and ``:countTokens`` a fixed count.

``mode`` works as ScriptedAnthropic's: ``"error"`` answers ``error_status`` with a Google error
body, ``"slow"`` waits ``delay`` seconds, ``"hang"`` sends one frame and never finishes,
``"truncate"`` ends cleanly before the finishing frame. Every request is recorded (see
:class:`~tests.support.scripted_anthropic.Seen`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.scripted_anthropic import DEFAULT_COMMAND, Mode, Seen
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


@dataclass
class ScriptedGemini:
    """The app and what it has seen."""

    command: str = DEFAULT_COMMAND
    final_text: str = "Done: wrote hello.txt"
    mode: Mode = "script"
    error_status: int = 500
    delay: float = 0.5
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
        frames = self._answer(json.loads(body).get("contents"), model)
        if method == "generateContent":
            return JSONResponse(_merged(frames))
        if request.query_params.get("alt") != "sse":
            return JSONResponse(frames)  # without alt=sse a stream is one JSON array
        if self.mode == "hang":
            return WatchedStream(seen, _hang(frames[0]), HEADERS)
        truncate = self.mode == "truncate"
        return WatchedStream(seen, _stream(frames, truncate=truncate), HEADERS)

    def _answer(self, contents: object, model: str) -> list[dict[str, Any]]:
        if not _has_function_response(contents):
            parts: list[list[dict[str, Any]]] = [
                [{"text": "I will write the file now."}],
                [
                    {
                        "functionCall": {
                            "name": "run_shell_command",
                            "args": {"command": self.command},
                        }
                    }
                ],
            ]
        else:
            half = len(self.final_text) // 2
            parts = [[{"text": self.final_text[:half]}], [{"text": self.final_text[half:]}]]
        frames = [_frame(model, p) for p in parts]
        frames[0]["usageMetadata"] = {"promptTokenCount": USAGE["promptTokenCount"]}
        frames[-1]["candidates"][0]["finishReason"] = "STOP"
        frames[-1]["usageMetadata"] = dict(USAGE)
        return frames


def _has_function_response(contents: object) -> bool:
    if not isinstance(contents, list):
        return False
    for content in contents:
        parts = content.get("parts") if isinstance(content, dict) else None
        if isinstance(parts, list) and any(
            isinstance(p, dict) and "functionResponse" in p for p in parts
        ):
            return True
    return False


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


def _error(status: int) -> dict[str, Any]:
    name = _STATUS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
    return {"error": {"code": status, "message": f"scripted {status}", "status": name}}
