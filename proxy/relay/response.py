"""ASGI responses that relay an upstream answer byte for byte.

Why not ``StreamingResponse``/``EventSourceResponse``: the status line must wait
for the upstream's (so a 429 stays a 429), yet keepalive comments must start
before the upstream's first byte; and SSE blocks are passed through as the
upstream wrote them, never re-serialised. Both responses watch for the client
going away and then cancel the upstream request at once.

Provider specifics (how a stream ends, the shape of error bodies) come from a
:class:`Dialect`; OpenAI's is the default.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import anyio
from anyio.abc import TaskGroup
from starlette.types import Receive, Scope, Send

from proxy.errors import ProxyError
from proxy.relay.upstream import UpstreamResponse

logger = logging.getLogger("proxy.relay")

PING = b": ping\n\n"
DONE = b"data: [DONE]\n\n"
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
]

OpenUpstream = Callable[[], Awaitable[UpstreamResponse]]


class Dialect(Protocol):
    """What differs between providers' wire formats, as far as relaying goes."""

    def is_end(self, block: bytes) -> bool:
        """Whether ``block`` (one or more complete SSE events) holds the stream's last event."""
        ...

    def error_body(self, exc: ProxyError) -> dict[str, Any]:
        """The JSON error body for ``exc`` in the provider's shape."""
        ...

    def in_band_error(self, body: dict[str, Any]) -> bytes:
        """The final bytes that report an error once a stream has started."""
        ...


class OpenAIDialect:
    """Chat Completions: streams end with ``data: [DONE]``; errors are ``{"error": {...}}``."""

    def is_end(self, block: bytes) -> bool:
        return b"[DONE]" in block

    def error_body(self, exc: ProxyError) -> dict[str, Any]:
        return exc.body()

    def in_band_error(self, body: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(body).encode() + b"\n\n" + DONE


OPENAI = OpenAIDialect()


class StreamIncomplete(ProxyError):
    """The upstream closed a stream before its last event."""

    status_code = 502
    error_type = "upstream_error"


@dataclass
class RelayOutcome:
    """What happened, for metrics and the trajectory record."""

    status: Literal["completed", "failed", "cancelled"] = "cancelled"
    status_code: int | None = None
    error: str | None = None
    first_byte_seconds: float | None = None
    duration_seconds: float = 0.0
    # The last bytes of the body: enough to find the usage chunk and finish reason.
    tail: bytes = b""
    head: bytes = b""
    extra: dict[str, str] = field(default_factory=dict)


OnFinish = Callable[[RelayOutcome], Awaitable[None]]
OnBlock = Callable[[bytes], None]


class _Relay:
    """Shared plumbing: the disconnect watcher and the outcome callback."""

    def __init__(
        self, open_upstream: OpenUpstream, on_finish: OnFinish | None, dialect: Dialect = OPENAI
    ):
        self._open_upstream = open_upstream
        self._on_finish = on_finish
        self._dialect = dialect
        self.outcome = RelayOutcome()
        self._started_at = time.perf_counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_disconnect, receive, tg)
                try:
                    await self._relay(send, tg)
                except OSError:
                    # The client's socket went away mid-send.
                    self.outcome.status = "cancelled"
                tg.cancel_scope.cancel()
        finally:
            self.outcome.duration_seconds = time.perf_counter() - self._started_at
            if self._on_finish is not None:
                with anyio.CancelScope(shield=True):
                    try:
                        await self._on_finish(self.outcome)
                    except Exception:
                        logger.exception("recording a relayed completion failed")

    async def _watch_disconnect(self, receive: Receive, tg: TaskGroup) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                # The status stays as it is: "cancelled" unless the relay had already finished
                # (servers report a disconnect once a response is complete, too).
                tg.cancel_scope.cancel()
                return

    async def _relay(self, send: Send, tg: TaskGroup) -> None:
        raise NotImplementedError

    def _mark_first_byte(self) -> None:
        if self.outcome.first_byte_seconds is None:
            self.outcome.first_byte_seconds = time.perf_counter() - self._started_at


