"""A small streaming HTTP/1.1 client for the relay's hot path, built on httptools.

httpx parses responses with h11, in Python, one event per chunk of the body, and hands
each through several layers of async generators: for a model's stream of small chunks that
is most of what relaying it costs. This client parses with httptools (llhttp, in C) from an
asyncio protocol, gives the reader everything that has arrived in one piece, and keeps its
connections alive for the next request.

It does what the relay needs and no more: one request with its whole body, over plain TCP
or TLS (an :class:`ssl.SSLContext`); keep-alive with an idle expiry; gzip and deflate bodies
decoded; timeouts for connecting and for every wait for data. No proxies, redirects, HTTP/2,
cookies or streamed request bodies: :class:`~proxy.relay.upstream.Upstreams` uses httpx when
those are needed. It runs on asyncio (uvloop included), not trio.

Errors, drawn as a tree::

    HTTPError                 the request failed
    ├── ConnectError          no connection: refused, unresolvable, TLS handshake failed
    │   └── ConnectTimeout    … within ``connect_timeout``
    ├── TransferTimeout       no progress for ``read_timeout`` while writing or reading
    ├── ReadError             the connection broke or closed before the response was complete
    └── RemoteProtocolError   the answer is not HTTP/1.1 this client understands
"""

from __future__ import annotations

import asyncio
import select
import ssl
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import anyio
import httptools
import httpx

# Above this many unread body bytes the connection stops reading, so that a slow reader
# pushes back on the upstream instead of growing the buffer.
READ_HIGH_WATER = 1024 * 1024


class HTTPError(Exception):
    """The request failed; see the module docstring for the kinds."""


class ConnectError(HTTPError):
    pass


class ConnectTimeout(ConnectError):
    pass


class TransferTimeout(HTTPError):
    pass


class ReadError(HTTPError):
    pass


class RemoteProtocolError(HTTPError):
    pass


Origin = tuple[str, str, int]


