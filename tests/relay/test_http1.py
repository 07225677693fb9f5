"""The relay's HTTP/1.1 client against hand-written servers on real sockets."""

from __future__ import annotations

import asyncio
import gzip
import ssl
from pathlib import Path

import pytest

from proxy.relay import http1
from tests.support.raw_http import CHUNKED, Seen, chunk, self_signed, serving

pytestmark = pytest.mark.anyio


def pool(*, read_timeout: float = 5, keepalive_expiry: float = 5) -> http1.ConnectionPool:
    return http1.ConnectionPool(
        ssl_context=ssl.create_default_context(),
        connect_timeout=5,
        read_timeout=read_timeout,
        keepalive_expiry=keepalive_expiry,
    )


async def chunked_events(writer: asyncio.StreamWriter, seen: Seen, index: int) -> bool:
    """Three SSE events, each its own chunk, flushed one at a time."""
    writer.write(CHUNKED)
    for n in range(3):
        writer.write(chunk(b"data: %d\n\n" % n))
        await writer.drain()
        await asyncio.sleep(0.01)
    writer.write(b"0\r\n\r\n")
    return True


async def test_a_chunked_stream_arrives_in_pieces_and_the_connection_is_reused() -> None:
    async with serving(chunked_events) as (server, url):
        client = pool()
        for _ in range(2):
            response = await client.request(
                "POST", url + "/v1/chat/completions", [("authorization", "Bearer k")], b"{}"
            )
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream"
            pieces = []
            while piece := await response.receive():
                pieces.append(piece)
            assert b"".join(pieces) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
            assert len(pieces) > 1
            assert response.complete
            await response.aclose()
        await client.aclose()
    assert server.connections == 1
    head = server.seen[0].head.decode()
    assert head.startswith("POST /v1/chat/completions HTTP/1.1\r\n")
    lines = head.lower().split("\r\n")
    assert f"host: {url.removeprefix('http://')}" in lines
    assert "authorization: bearer k" in lines and "content-length: 2" in lines
    assert "accept-encoding: identity" in lines
    assert server.seen[0].body == b"{}"


async def test_what_arrived_together_comes_out_together() -> None:
    async def burst(writer: asyncio.StreamWriter, seen: Seen, index: int) -> bool:
        writer.write(
            CHUNKED + b"".join(chunk(b"data: %d\n\n" % n) for n in range(50)) + b"0\r\n\r\n"
        )
        return True

    async with serving(burst) as (_, url):
        client = pool()
        response = await client.request("POST", url + "/", [], b"")
        body = await response.aread()
        assert body.count(b"data: ") == 50
        await response.aclose()
        await client.aclose()


async def test_a_content_length_body_and_an_interim_response() -> None:
    async def plain(writer: asyncio.StreamWriter, seen: Seen, index: int) -> bool:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(
            b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 5\r\nretry-after: 3\r\n\r\nslow!"
        )
        return True

    async with serving(plain) as (server, url):
        client = pool()
        for _ in range(2):
            response = await client.request("POST", url + "/", [], b"x")
            assert response.status_code == 429
            assert response.headers["retry-after"] == "3"
            assert await response.aread() == b"slow!"
            await response.aclose()
        await client.aclose()
    assert server.connections == 1


async def test_a_body_that_ends_with_the_connection() -> None:
    async def until_close(writer: asyncio.StreamWriter, seen: Seen, index: int) -> bool:
        writer.write(b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{"ok": true}')
        return False

    async with serving(until_close) as (server, url):
        client = pool()
        for _ in range(2):
            response = await client.request("POST", url + "/", [], b"")
            assert await response.aread() == b'{"ok": true}'
            await response.aclose()
        await client.aclose()
    assert server.connections == 2


async def test_gzip_is_decoded() -> None:
    payload = b"data: " + b"x" * 5000 + b"\n\n"

    async def zipped(writer: asyncio.StreamWriter, seen: Seen, index: int) -> bool:
        body = gzip.compress(payload)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n" % len(body)
        )
        writer.write(body)
        return True

    async with serving(zipped) as (_, url):
        client = pool()
        response = await client.request("POST", url + "/", [], b"")
        assert await response.aread() == payload
        await response.aclose()
        await client.aclose()


async def test_closing_early_drops_the_connection() -> None:
    async with serving(chunked_events) as (server, url):
        client = pool()
        response = await client.request("POST", url + "/", [], b"")
        assert await response.receive()
        await response.aclose()
        response = await client.request("POST", url + "/", [], b"")
        assert (await response.aread()).count(b"data:") == 3
        await response.aclose()
        await client.aclose()
    assert server.connections == 2