async def _send_json(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class RelayJSONResponse(_Relay):
    """Non-streaming: the upstream's JSON body with the upstream's status.

    ``outcome.head`` holds the whole body when ``on_finish`` runs.
    """

    async def _relay(self, send: Send, tg: TaskGroup) -> None:
        try:
            upstream = await self._open_upstream()
        except ProxyError as exc:
            await self._fail(send, exc)
            return
        try:
            body = await upstream.read()
        except ProxyError as exc:
            await self._fail(send, exc)
            return
        finally:
            with anyio.CancelScope(shield=True):
                await upstream.aclose()
        self._mark_first_byte()
        self.outcome.status, self.outcome.status_code = "completed", upstream.status_code
        self.outcome.head = body
        await _send_json(send, upstream.status_code, body, upstream.headers)

    async def _fail(self, send: Send, exc: ProxyError) -> None:
        self.outcome.status, self.outcome.status_code = "failed", exc.status_code
        self.outcome.error = exc.message
        body = json.dumps(self._dialect.error_body(exc)).encode()
        await _send_json(send, exc.status_code, body, exc.headers())


class RelayStreamResponse(_Relay):
    """Streaming: SSE blocks relayed as they arrive, ``: ping`` comments while idle.

    Until the stream has started, an upstream error keeps its own status; after
    that it goes in-band (for OpenAI ``data: {"error": …}`` followed by ``data: [DONE]``).
    ``on_block`` sees every block of upstream events as it is relayed, e.g. to read usage.
    """

    def __init__(
        self,
        open_upstream: OpenUpstream,
        keepalive: float,
        on_finish: OnFinish | None,
        dialect: Dialect = OPENAI,
        on_block: OnBlock | None = None,
    ):
        super().__init__(open_upstream, on_finish, dialect)
        self._on_block = on_block
        self._keepalive = keepalive
        self._started = False
        self._finished = False
        self._last_sent = time.monotonic()

    async def _relay(self, send: Send, tg: TaskGroup) -> None:
        tg.start_soon(self._ping_while_idle, send)
        try:
            upstream = await self._open_upstream()
        except ProxyError as exc:
            await self._fail(send, exc.status_code, self._dialect.error_body(exc), exc.headers())
            return
        try:
            await self._start(send, upstream.headers)
            await self._pump(send, upstream)
        finally:
            with anyio.CancelScope(shield=True):
                await upstream.aclose()

    async def _pump(self, send: Send, upstream: UpstreamResponse) -> None:
        pending = b""
        saw_done = False
        try:
            async for piece in upstream.aiter_bytes():
                pending += piece
                cut = _last_boundary(pending)
                if cut:
                    block, pending = pending[:cut], pending[cut:]
                    saw_done = saw_done or self._dialect.is_end(block)
                    await self._send_block(send, block)
        except ProxyError as exc:
            await self._fail(send, exc.status_code, self._dialect.error_body(exc), {})
            return
        if pending.strip():
            # Forward a final event the upstream did not terminate.
            block = pending.rstrip(b"\r\n") + b"\n\n"
            saw_done = saw_done or self._dialect.is_end(block)
            await self._send_block(send, block)
        if not saw_done:
            incomplete = StreamIncomplete("The upstream closed the stream before it was complete.")
            await self._fail(send, 502, self._dialect.error_body(incomplete), {})
            return
        self.outcome.status = "completed"
        self._finished = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send_block(self, send: Send, block: bytes) -> None:
        if self.outcome.first_byte_seconds is None:
            self._mark_first_byte()
            self.outcome.head = block[:4096]
        self.outcome.tail = (self.outcome.tail + block)[-8192:]
        if self._on_block is not None:
            self._on_block(block)
        self._last_sent = time.monotonic()
        await send({"type": "http.response.body", "body": block, "more_body": True})

    async def _start(self, send: Send, headers: dict[str, str]) -> None:
        if self._started:
            return
        self._started = True
        self.outcome.status_code = 200
        raw = _SSE_HEADERS + [(k.encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": raw})

    async def _fail(
        self, send: Send, status: int, body: dict[str, object], headers: dict[str, str]
    ) -> None:
        error = body.get("error")
        self.outcome.status = "failed"
        self.outcome.error = str(error.get("message")) if isinstance(error, dict) else str(body)
        self._finished = True
        if not self._started:
            self._started = True
            self.outcome.status_code = status
            await _send_json(send, status, json.dumps(body).encode(), headers)
            return
        payload = self._dialect.in_band_error(body)
        await send({"type": "http.response.body", "body": payload, "more_body": False})

    async def _ping_while_idle(self, send: Send) -> None:
        while True:
            idle = time.monotonic() - self._last_sent
            if idle < self._keepalive:
                await anyio.sleep(self._keepalive - idle)
                continue
            if self._finished:
                return
            await self._start(send, {})
            self._last_sent = time.monotonic()
            await send({"type": "http.response.body", "body": PING, "more_body": True})


def _last_boundary(buffer: bytes) -> int:
    """Index just past the last complete SSE event in ``buffer`` (0 when there is none)."""
    lf = buffer.rfind(b"\n\n")
    crlf = buffer.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)