class ConnectionPool:
    """Connections to any number of origins, reused most-recently-idle first.

    ``keepalive_expiry`` is how long an idle connection is kept; keep it below the idle
    timeout of the servers it talks to, or a request may race their closing it.
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        connect_timeout: float,
        read_timeout: float,
        keepalive_expiry: float,
        max_idle_per_origin: int = 256,
        user_agent: str = "jetty-proxy",
    ):
        self._ssl_context = ssl_context
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._keepalive_expiry = keepalive_expiry
        self._max_idle = max_idle_per_origin
        self._user_agent = user_agent.encode()
        self._idle: dict[Origin, list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._closed = False
        # What _split makes of each URL: a few base URLs and paths, asked for every request.
        self._targets: dict[str, tuple[Origin, bytes, bytes]] = {}

    async def request(
        self, method: str, url: str, headers: Sequence[tuple[str, str]], content: bytes
    ) -> Response:
        """Send a request and return once the response's status and headers are in.

        The body is left to read from the returned :class:`Response`, which the caller
        must ``aclose()``.
        """
        return await self.begin(method, url, headers, content).response()

    def begin(
        self, method: str, url: str, headers: Sequence[tuple[str, str]], content: bytes
    ) -> Exchange:
        """Start a request: on an idle connection it is written before this returns, so
        that the upstream works on it while the caller gets ready for the answer. Await
        :meth:`Exchange.response` next (or :meth:`Exchange.abandon` it)."""
        return self.begin_to(self.target(method, url, headers), content)

    def target(self, method: str, url: str, headers: Sequence[tuple[str, str]]) -> Target:
        """Where and how to send requests that differ only in their body: worth keeping
        when many do (see :meth:`begin_to`)."""
        split = self._targets.get(url)
        if split is None:
            if len(self._targets) >= 1024:
                self._targets.clear()
            split = self._targets[url] = _split(url)
        origin, authority, target = split
        head = [b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (method.encode(), target, authority)]
        head.append(
            b"accept: */*\r\naccept-encoding: identity\r\nuser-agent: %s\r\n" % self._user_agent
        )
        head += [b"%s: %s\r\n" % (_header(name), _header(value)) for name, value in headers]
        return Target(origin, b"".join(head))

    def begin_to(self, target: Target, content: bytes) -> Exchange:
        """:meth:`begin` a request to a :meth:`target` with ``content`` as its body."""
        head = b"%scontent-length: %d\r\n\r\n" % (target.head, len(content))
        exchange = Exchange(self, target.origin, head, content)
        idle = self._idle.get(target.origin)
        while idle:
            connection = idle.pop()
            if connection.reuse():
                exchange.start(connection)
                break
        return exchange

    async def aclose(self) -> None:
        """Close every connection, idle or in use, their sockets closed on return."""
        self._closed = True
        for connection in list(self._open):
            connection.close()
        self._idle.clear()
        # A transport closes its socket in a callback of the loop's next turn: let it run
        # (a loop that stops first leaves the sockets to the garbage collector).
        await asyncio.sleep(0)

    async def _connect(self, origin: Origin) -> _Connection:
        if self._closed:
            raise ConnectError("the connection pool is closed")
        scheme, host, port = origin
        tls = scheme == "https"
        loop = asyncio.get_running_loop()
        try:
            with anyio.fail_after(self._connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(self, origin, self._read_timeout),
                    host,
                    port,
                    ssl=self._ssl_context if tls else None,
                    server_hostname=host if tls else None,
                )
        except TimeoutError as exc:
            raise ConnectTimeout(f"connecting to {host}:{port} timed out") from exc
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        self._open.add(protocol)
        return protocol

    def _release(self, connection: _Connection) -> None:
        """Take back a connection whose response was read to the end."""
        idle = self._idle.setdefault(connection.origin, [])
        if self._closed or len(idle) >= self._max_idle:
            connection.close()
            return
        connection.park(self._keepalive_expiry)
        idle.append(connection)

    def _forget(self, connection: _Connection) -> None:
        self._open.discard(connection)
        idle = self._idle.get(connection.origin)
        if idle and connection in idle:
            idle.remove(connection)


@dataclass(frozen=True, slots=True)
class Target:
    """An origin, and the head of a request to it up to its ``content-length``."""

    origin: Origin
    head: bytes


class Exchange:
    """One request on its way: written on a connection already, or once one is open."""

    def __init__(self, pool: ConnectionPool, origin: Origin, head: bytes, content: bytes):
        self._pool = pool
        self._origin = origin
        self._head = head
        self._content = content
        self._connection: _Connection | None = None
        self._done = False

    def start(self, connection: _Connection) -> None:
        self._connection = connection
        connection.start(self._head, self._content)

    async def response(self) -> Response:
        """The response, once its status and headers are in (see :meth:`ConnectionPool.request`)."""
        self._done = True
        connection = self._connection
        try:
            if connection is None:
                connection = self._connection = await self._pool._connect(self._origin)
                connection.start(self._head, self._content)
            return await connection.response()
        except BaseException:
            if connection is not None:
                connection.close()
            raise

    def abandon(self) -> None:
        """Give up a request whose response was never asked for: its connection is closed."""
        if not self._done:
            self._done = True
            if self._connection is not None:
                self._connection.close()


class Response:
    """A response whose status and headers are in; the body may still be arriving.

    ``raw_headers`` are the headers as received; :attr:`headers` makes them httpx's
    :class:`httpx.Headers` when first asked.
    """

    def __init__(
        self,
        connection: _Connection,
        status_code: int,
        raw_headers: list[tuple[bytes, bytes]],
        content_encoding: str,
    ):
        self.status_code = status_code
        self.raw_headers = raw_headers
        self._headers: httpx.Headers | None = None
        self._connection = connection
        self._decoder = _decoder(content_encoding)
        self._closed = False

    @property
    def headers(self) -> httpx.Headers:
        if self._headers is None:
            self._headers = httpx.Headers(self.raw_headers)
        return self._headers

    @property
    def complete(self) -> bool:
        """Whether the body has been received and handed out to its end."""
        connection = self._connection
        return connection.message_complete and not connection.has_body and self._decoder is None

    async def receive(self) -> bytes:
        """The next piece of the body, all that arrived since the last call; ``b""`` at the end."""
        if self._closed:
            return b""  # the connection may be serving another request by now
        connection = self._connection
        while True:
            data = connection.take_body()
            if data:
                if self._decoder is None:
                    return data
                if data := self._decoder.decompress(data):
                    return data
            elif connection.message_complete:
                rest = self._decoder.flush() if self._decoder is not None else b""
                self._decoder = None
                return rest
            else:
                await connection.wait()

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body as it arrives, in the pieces :meth:`receive` returns."""
        while piece := await self.receive():
            yield piece

    async def aread(self) -> bytes:
        pieces = []
        while piece := await self.receive():
            pieces.append(piece)
        return b"".join(pieces)

    async def aclose(self) -> None:
        """Hand the connection back for reuse when the body was read to its end, else close it."""
        if self._closed:
            return
        self._closed = True
        self._connection.finish()


