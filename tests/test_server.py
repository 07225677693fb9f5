"""The HTTP server's protocol: a response's head goes out with its first body bytes, and
clients are held to the limits on what they send. Over raw sockets, against a real server."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import select
import socket
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from proxy.settings import Settings
from tests.support.live import serve
from tests.support.openapi import validate

REQUEST = b"GET / HTTP/1.1\r\nhost: test\r\n\r\n"


def _read_pieces(url: str, expected: bytes) -> list[bytes]:
    """What one request's answer arrives as, read by read, until ``expected`` is in.

    Each read returns what has arrived when it wakes: two writes in a row are most often
    two reads, one write is always one.
    """
    host, port = url.removeprefix("http://").split(":")
    pieces: list[bytes] = []
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(REQUEST)
        while expected not in b"".join(pieces):
            pieces.append(conn.recv(65536))
    return pieces


async def lifespan(receive: Receive, send: Send) -> None:
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


async def together(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"first", "more_body": True})
    await asyncio.sleep(0.3)
    await send({"type": "http.response.body", "body": b"second", "more_body": False})


async def apart(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await asyncio.sleep(0.3)
    await send({"type": "http.response.body", "body": b"late", "more_body": False})


def test_the_head_leaves_with_the_first_body_bytes() -> None:
    with serve(together) as url:
        pieces = _read_pieces(url, b"second")
    assert pieces[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert pieces[0].endswith(b"\r\n\r\n5\r\nfirst\r\n")  # head and first chunk, one read
    assert b"second" not in pieces[0]


def test_a_head_without_a_body_yet_is_not_held_back() -> None:
    with serve(apart) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as conn:
            conn.sendall(REQUEST)
            conn.settimeout(0.2)  # the body comes only after 0.3 s
            head = conn.recv(65536)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
            conn.settimeout(5)
            rest = b""
            while b"0\r\n\r\n" not in rest:
                rest += conn.recv(65536)
    assert rest == b"4\r\nlate\r\n0\r\n\r\n"


def test_a_client_gone_before_the_head_left_is_no_error(caplog: pytest.LogCaptureFixture) -> None:
    async def head_then_wait(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.3)

    with serve(head_then_wait) as url:
        host, port = url.removeprefix("http://").split(":")
        for _ in range(5):
            conn = socket.create_connection((host, int(port)), timeout=5)
            conn.sendall(REQUEST)
            conn.close()  # at times before the held head went out
        # The server still answers, and nothing failed on its loop.
        assert _read_pieces(url, b"\r\n\r\n")[0].startswith(b"HTTP/1.1 200")
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


# Limits on what clients send: small numbers, so that the tests need not wait long.
LIMITS = {
    "request_head_max_bytes": 8 * 1024,
    "request_head_max_headers": 20,
    "request_head_timeout": 0.5,
    "request_body_timeout": 0.5,
    "request_body_min_rate": 1000,
    "idle_connection_timeout": 0.5,
}
#: The longest any test waits for the server to act (a bound against hanging, not a measure).
PATIENCE = 30.0


async def echo_length(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the whole body (after ``x-delay`` seconds, if given) and answers its length."""
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    delay = dict(scope["headers"]).get(b"x-delay")
    if delay:
        await asyncio.sleep(float(delay))
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = str(size).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def long_stream(scope: Scope, receive: Receive, send: Send) -> None:
    """An event stream with a ping every 0.2 s for 2 s: far past every client timeout."""
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    headers = [(b"content-type", b"text/event-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for _ in range(10):
        await send({"type": "http.response.body", "body": b": ping\n\n", "more_body": True})
        await asyncio.sleep(0.2)
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


def _limited(app: Any) -> AbstractContextManager[str]:
    return serve(app, settings=Settings(**LIMITS))  # type: ignore[arg-type]


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=PATIENCE)


def _read_until_closed(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := conn.recv(65536):
        received += chunk
    return received


def _error(answer: bytes, status: int) -> dict[str, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    assert b"connection: close" in head.lower()
    error: dict[str, Any] = json.loads(body)
    validate("ErrorResponse", error)
    return error


def test_a_request_head_over_the_size_limit_is_431() -> None:
    with _limited(echo_length) as url:
        with _connect(url) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nhost: test\r\nx-big: " + b"a" * 9000 + b"\r\n\r\n")
            error = _error(_read_until_closed(conn), 431)
        assert error["error"]["code"] == "request_header_fields_too_large"
        # Just under the limit is served.
        with _connect(url) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nhost: test\r\nx-big: " + b"a" * 7000 + b"\r\n\r\n")
            assert conn.recv(65536).startswith(b"HTTP/1.1 200")


def test_a_header_that_never_ends_is_refused_before_it_is_all_in() -> None:
    with _limited(echo_length) as url, _connect(url) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nhost: test\r\nx-big: ")
        sent = 0
        # A 128 MiB header, until the server answers.
        while sent < 128 * 1024 * 1024 and not select.select([conn], [], [], 0)[0]:
            conn.sendall(b"a" * 65536)
            sent += 65536
        _error(_read_until_closed(conn), 431)
    assert sent < 128 * 1024 * 1024


def test_too_many_header_fields_is_431() -> None:
    def request(count: int) -> bytes:
        fields = b"".join(b"x-%d: 1\r\n" % i for i in range(count - 1))
        return b"GET / HTTP/1.1\r\nhost: test\r\n" + fields + b"\r\n"

    with _limited(echo_length) as url:
        with _connect(url) as conn:
            conn.sendall(request(21))
            assert "header fields" in _error(_read_until_closed(conn), 431)["error"]["message"]
        with _connect(url) as conn:
            conn.sendall(request(20))
            assert conn.recv(65536).startswith(b"HTTP/1.1 200")


def test_a_connection_that_sends_nothing_is_closed() -> None:
    with _limited(echo_length) as url, _connect(url) as conn:
        assert _read_until_closed(conn) == b""


def test_an_idle_keep_alive_connection_is_closed() -> None:
    with _limited(echo_length) as url, _connect(url) as conn:
        conn.sendall(REQUEST)
        answer = _read_until_closed(conn)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n1\r\n0\r\n0\r\n\r\n")


def test_a_partial_head_is_answered_408() -> None:
    with _limited(echo_length) as url, _connect(url) as conn:
        conn.sendall(b"POST / HTTP/1.1\r\nhost: test\r\n")
        assert _error(_read_until_closed(conn), 408)["error"]["code"] == "request_timeout"


def test_a_partial_body_is_answered_408() -> None:
    with _limited(echo_length) as url, _connect(url) as conn:
        conn.sendall(b"POST / HTTP/1.1\r\nhost: test\r\ncontent-length: 100\r\n\r\n0123456789")
        assert _error(_read_until_closed(conn), 408)["error"]["code"] == "request_timeout"


async def _slow_client(url: str, request: bytes) -> bool:
    """Send ``request`` a byte every 0.2 s; True once the server has closed the connection."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        for byte in itertools.cycle(request[i : i + 1] for i in range(len(request))):
            if reader.at_eof():
                return True
            try:
                writer.write(byte)
                await writer.drain()
                await asyncio.wait_for(reader.read(65536), 0.2)
            except TimeoutError:
                continue
            except ConnectionError:
                return True
        return False
    finally:
        writer.close()


@pytest.mark.anyio
async def test_slow_clients_are_dropped_and_others_still_served() -> None:
    head = b"GET / HTTP/1.1\r\nhost: test\r\nx-padding: " + b"a" * 1000 + b"\r\n\r\n"
    body = b"POST / HTTP/1.1\r\nhost: test\r\ncontent-length: 100000\r\n\r\n" + b"b" * 100000
    with _limited(echo_length) as url:
        async with asyncio.timeout(PATIENCE):
            clients = [_slow_client(url, head if i % 2 else body) for i in range(300)]
            dropped = await asyncio.gather(*clients)
            assert all(dropped)
        async with httpx.AsyncClient() as client:
            assert (await client.get(url)).status_code == 200


def test_long_streams_and_steady_uploads_are_not_cut() -> None:
    with _limited(long_stream) as url:
        with _connect(url) as conn:
            conn.sendall(REQUEST)
            answer = b""
            while b"[DONE]" not in answer:
                answer += conn.recv(65536)
        assert answer.count(b": ping") == 10
    with _limited(echo_length) as url:
        # 2 MiB in 64 KiB pieces, 0.1 s apart: slower in all than the body timeout, but
        # far above the minimum rate.
        def pieces() -> Iterator[bytes]:
            for _ in range(32):
                time.sleep(0.1)
                yield b"x" * 65536

        assert httpx.post(url, content=pieces()).text == str(2 * 1024 * 1024)
        # The server itself not reading for a while is not the client's fault.
        late = httpx.post(url, content=b"x" * 1024 * 1024, headers={"x-delay": "1.5"})
        assert late.text == str(1024 * 1024)
