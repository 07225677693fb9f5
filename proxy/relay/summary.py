"""What a relayed completion was, from the few bytes the relay keeps of it.

The relay keeps the head and the tail of a streamed body (or the whole body of a
non-streaming one); that is enough for the trajectory record: the upstream's id and
model from the first chunk, the finish reason and usage from the last ones.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

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
    """
    body = _json_object(head.strip())
    if body is not None:
        return _from_completion(body)
    upstream_id = model = finish_reason = None
    usage: dict[str, Any] | None = None
    for chunk in [*_chunks(head), *_chunks(tail)]:
        if upstream_id is None and isinstance(chunk.get("id"), str):
            upstream_id = chunk["id"]
        if model is None and isinstance(chunk.get("model"), str):
            model = chunk["model"]
        for choice in _choices(chunk):
            if isinstance(choice.get("finish_reason"), str):
                finish_reason = choice["finish_reason"]
        if isinstance(chunk.get("usage"), dict):
            usage = chunk["usage"]
    return ChatSummary(
        upstream_id=upstream_id, model=model, finish_reason=finish_reason, usage=usage
    )


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


def _chunks(raw: bytes) -> Iterator[dict[str, Any]]:
    for block in _BLOCK_SEPARATOR.split(raw):
        data = b"\n".join(
            line[5:].lstrip(b" ") for line in block.splitlines() if line.startswith(b"data:")
        )
        chunk = _json_object(data)
        if chunk is not None:
            yield chunk


def _choices(chunk: dict[str, Any]) -> list[dict[str, Any]]:
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        return []
    return [choice for choice in choices if isinstance(choice, dict)]


def _json_object(raw: bytes) -> dict[str, Any] | None:
    if not raw.startswith(b"{"):
        return None
    try:
        parsed = json.loads(raw)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None