class _Connection(asyncio.Protocol):
    """One connection: the parser's callbacks fill in the response being received."""

    def __init__(self, pool: ConnectionPool, origin: Origin, read_timeout: float):
        self.origin = origin
        self._pool = pool
        self._read_timeout = read_timeout
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._waiter: asyncio.Future[None] | None = None
        # One timer watches for silence, re-armed when it fires rather than for every wait.
        self._silence_timer: asyncio.TimerHandle | None = None
        self._progress = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._write_paused = False
        self._read_paused = False
        self._lost = False
        self._fd = -1
        self._error: HTTPError | None = None
        self._body: list[bytes] = []
        # The parser calls this once per chunk of the body: a bare list.append, no Python frame.
        self.on_body: Callable[[bytes], None] = self._body.append
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._content_encoding = "identity"
        self._headers_complete = False
        self.message_complete = False
        self._keep_alive = False
        self._until_eof = False
        self._body.clear()
        self._buffered = 0

    # -- the pool's side

    def reuse(self) -> bool:
        """Whether this idle connection can take a request (else it is closed)."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if (
            self._lost
            or self._transport is None
            or self._transport.is_closing()
            # Whatever an idle connection has to read (the server's close, most likely)
            # has not reached this protocol yet: do not send a request into it.
            or (self._fd >= 0 and _readable(self._fd))
        ):
            self.close()
            return False
        return True

    def park(self, expiry: float) -> None:
        self._parser = None
        self._idle_timer = self._loop.call_later(expiry, self.close)

    def close(self) -> None:
        self._stop_silence_timer()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        self._lost = True
        self._pool._forget(self)

    def finish(self) -> None:
        """The response is done with: reuse the connection if that is safe, else close it."""
        if (
            self.message_complete
            and self._keep_alive
            and not self._until_eof
            and not self._lost
            and self._error is None
        ):
            self._stop_silence_timer()
            self._reset()
            self._pool._release(self)
        else:
            self.close()

    def start(self, head: bytes, content: bytes) -> None:
        """Write a request; :meth:`response` waits for the answer."""
        transport = self._transport
        assert transport is not None
        self._reset()
        self._error = None
        self._parser = httptools.HttpResponseParser(self)
        if len(content) < 65536:
            transport.write(head + content)
        else:
            transport.write(head)
            transport.write(content)

    async def response(self) -> Response:
        await self._drain()
        while not self._headers_complete:
            await self.wait()
        return Response(self, self._status, self._raw_headers, self._content_encoding)

    # -- the reader's side

    @property
    def has_body(self) -> bool:
        return bool(self._body)

    def take_body(self) -> bytes:
        body = self._body
        if not body:
            return b""
        data = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        self._buffered = 0
        if self._read_paused and self._transport is not None:
            self._read_paused = False
            self._transport.resume_reading()
        return data

    async def wait(self) -> None:
        """Wait for more of the response; raise when the connection failed, or when it
        made no progress for ``read_timeout`` seconds of waiting."""
        if self._error is not None:
            raise self._error
        now = self._loop.time()
        self._progress = max(self._progress, now)
        if self._silence_timer is None:
            self._silence_timer = self._loop.call_at(
                self._progress + self._read_timeout, self._check_silence
            )
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None
        if self._error is not None and not self._body:
            raise self._error

    def _check_silence(self) -> None:
        self._silence_timer = None
        if self._waiter is None:
            return  # nobody is waiting: the next wait arms the timer again
        deadline = self._progress + self._read_timeout
        if self._loop.time() < deadline:
            self._silence_timer = self._loop.call_at(deadline, self._check_silence)
        else:
            self._fail(TransferTimeout(f"no progress in {self._read_timeout:g} s"))

    def _stop_silence_timer(self) -> None:
        if self._silence_timer is not None:
            self._silence_timer.cancel()
            self._silence_timer = None

    async def _drain(self) -> None:
        # An early answer (a 413, say) ends the wait as well as the write buffer emptying.
        while self._write_paused and not self._headers_complete:
            await self.wait()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: HTTPError) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        self._fd = sock.fileno() if sock is not None else -1

    def data_received(self, data: bytes) -> None:
        self._progress = self._loop.time()
        parser = self._parser
        if parser is None:
            # Nothing was asked: a server that speaks now cannot be trusted with a request.
            self.close()
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(RemoteProtocolError("the upstream switched protocols"))
            self.close()
        except httptools.HttpParserError as exc:
            self._fail(RemoteProtocolError(f"malformed HTTP response: {exc}"))
            self.close()
        if self._body:
            # Counted as received, framing included: close enough for flow control.
            self._buffered += len(data)
            if self._buffered > READ_HIGH_WATER and not self._read_paused:
                self._read_paused = True
                cast(asyncio.Transport, self._transport).pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._parser is not None and not self.message_complete:
            if self._headers_complete and self._until_eof and exc is None:
                self.message_complete = True
            elif self._headers_complete:
                self._fail(ReadError("the upstream closed the connection mid-response"))
            else:
                self._fail(ReadError("the upstream closed the connection without a response"))
        self._pool._forget(self)
        self._wake()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._progress = self._loop.time()
        self._wake()

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        if self.message_complete:
            raise RemoteProtocolError("the upstream sent a second response to one request")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # An interim response (100 Continue, 103 Early Hints): the real one follows.
            self._raw_headers = []
            return
        self._status = status
        self._headers_complete = True
        # Without a length or chunked framing, the body ends when the connection does.
        framed = status in (204, 304)
        encodings = []
        for name, value in self._raw_headers:
            name = name.lower()
            if name == b"content-length" or (
                name == b"transfer-encoding" and b"chunked" in value.lower()
            ):
                framed = True
            elif name == b"content-encoding":
                encodings.append(value.decode("latin-1"))
        self._until_eof = not framed
        if encodings:
            # As httpx.Headers.get would have it: repeated headers joined.
            self._content_encoding = ", ".join(encodings)

    def on_message_complete(self) -> None:
        if self._headers_complete:
            self.message_complete = True
            # Asked now: once the callback returns, the parser has moved on to the next message.
            assert self._parser is not None
            self._keep_alive = self._parser.should_keep_alive()


def _split(url: str) -> tuple[Origin, bytes, bytes]:
    """The origin, the ``Host`` header's value and the request target of ``url``."""
    parts = urlsplit(url)
    scheme = parts.scheme
    host = parts.hostname
    if scheme not in ("http", "https") or not host:
        raise ValueError(f"not an http:// or https:// URL: {url}")
    default = 443 if scheme == "https" else 80
    port = parts.port or default
    literal = f"[{host}]" if ":" in host else host
    authority = literal if port == default else f"{literal}:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (scheme, host, port), authority.encode("idna"), target.encode()


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _header(text: str) -> bytes:
    if "\r" in text or "\n" in text:
        raise ValueError("a header name or value holds a line break")
    return text.encode("latin-1")


def _decoder(encoding: str) -> zlib._Decompress | None:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding == "gzip":
        return zlib.decompressobj(zlib.MAX_WBITS | 16)
    if encoding == "deflate":
        return zlib.decompressobj()
    raise RemoteProtocolError(f"unsupported content-encoding {encoding!r}")
