"""Summaries of relayed completions from the head and tail the relay keeps."""

from __future__ import annotations

import json
from typing import Any

from proxy.relay.summary import ChatSummary, StreamContent, summarize_chat_stream


def sse(*chunks: dict[str, Any] | str) -> bytes:
    out = b""
    for chunk in chunks:
        data = chunk if isinstance(chunk, str) else json.dumps(chunk)
        out += f"data: {data}\n\n".encode()
    return out


def chunk(**fields: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-9", "object": "chat.completion.chunk", "model": "gpt-4o-mini", **fields}


USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def test_stream_head_and_tail() -> None:
    head = sse(chunk(choices=[{"index": 0, "delta": {"role": "assistant", "content": ""}}]))
    body = sse(
        chunk(choices=[{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]),
        chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "length"}]),
        chunk(choices=[], usage=USAGE),
        "[DONE]",
    )
    # The tail is cut mid-block, as the relay's last-N-bytes buffer will be.
    tail = body[7:]
    assert summarize_chat_stream(head, tail) == ChatSummary(
        upstream_id="chatcmpl-9", model="gpt-4o-mini", finish_reason="length", usage=USAGE
    )


def test_crlf_and_comments_and_garbage_are_tolerated() -> None:
    head = b": ping\r\n\r\n" + sse(chunk(choices=[])).replace(b"\n", b"\r\n")
    tail = (
        b"data: {not json}\n\ndata: "
        + json.dumps(chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])).encode()
        + b"\n\n"
    )
    summary = summarize_chat_stream(head, tail)
    assert summary.upstream_id == "chatcmpl-9"
    assert summary.finish_reason == "stop"
    assert summary.usage is None


def test_non_streaming_body() -> None:
    body = json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "gpt-4o",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hi"},
                    "finish_reason": "stop",
                }
            ],
            "usage": USAGE,
        }
    ).encode()
    assert summarize_chat_stream(body, b"") == ChatSummary(
        upstream_id="chatcmpl-1", model="gpt-4o", finish_reason="stop", usage=USAGE, content="hi"
    )


def test_nothing_useful() -> None:
    assert summarize_chat_stream(b"", b"") == ChatSummary()
    assert summarize_chat_stream(b'{"error": {"message": "x"}}', b"") == ChatSummary()
    assert summarize_chat_stream(b"\x00\xff", b"data: [DONE]\n\n") == ChatSummary()


def test_stream_content_gathers_the_first_choices_text() -> None:
    content = StreamContent()
    assert content.text is None
    content.feed(
        sse(
            chunk(choices=[{"index": 0, "delta": {"role": "assistant", "content": ""}}]),
            chunk(choices=[{"index": 0, "delta": {"content": "Hel"}}]),
            chunk(choices=[{"index": 1, "delta": {"content": "other choice"}}]),
        )
    )
    content.feed(b": ping\n\n" + sse(chunk(choices=[{"index": 0, "delta": {"content": "lo"}}])))
    content.feed(sse("{not json", chunk(choices=[], usage=USAGE), "[DONE]"))
    assert content.text == "Hello"
