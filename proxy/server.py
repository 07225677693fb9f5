"""The HTTP server: uvicorn, configured in one place for ``serve``, the model relay's
socket and the tests alike.

uvicorn writes a response's status line and headers as soon as the app sends
``http.response.start``, and its first body bytes in a second write. When the app sends
both at once, as the relay does with a stream whose first event is in, that is a system
call and a wake-up of the client more than needed, on the way to its first byte.
:class:`HttpProtocol` holds a response's head back until the next write or the end of the
current turn of the event loop, whichever comes first, and sends them together. Nothing
waits past that turn, and the order of bytes never changes.

It also holds clients to :class:`EdgeLimits`, which uvicorn's httptools protocol does not
(its ``h11_max_incomplete_event_size`` is for h11 only; ``limit_concurrency`` counts long
streams alike, so it is not used): a request head is refused with 431 past a size or a
number of headers; it must arrive within a time from the connection's opening or its first
byte (408); and a body must keep arriving at a minimum rate. Only the request side is timed:
a response, however long it streams, is not; and a keep-alive connection waits for its next
request for ``timeout_keep_alive``, as in uvicorn.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import httptools
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from proxy.errors import HeadersTooLarge, ProxyError, RequestTimeout
from proxy.settings import Settings

# uvicorn writes every response head in one piece, starting with its status line.
_HEAD = b"HTTP/1.1 "


class _HeadHoldingTransport:
    """A transport that sends a response's head together with what is written next.

    Everything but ``write``, ``write_eof`` and ``close`` goes straight to the real transport.
    """

    __slots__ = ("_flush", "_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._flush: asyncio.Handle | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._release()
            self._transport.writelines((held, data))
        elif data.startswith(_HEAD):
            self._held = data
            self._flush = self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """Send a held head now."""
        held = self._held
        if held is not None:
            self._release()
            if not self._transport.is_closing():  # the client may be gone already
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def _release(self) -> None:
        self._held = None
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


@dataclass(frozen=True)
class EdgeLimits:
    """What a client must keep to while it sends a request (see the module docstring)."""

    #: The request line and headers together, in bytes.
    max_head_bytes: int = 64 * 1024
    max_headers: int = 100
    #: From a connection's opening, or a later request's first byte, to its head's end.
    head_timeout: float = 10.0
    #: A body gets this long, plus a second for every ``body_min_rate`` bytes received
    #: (time the server itself stops reading does not count).
    body_timeout: float = 30.0
    body_min_rate: int = 500


#: How long a refused client may go on sending before its connection is closed.
LINGER_SECONDS = 2.0


class _HeadTooLarge(Exception):
    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, sending a response's head with its first body bytes,
    and holding clients to :class:`EdgeLimits`."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any):
        super().__init__(config, *args, **kwargs)
        self.limits = config.edge if isinstance(config, ServerConfig) else EdgeLimits()
        # The head being received: from the end of the last request (or the connection's
        # opening) to the end of the next one's headers.
        self._in_head = True
        self._head_bytes = 0
        self._head_size = 0
        self._header_count = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_body = False
        self._body_deadline = 0.0
        self._body_timer: asyncio.TimerHandle | None = None
        # Refused: what the client still sends is dropped until the connection closes.
        self._discarding = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_HeadHoldingTransport(transport, self.loop))  # type: ignore[arg-type]
        # A connection that never sends a request is closed too.
        self._head_timer = self.loop.call_later(self.limits.head_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._in_head = self._in_body = False
        self._stop_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        self._unset_keepalive_if_required()
        if self._in_head:
            self._head_bytes += len(data)
        elif self._in_body:
            self._body_deadline += len(data) / self.limits.body_min_rate
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._refuse(HeadersTooLarge(exc.__context__.what))
            else:
                self._send_400()
            return
        except httptools.HttpParserError:
            self._send_400()
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._in_head and self._head_bytes:
            if self._head_bytes > self.limits.max_head_bytes:
                self._refuse(self._too_large_head())
            elif self._head_timer is None:
                self._head_timer = self.loop.call_later(
                    self.limits.head_timeout, self._head_timed_out
                )
        elif self._in_body and self._body_timer is None:
            self._body_timer = self.loop.call_at(self._body_deadline, self._body_timed_out)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_size = self._header_count = 0

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            raise _HeadTooLarge(
                f"The request has more than {self.limits.max_headers} header fields."
            )
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._in_body = True
        self._body_deadline = self.loop.time() + self.limits.body_timeout
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._in_head = True
        self._head_bytes = 0
        super().on_message_complete()

    def _count_head(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self.limits.max_head_bytes:
            raise _HeadTooLarge(self._too_large_head().message)

    def _too_large_head(self) -> HeadersTooLarge:
        return HeadersTooLarge(
            f"The request head is larger than {self.limits.max_head_bytes} bytes."
        )

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if self._head_bytes and (self.cycle is None or self.cycle.response_complete):
            self._refuse(RequestTimeout("The request head did not arrive in time."))
        else:
            self.transport.close()  # nothing sent yet: an idle connection

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if not self._in_body or self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused or (
            self.cycle is not None and self.cycle.waiting_for_100_continue
        ):
            # The server is not reading (yet): the client cannot be blamed for waiting.
            self._body_deadline = max(self._body_deadline, now + self.limits.body_timeout)
        if now < self._body_deadline:
            self._body_timer = self.loop.call_at(self._body_deadline, self._body_timed_out)
            return
        if self.cycle is not None and not self.cycle.response_started:
            self._refuse(RequestTimeout("The request body did not arrive in time."))
        else:
            self.transport.close()

    def _refuse(self, error: ProxyError) -> None:
        """Answer ``error`` in place of the app and close the connection."""
        self._in_head = self._in_body = False
        self._stop_timers()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The app gets a disconnect; whatever it sends now goes nowhere.
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                self.transport.close()
                return
        body = json.dumps(error.body()).encode()
        head = [STATUS_LINE[error.status_code]]
        head.extend(f"{name}: {value}\r\n".encode() for name, value in error.headers().items())
        head.append(b"content-type: application/json\r\n")
        head.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        self.transport.write(b"".join([*head, body]))
        # Closing with the client's bytes unread would reset the connection, and a reset
        # can destroy the answer on the client's side before it is read. So: say so (FIN),
        # drop what still comes for a moment, then close.
        if not self.transport.can_write_eof():  # TLS: no half-close
            self.transport.close()
            return
        self._discarding = True
        self.flow.resume_reading()
        self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def _send_400(self) -> None:
        self._in_head = self._in_body = False
        self._stop_timers()
        msg = "Invalid HTTP request received."
        self.logger.warning(msg)
        self.send_400_response(msg)

    def _stop_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None


class ServerConfig(uvicorn.Config):
    """uvicorn's configuration plus the proxy's :class:`EdgeLimits`."""

    def __init__(self, app: ASGIApp, *, edge: EdgeLimits | None = None, **options: Any):
        super().__init__(app, **options)
        self.edge = edge or EdgeLimits()


def edge_options(settings: Settings) -> dict[str, Any]:
    """The :func:`server_config` options that hold clients to ``settings``."""
    return {
        "edge": EdgeLimits(
            max_head_bytes=settings.request_head_max_bytes,
            max_headers=settings.request_head_max_headers,
            head_timeout=settings.request_head_timeout,
            body_timeout=settings.request_body_timeout,
            body_min_rate=settings.request_body_min_rate,
        ),
        "timeout_keep_alive": settings.idle_connection_timeout,
    }


def server_config(app: ASGIApp, *, edge: EdgeLimits | None = None, **options: Any) -> ServerConfig:
    """A uvicorn configuration for ``app`` with the proxy's defaults; ``options`` are
    uvicorn's (``host``, ``port``, ``uds``, ``log_level``, ``timeout_keep_alive``, …) and
    win over them. ``edge`` limits what clients may send (default :class:`EdgeLimits`)."""
    defaults: dict[str, Any] = {
        # On llhttp (httptools), in C: h11, in Python, costs several times as much.
        "http": HttpProtocol,
        # Client addresses are the peer's: forwarded headers are not trusted.
        "proxy_headers": False,
        "server_header": False,
        # uvicorn's default is 5 s, the same as the idle expiry of httpx's pools (so of the
        # OpenAI SDKs): a request sent just as the server closes the idle connection fails
        # with a reset. Outlast clients' pools and load balancers (60 s) instead, so that
        # idle connections are closed by the client side (the idle_connection_timeout setting).
        "timeout_keep_alive": 75,
    }
    return ServerConfig(app, edge=edge, **{**defaults, **options})
