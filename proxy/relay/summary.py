"""What a relayed completion was, from the few bytes the relay keeps of it.

The relay keeps the head and the tail of a streamed body (or the whole body of a
non-streaming one); that is enough for the trajectory record: the upstream's id and
model from the first chunk, the finish reason and usage from the last ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from typing import Any

import orjson

_BLOCK_SEPARATOR = re.compile(rb"\r?\n\r?\n")


@dataclass(frozen=True)
class ChatSummary:
    upstream_id: str | None = None
    model: str | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    #: The assistant's text; only known for non-streaming bodies.
    content: str | None = None


def summarize_chat_stream(head: bytes, tail: bytes) -> ChatSummary:
    """Summarise a relayed completion from the start and end of its body.

    ``head`` is the first SSE block(s) of a stream, or the whole JSON body of a
    non-streaming response (then ``tail`` is ignored). ``tail`` is the last bytes of the
    stream and may start mid-block. Unparseable pieces are skipped: this never raises.
    Only the chunks needed are parsed: the first with an id and model, and the last back
    to the one with the finish reason (usage arrives with it or in a chunk after it).
    """
    body = _json_object(head.strip())
    if body is not None:
        return _from_completion(body)
    upstream_id = model = None
    for chunk in chain(_chunks(head), _chunks(tail)):
        if upstream_id is None and isinstance(chunk.get("id"), str):
            upstream_id = chunk["id"]
        if model is None and isinstance(chunk.get("model"), str):
            model = chunk["model"]
        if upstream_id is not None and model is not None:
            break
    finish_reason = None
    usage: dict[str, Any] | None = None
    # Newest first, and only back to the (last) finish reason: usage comes with it or after.
    for chunk in chain(_chunks(tail, newest_first=True), _chunks(head, newest_first=True)):
        if usage is None and isinstance(chunk.get("usage"), dict):
            usage = chunk["usage"]
        reasons = [
            c["finish_reason"] for c in _choices(chunk) if isinstance(c.get("finish_reason"), str)
        ]
        if reasons:
            finish_reason = reasons[-1]
            break
    return ChatSummary(
        upstream_id=upstream_id, model=model, finish_reason=finish_reason, usage=usage
    )


class StreamContent:
    """The assistant's text of a stream, gathered from the blocks as they are relayed.

    Give :meth:`feed` to the relay as its ``on_block``. Only the first choice's
    ``delta.content`` is kept; events that are not chunks are skipped.
    """

    def __init__(self) -> None:
        self._parts: list[str] = []

    def feed(self, block: bytes) -> None:
        """Read the complete SSE events in ``block``."""
        for chunk in _chunks(block):
            for choice in _choices(chunk):
                delta = choice.get("delta")
                if choice.get("index", 0) == 0 and isinstance(delta, dict):
                    text = delta.get("content")
                    if isinstance(text, str):
                        self._parts.append(text)

    @property
    def text(self) -> str | None:
        """The text so far, or None when no chunk carried any."""
        return "".join(self._parts) if self._parts else None


def _from_completion(body: dict[str, Any]) -> ChatSummary:
    choices = _choices(body)
    first = choices[0] if choices else {}
    message = first.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    reason = first.get("finish_reason")
    usage = body.get("usage")
    return ChatSummary(
        upstream_id=body["id"] if isinstance(body.get("id"), str) else None,
        model=body["model"] if isinstance(body.get("model"), str) else None,
        finish_reason=reason if isinstance(reason, str) else None,
        usage=usage if isinstance(usage, dict) else None,
        content=content if isinstance(content, str) else None,
    )


def _chunks(raw: bytes, *, newest_first: bool = False) -> Iterator[dict[str, Any]]:
    """The JSON objects of the SSE events in ``raw``, parsed one by one as they are asked for."""
    for block in _blocks(raw, newest_first):
        data = b"\n".join(
            line[5:].lstrip(b" ") for line in block.splitlines() if line.startswith(b"data:")
        )
        chunk = _json_object(data)
        if chunk is not None:
            yield chunk


def _blocks(raw: bytes, newest_first: bool) -> Iterator[bytes]:
    """The SSE events of ``raw``, found one at a time: a summary reads a few of many."""
    if b"\r" in raw:
        # The regular expression tries every offset: only for the rare CRLF stream.
        blocks = _BLOCK_SEPARATOR.split(raw)
        yield from reversed(blocks) if newest_first else blocks
    elif newest_first:
        end = len(raw)
        while (start := raw.rfind(b"\n\n", 0, end)) >= 0:
            yield raw[start + 2 : end]
            end = start
        yield raw[:end]
    else:
        start = 0
        while (end := raw.find(b"\n\n", start)) >= 0:
            yield raw[start:end]
            start = end + 2
        yield raw[start:]


def _choices(chunk: dict[str, Any]) -> list[dict[str, Any]]:
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        return []
    return [choice for choice in choices if isinstance(choice, dict)]


def _json_object(raw: bytes) -> dict[str, Any] | None:
    if not raw.startswith(b"{"):
        return None
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None
