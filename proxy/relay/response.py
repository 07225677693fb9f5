"""ASGI responses that relay an upstream answer byte for byte.

Why not ``StreamingResponse``/``EventSourceResponse``: the status line must wait
for the upstream's (so a 429 stays a 429), yet keepalive comments must start
before the upstream's first byte; and SSE blocks are passed through as the
upstream wrote them, never re-serialised (events that arrived together leave in
one write). Both responses watch for the client going away and then cancel the
upstream request at once. They are Starlette responses, so a route returns one as is.

Provider specifics (how a stream ends, the shape of error bodies) come from a
:class:`~proxy.relay.wire.Dialect`; OpenAI's is the default.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from proxy.errors import ProxyError, StreamIncomplete
from proxy.relay.upstream import UpstreamResponse
from proxy.relay.wire import OPENAI, Dialect

logger = logging.getLogger("proxy.relay")

PING = b": ping\n\n"
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
]

OpenUpstream = Callable[[], Awaitable[UpstreamResponse]]


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

HEAD_BYTES = 4096
TAIL_BYTES = 8192


class _Relay(Response):
    """Shared plumbing: the disconnect watcher and the outcome callback.

    A :class:`~starlette.responses.Response` only in name, so that routes can return it:
    the status, the headers and the body are the upstream's, written as they arrive.

    ``on_finish`` runs once the response is complete (or failed, or the client went
    away), after its last byte was sent; its failures are logged, never sent.
    ``abandon``, when given, is called at the end: it releases an upstream request that
    was sent ahead and never opened (the relay opens it first thing, so only if it
    failed before that).
    """

    def __init__(
        self,
        open_upstream: OpenUpstream,
        on_finish: OnFinish | None,
        dialect: Dialect = OPENAI,
        abandon: Callable[[], None] | None = None,
    ):
        self._open_upstream = open_upstream
        self._abandon = abandon
        self._on_finish = on_finish
        self._dialect = dialect
        self.outcome = RelayOutcome()
        self._started_at = time.perf_counter()
        # Set once the response's last message has gone out.
        self._ended = False
        # While the upstream is being relayed; and whether the client went away meanwhile.
        self._relaying = False
        self._client_gone = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The relay runs on asyncio (uvicorn's loop), and its cancellation is plain asyncio:
        # a bare watcher task that cancels this one when the client goes away, rather than
        # anyio cancel scopes and a task group, which cost several times as much per request.
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.get_running_loop().create_task(self._watch(receive, task))
        try:
            self._relaying = True
            try:
                await self._relay(send)
            except OSError:
                # The client's socket went away mid-send.
                self.outcome.status = "completed" if self._answered() else "cancelled"
            except asyncio.CancelledError:
                # Ours (the client went away: the outcome stays "cancelled", unless it had
                # the whole answer and hung up before the response's own end) or the server's.
                if not self._client_gone or task.uncancel() > 0:
                    raise
                if self._answered():
                    self.outcome.status = "completed"
            finally:
                self._relaying = False
        finally:
            if self._abandon is not None:
                self._abandon()
            if not self._ended:
                watcher.cancel()
            # Else the watcher ends by itself: a server reports a disconnect once the
            # response is complete.
            self._finish()
            self.outcome.duration_seconds = time.perf_counter() - self._started_at
            if self._on_finish is not None:
                # A cancellation has been delivered by now; nothing here is cancelled again.
                try:
                    await self._on_finish(self.outcome)
                except Exception:
                    logger.exception("recording a relayed completion failed")

    async def _watch(self, receive: Receive, relay: asyncio.Task[Any]) -> None:
        """Cancel the relay when the client disconnects."""
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        except Exception:
            logger.exception("watching for the client to go away failed")
        if self._relaying and not self._ended:
            self._client_gone = True
            relay.cancel()

    async def _relay(self, send: Send) -> None:
        raise NotImplementedError

    def _answered(self) -> bool:
        """Whether the client was sent the whole answer (asked once it went away)."""
        return False

    def _finish(self) -> None:
        """Complete the outcome before ``on_finish`` sees it."""

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

    async def _relay(self, send: Send) -> None:
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
            await upstream.aclose()
        self._mark_first_byte()
        self.outcome.status, self.outcome.status_code = "completed", upstream.status_code
        self.outcome.head = body
        await _send_json(send, upstream.status_code, body, upstream.headers)
        self._ended = True

    async def _fail(self, send: Send, exc: ProxyError) -> None:
        self.outcome.status, self.outcome.status_code = "failed", exc.status_code
        self.outcome.error = exc.message
        body = json.dumps(self._dialect.error_body(exc)).encode()
        await _send_json(send, exc.status_code, body, exc.headers())
        self._ended = True


class RelayStreamResponse(_Relay):
    """Streaming: SSE blocks relayed as they arrive, ``: ping`` comments while idle.

    Until the stream has started, an upstream error keeps its own status; after
    that it goes in-band (for OpenAI ``data: {"error": …}`` followed by ``data: [DONE]``).
    Whatever the upstream sent in one go goes out in one piece, cut after its last
    complete event. ``on_block`` sees every block of upstream events as it is relayed,
    e.g. to read usage.
    """

    def __init__(
        self,
        open_upstream: OpenUpstream,
        keepalive: float,
        on_finish: OnFinish | None,
        dialect: Dialect = OPENAI,
        on_block: OnBlock | None = None,
        abandon: Callable[[], None] | None = None,
    ):
        super().__init__(open_upstream, on_finish, dialect, abandon)
        self._on_block = on_block
        self._keepalive = keepalive
        self._started = False
        self._finished = False
        self._last_sent = time.monotonic()
        # Pings go out from their own task. The messages that must not cross one (the
        # status line, the last message) take this lock; relayed blocks need not. (An
        # asyncio lock: a third of the cost of anyio's, and the relay runs on asyncio.)
        self._lock = asyncio.Lock()
        self._ping_timer: asyncio.TimerHandle | None = None
        self._pinger: asyncio.Task[None] | None = None
        # The latest blocks, at least TAIL_BYTES of them once there are that many.
        self._tail: deque[bytes] = deque()
        self._tail_bytes = 0

    async def _relay(self, send: Send) -> None:
        self._ping_timer = asyncio.get_running_loop().call_later(
            self._keepalive, self._ping_due, send
        )
        try:
            try:
                upstream = await self._open_upstream()
            except ProxyError as exc:
                error = self._dialect.error_body(exc)
                await self._fail(send, exc.status_code, error, exc.headers())
                return
            try:
                await self._start(send, upstream.headers)
                await self._pump(send, upstream)
            finally:
                await upstream.aclose()
        finally:
            self._finished = True
            self._ping_timer.cancel()
            if self._pinger is not None:
                self._pinger.cancel()

    async def _pump(self, send: Send, upstream: UpstreamResponse) -> None:
        pending = b""
        try:
            while piece := await upstream.receive():
                if pending:
                    piece = pending + piece
                if piece.endswith((b"\n\n", b"\r\n\r\n")):
                    block, pending = piece, b""
                else:
                    cut = _last_boundary(piece)
                    block, pending = piece[:cut], piece[cut:]
                    if not block:
                        continue
                if not pending and upstream.complete and self._ended_with(block):
                    # The last piece: it leaves with the end of the response, in one write.
                    self.outcome.status = "completed"
                    await self._send_block(send, block, last=True)
                    return
                await self._send_block(send, block)
        except ProxyError as exc:
            if self._ended_with(b""):
                # The connection broke after the stream's last event: the answer is whole,
                # and an error (with a second end) after it would only confuse the client.
                self.outcome.status = "completed"
                await self._end(send, b"")
                return
            await self._fail(send, exc.status_code, self._dialect.error_body(exc), {})
            return
        if pending.strip():
            # Forward a final event the upstream did not terminate.
            await self._send_block(send, pending.rstrip(b"\r\n") + b"\n\n")
        if not self._ended_with(b""):
            incomplete = StreamIncomplete("The upstream closed the stream before it was complete.")
            await self._fail(send, 502, self._dialect.error_body(incomplete), {})
            return
        self.outcome.status = "completed"
        await self._end(send, b"")

    def _answered(self) -> bool:
        # A client reads a stream to its last event and may hang up before the response's
        # own end (the OpenAI SDKs stop at ``[DONE]``): its answer was whole.
        return self.outcome.status_code == 200 and self._ended_with(b"")

    def _ended_with(self, block: bytes) -> bool:
        """Whether the stream's last event is in ``block`` or the kept tail before it. Asked
        once the upstream has sent everything, and before a ping, not of every block: the
        marker is in its last events, and looking for it costs a scan of each block."""
        return self._dialect.is_end(b"".join(self._tail) + block)

    async def _send_block(self, send: Send, block: bytes, *, last: bool = False) -> None:
        first = self.outcome.first_byte_seconds is None
        if first:
            self._mark_first_byte()
            self.outcome.head = block[:HEAD_BYTES]
        tail = self._tail
        tail.append(block)
        self._tail_bytes += len(block)
        while self._tail_bytes - len(tail[0]) >= TAIL_BYTES:
            self._tail_bytes -= len(tail.popleft())
        if self._on_block is not None:
            self._on_block(block)
        self._last_sent = time.monotonic()
        if last:
            await self._end(send, block)
        else:
            await send({"type": "http.response.body", "body": block, "more_body": True})

    async def _end(self, send: Send, body: bytes) -> None:
        """Send the response's last message."""
        async with self._lock:
            if not self._ended:
                self._ended = True
                await send({"type": "http.response.body", "body": body, "more_body": False})

    def _finish(self) -> None:
        self.outcome.tail = b"".join(self._tail)[-TAIL_BYTES:]

    async def _start(self, send: Send, headers: dict[str, str]) -> None:
        async with self._lock:
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
        async with self._lock:
            if not self._started:
                self._started = self._ended = True
                self.outcome.status_code = status
                await _send_json(send, status, json.dumps(body).encode(), headers)
                return
        await self._end(send, self._dialect.in_band_error(body))

    def _ping_due(self, send: Send) -> None:
        """Timer callback: ping if nothing went out for a keepalive interval, then re-arm."""
        if self._finished:
            return
        loop = asyncio.get_running_loop()
        idle = time.monotonic() - self._last_sent
        if idle >= self._keepalive and (self._pinger is None or self._pinger.done()):
            self._last_sent = time.monotonic()
            self._pinger = loop.create_task(self._ping(send))
            idle = 0.0
        self._ping_timer = loop.call_later(self._keepalive - idle, self._ping_due, send)

    async def _ping(self, send: Send) -> None:
        try:
            # Pings before the upstream answers start the stream: its status is 200 from now.
            await self._start(send, {})
            async with self._lock:
                # Nothing follows the stream's last event, even while the upstream has not
                # ended its response yet. (Relayed blocks join the tail before they are sent.)
                if not self._ended and not self._ended_with(b""):
                    await send({"type": "http.response.body", "body": PING, "more_body": True})
        except Exception:
            # The client is gone or the response is over: the relay itself sees to that.
            logger.debug("a keepalive ping was not sent", exc_info=True)


def _last_boundary(buffer: bytes) -> int:
    """Index just past the last complete SSE event in ``buffer`` (0 when there is none)."""
    lf = buffer.rfind(b"\n\n")
    crlf = buffer.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)
