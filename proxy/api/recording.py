"""Writing the records of relayed completions once their responses are out."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable

import anyio

logger = logging.getLogger("proxy.api")

Write = Callable[[], Awaitable[object]]

#: Roughly what a queued record holds besides its request and answer.
RECORD_OVERHEAD = 2048
#: With few records queued, a write waits for the next first byte for at most this long.
QUIET_SECONDS = 0.005


class ChatRecorder:
    """Runs record writes one at a time, in the order they were submitted.

    Every write is a database round trip (for SQLite, a worker thread): hundreds at once
    pile up threads that fight the event loop for the interpreter, and would keep each
    finished response alive while they wait. Queued writes are small closures instead. The
    first caller to find the recorder idle writes out the queue (its own response long
    sent); the others return at once. A failed write is logged, never raised: recording
    must not reach a client.

    Writes are timed not to delay anyone's first byte: with only a record or two queued,
    the writer waits until a response has just started (:meth:`first_byte`) or
    ``QUIET_SECONDS`` have passed. A client that sends its next request as soon as one
    ends would otherwise find the proxy busy writing the last one down.

    A burst of completions faster than the database can take is absorbed by the queue.
    Once it holds ``limit_bytes`` (as the callers estimate their records), :meth:`admit`
    holds new requests back until there is room: the proxy does not take on more
    completions than it can record, nor grow without bound.
    """

    def __init__(self, limit_bytes: int = 32 * 1024 * 1024):
        self._limit = limit_bytes
        self._queue: deque[tuple[Write, int]] = deque()
        self._queued = 0
        self._writing = False
        self._room: anyio.Event | None = None
        self._moment: anyio.Event | None = None

    def first_byte(self) -> None:
        """A response has just sent its first byte: a good moment to write records."""
        if self._moment is not None:
            self._moment.set()
            self._moment = None

    async def admit(self) -> None:
        """Return once there is room for another record; call before relaying."""
        while self._queued >= self._limit:
            if self._room is None:
                self._room = anyio.Event()
            await self._room.wait()

    async def submit(self, write: Write, size: int = RECORD_OVERHEAD) -> None:
        """Queue ``write``, which holds about ``size`` bytes, and run the queue unless
        another caller already is."""
        self._queue.append((write, size))
        self._queued += size
        if self._writing:
            return
        self._writing = True
        try:
            # Shielded: a record that was accepted is written, even if its caller goes away.
            with anyio.CancelScope(shield=True):
                while self._queue:
                    await self._run(*self._queue.popleft())
        finally:
            self._writing = False

    async def _run(self, write: Write, size: int) -> None:
        if len(self._queue) < 2:
            # Under load there is a backlog, and first bytes come all the time anyway.
            self._moment = self._moment or anyio.Event()
            with anyio.move_on_after(QUIET_SECONDS):
                await self._moment.wait()
        try:
            await write()
        except Exception:
            logger.exception("recording a relayed completion failed")
        self._queued -= size
        if self._room is not None and self._queued < self._limit:
            self._room.set()
            self._room = None
