"""The HTTP server: uvicorn, configured in one place for ``serve``, the model relay's
socket and the tests alike.

uvicorn writes a response's status line and headers as soon as the app sends
``http.response.start``, and its first body bytes in a second write. When the app sends
both at once, as the relay does with a stream whose first event is in, that is a system
call and a wake-up of the client more than needed, on the way to its first byte.
:class:`HttpProtocol` holds a response's head back until the next write or the end of the
current turn of the event loop, whichever comes first, and sends them together. Nothing
waits past that turn, and the order of bytes never changes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# uvicorn writes every response head in one piece, starting with its status line.
_HEAD = b"HTTP/1.1 "


class _HeadHoldingTransport:
    """A transport that sends a response's head together with what is written next.

    Everything but ``write`` and ``close`` goes straight to the real transport.
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

    def _release(self) -> None:
        self._held = None
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, sending a response's head with its first body bytes."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_HeadHoldingTransport(transport, self.loop))  # type: ignore[arg-type]


def server_config(app: ASGIApp, **options: Any) -> uvicorn.Config:
    """A uvicorn configuration for ``app`` with the proxy's defaults; ``options`` are
    uvicorn's (``host``, ``port``, ``uds``, ``log_level``, …) and win over them."""
    defaults: dict[str, Any] = {
        # On llhttp (httptools), in C: h11, in Python, costs several times as much.
        "http": HttpProtocol,
        # Client addresses are the peer's: forwarded headers are not trusted.
        "proxy_headers": False,
        "server_header": False,
        # uvicorn's default is 5 s, the same as the idle expiry of httpx's pools (so of the
        # OpenAI SDKs): a request sent just as the server closes the idle connection fails
        # with a reset. Outlast clients' pools and load balancers (60 s) instead, so that
        # idle connections are closed by the client side.
        "timeout_keep_alive": 75,
    }
    return uvicorn.Config(app, **{**defaults, **options})