async def test_idle_connections_expire_and_server_closes_are_noticed() -> None:
    async def answer(writer: asyncio.StreamWriter, seen: Seen, index: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        # After the second answer the server closes, as one does whose idle timeout is up.
        return index != 1

    async with serving(answer) as (server, url):
        client = pool(keepalive_expiry=0.05)

        async def call() -> None:
            response = await client.request("POST", url + "/", [], b"")
            assert await response.aread() == b"ok"
            await response.aclose()

        await call()
        await asyncio.sleep(0.2)  # longer than the expiry: the pool lets it go
        assert server.connections == 1
        await call()
        while server.closed < 2:
            await asyncio.sleep(0.001)
        # Straight away: the close has reached the socket but not yet the connection.
        await call()  # on a new connection, not the one the server closed
        await client.aclose()
    assert server.connections == 3


async def test_failures_are_this_modules_errors() -> None:
    async def misbehave(writer: asyncio.StreamWriter, seen: Seen, index: int) -> bool:
        body = seen.body
        if body == b"silent":
            await asyncio.sleep(1)
        elif body == b"garbage":
            writer.write(b"SMTP ready\r\n\r\n")
        elif body == b"cut":
            writer.write(CHUNKED + chunk(b"data: 1\n\n"))
        return False

    async with serving(misbehave) as (_, url):
        client = pool(read_timeout=0.2)
        with pytest.raises(http1.TransferTimeout):
            await client.request("POST", url + "/", [], b"silent")
        with pytest.raises(http1.RemoteProtocolError):
            await client.request("POST", url + "/", [], b"garbage")
        with pytest.raises(http1.ReadError, match="without a response"):
            await client.request("POST", url + "/", [], b"nothing")
        response = await client.request("POST", url + "/", [], b"cut")
        assert await response.receive() == b"data: 1\n\n"
        with pytest.raises(http1.ReadError, match="mid-response"):
            await response.receive()
        await response.aclose()
        await client.aclose()

    with pytest.raises(http1.ConnectError):
        await pool().request("POST", url + "/", [], b"")
    with pytest.raises(ValueError, match="line break"):
        await pool().request("POST", url + "/", [("x-evil", "a\r\nhost: b")], b"")


async def test_a_slow_reader_gets_a_large_body_whole() -> None:
    piece = b"data: " + b"y" * 60_000 + b"\n\n"

    async def large(writer: asyncio.StreamWriter, seen: Seen, index: int) -> bool:
        writer.write(CHUNKED)
        for _ in range(60):
            writer.write(chunk(piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        return True

    async with serving(large) as (_, url):
        client = pool()
        response = await client.request("POST", url + "/", [], b"")
        received = 0
        while data := await response.receive():
            received += len(data)
            await asyncio.sleep(0.001)
        assert received == 60 * len(piece)
        await response.aclose()
        await client.aclose()


async def test_tls_with_the_given_trust(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    async with serving(chunked_events, tls=server_side) as (server, url):
        trusting = http1.ConnectionPool(
            ssl_context=ssl.create_default_context(cafile=str(cert)),
            connect_timeout=5,
            read_timeout=5,
            keepalive_expiry=5,
        )
        for _ in range(2):
            response = await trusting.request("POST", url + "/", [], b"")
            assert (await response.aread()).count(b"data:") == 3
            await response.aclose()
        await trusting.aclose()
        assert server.connections == 1

        with pytest.raises(http1.ConnectError):
            await pool().request("POST", url + "/", [], b"")


async def test_begin_writes_on_an_idle_connection_before_the_answer_is_awaited() -> None:
    async def quick(writer: asyncio.StreamWriter, seen: Seen, index: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        return True

    async with serving(quick) as (server, url):
        client = pool()
        first = await client.request("POST", url + "/", [], b"one")
        assert await first.aread() == b"ok"
        await first.aclose()
        # The idle connection takes the next request at once: the server has it before
        # anyone waits for the answer.
        exchange = client.begin("POST", url + "/", [], b"two")
        for _ in range(100):
            if len(server.seen) == 2:
                break
            await asyncio.sleep(0.01)
        assert [seen.body for seen in server.seen] == [b"one", b"two"]
        second = await exchange.response()
        assert await second.aread() == b"ok"
        await second.aclose()
        await client.aclose()
    assert server.connections == 1


async def test_an_abandoned_exchange_closes_its_connection() -> None:
    async def quick(writer: asyncio.StreamWriter, seen: Seen, index: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        return True

    async with serving(quick) as (server, url):
        client = pool()
        # Without an idle connection nothing is sent until the answer is asked for.
        client.begin("POST", url + "/", [], b"never").abandon()
        await asyncio.sleep(0.05)
        assert server.connections == 0
        first = await client.request("POST", url + "/", [], b"one")
        await first.aread()
        await first.aclose()
        sent = client.begin("POST", url + "/", [], b"two")
        sent.abandon()
        sent.abandon()  # once is enough; twice is harmless
        for _ in range(100):
            if server.closed == 1:
                break
            await asyncio.sleep(0.01)
        assert server.closed == 1  # not reused: its answer was never read
        third = await client.request("POST", url + "/", [], b"three")
        assert await third.aread() == b"ok"
        await third.aclose()
        await client.aclose()
    assert server.connections == 2


async def test_closing_the_pool_closes_its_sockets_before_it_returns() -> None:
    async with serving(chunked_events) as (_, url):
        client = pool()
        busy = await client.request("POST", url + "/a", [], b"{}")  # in use
        idle = await client.request("POST", url + "/b", [], b"{}")  # a second connection
        while await idle.receive():
            pass
        await idle.aclose()  # back in the pool, idle
        transports = [c._transport for c in client._open]
        sockets = [t.get_extra_info("socket") for t in transports if t is not None]
        assert len(sockets) == 2 and all(s.fileno() >= 0 for s in sockets)
        await client.aclose()
        assert [s.fileno() for s in sockets] == [-1, -1]
        await busy.aclose()
