"""The SSE relay's framing, for any upstream stream and any way its bytes arrive.

Whatever the reads of the upstream's body look like, the client gets the upstream's bytes
unchanged, in writes cut only at event boundaries, ending in exactly one ``data: [DONE]``
and exactly one final message; a stream that breaks or ends early gets its in-band error
first. Two upstream clients feed the relay: httpx (the exact reads chosen here) and the
relay's own HTTP/1.1 client on a real loopback connection (reads as the kernel delivers
them, and the end of the body known ahead).
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from starlette.types import Message

from proxy.relay import http1
from proxy.relay.response import RelayStreamResponse
from proxy.relay.upstream import UpstreamResponse
from tests.support.raw_http import CHUNKED, Seen, chunk, serving

DONE = b"data: [DONE]"
_DONE_LINE = re.compile(rb"^data: ?\[DONE\]\r?$", re.MULTILINE)
_BOUNDARY = re.compile(rb"\n\n|\r\n\r\n")


def _event(lines: list[bytes], newline: bytes) -> bytes:
    return newline.join(lines) + newline + newline


texts = st.text(max_size=30) | st.sampled_from(["[DONE]", "data: [DONE]", "\n\n", "\r\n", ""])
chunk_events = st.builds(
    lambda text, newline: _event(
        [b"data: " + json.dumps({"choices": [{"delta": {"content": text}}]}).encode()], newline
    ),
    texts,
    st.sampled_from([b"\n", b"\r\n"]),
)
other_events = st.builds(
    _event,
    st.lists(
        st.sampled_from([b": ping", b"event: x", b"id: 1", b"data: {}", b"data: [DONE]x"]),
        min_size=1,
        max_size=3,
    ),
    st.sampled_from([b"\n", b"\r\n"]),
)


@dataclass(frozen=True)
class Upstream:
    """What an upstream sends: ``body`` in ``pieces``, then a clean end or a broken one."""

    pieces: list[bytes]
    broken: bool

    @property
    def body(self) -> bytes:
        return b"".join(self.pieces)


@st.composite
def upstreams(draw: st.DrawFn) -> Upstream:
    events = draw(st.lists(chunk_events | other_events, max_size=6))
    ending = draw(st.sampled_from(["done", "done-crlf", "none", "unterminated", "open-done"]))
    body = (
        b"".join(events)
        + {
            "done": DONE + b"\n\n",
            "done-crlf": DONE + b"\r\n\r\n",
            "none": b"",
            "unterminated": b'data: {"choices": []}' + draw(st.sampled_from([b"", b"\n", b"\r\n"])),
            "open-done": DONE + draw(st.sampled_from([b"", b"\n"])),
        }[ending]
    )
    cuts = sorted(set(draw(st.lists(st.integers(0, len(body)), max_size=8))))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    broken = draw(st.booleans())
    return Upstream([piece for piece in pieces if piece], broken)


def _events_of(data: bytes) -> list[bytes]:
    """The complete events in ``data``, each with its terminator."""
    events, start = [], 0
    for boundary in _BOUNDARY.finditer(data):
        events.append(data[start : boundary.end()])
        start = boundary.end()
    return events


def _expected(upstream: Upstream) -> bytes:
    """The body the client must get."""
    body = upstream.body
    events = _events_of(body)
    relayed = b"".join(events)
    rest = body[len(relayed) :]
    if upstream.broken:
        # The relay cannot know whether an event cut short by a broken connection was whole.
        complete = any(_DONE_LINE.search(event) for event in events)
        return relayed if complete else relayed + b"error"
    if rest.strip():
        relayed += rest.rstrip(b"\r\n") + b"\n\n"
    return relayed if _DONE_LINE.search(relayed) else relayed + b"error"


def _check(upstream: Upstream, sent: list[Message]) -> None:
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    bodies = [message for message in sent[1:] if message["type"] == "http.response.body"]
    assert len(bodies) == len(sent) - 1
    ends = [index for index, message in enumerate(bodies) if not message.get("more_body", False)]
    assert ends == [len(bodies) - 1], "exactly one final message, and it is the last"
    for message in bodies:
        piece = message["body"]
        assert not piece or piece.endswith((b"\n\n", b"\r\n\r\n")), piece
    output = b"".join(message["body"] for message in bodies)
    expected = _expected(upstream)
    if expected.endswith(b"error"):
        relayed = expected.removesuffix(b"error")
        assert output.startswith(relayed)
        error = output[len(relayed) :]
        assert error.startswith(b"data: {") and error.endswith(DONE + b"\n\n")
        assert json.loads(error.split(b"\n\n")[0].removeprefix(b"data: "))["error"]["message"]
    else:
        assert output == expected
    assert len(_DONE_LINE.findall(output)) == 1, "one [DONE], at the end"
    assert _DONE_LINE.search(_events_of(output)[-1])


async def _relay(open_upstream: Any) -> list[Message]:
    sent: list[Message] = []
    never = asyncio.Event()

    async def receive() -> Message:
        await never.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            never.set()  # as a server does once the response is complete

    relay = RelayStreamResponse(open_upstream, keepalive=3600, on_finish=None)
    await relay({"type": "http"}, receive, send)
    return sent


async def _through_httpx(upstream: Upstream) -> list[Message]:
    async def body() -> AsyncIterator[bytes]:
        for piece in upstream.pieces:
            yield piece
        if upstream.broken:
            raise httpx.ReadError("the upstream went away")

    response = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())

    async def open_upstream() -> UpstreamResponse:
        return UpstreamResponse(response)

    return await _relay(open_upstream)


async def _through_http1(upstream: Upstream) -> list[Message]:
    async def respond(writer: asyncio.StreamWriter, seen: Seen, index: int) -> bool:
        writer.write(CHUNKED)
        for piece in upstream.pieces:
            writer.write(chunk(piece))
            await writer.drain()
        if not upstream.broken:
            writer.write(b"0\r\n\r\n")
        return False

    async with serving(respond) as (_, url):
        pool = http1.ConnectionPool(
            ssl_context=ssl.create_default_context(),
            connect_timeout=10,
            read_timeout=30,
            keepalive_expiry=5,
        )

        async def open_upstream() -> UpstreamResponse:
            return UpstreamResponse(await pool.request("POST", url, [], b"{}"))

        try:
            return await _relay(open_upstream)
        finally:
            await pool.aclose()


@pytest.mark.parametrize("client", [_through_httpx, _through_http1], ids=["httpx", "http1"])
@given(upstreams())
@example(Upstream([b'data: {"choices": [{"delta": {"content": "[DONE]"}}]}\n\n'], broken=False))
@example(Upstream([b"data: {}\n\n", b"data: [DONE]\n\n"], broken=True))
def test_the_relay_cuts_at_event_boundaries_keeps_bytes_and_ends_once(
    client: Any, upstream: Upstream
) -> None:
    sent = asyncio.run(client(upstream))
    try:
        _check(upstream, sent)
    except AssertionError as exc:
        raise AssertionError(f"{upstream}\n{sent}") from exc
