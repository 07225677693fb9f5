"""The HTTP server's protocol: a response's head goes out with its first body bytes."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from starlette.types import Receive, Scope, Send

from tests.support.live import serve

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
