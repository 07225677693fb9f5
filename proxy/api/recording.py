"""Writing the records of relayed completions in batches, away from anyone's first byte, and
again after a fault that passes."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

import anyio

from proxy.api.backlog import Backlog

logger = logging.getLogger("proxy.api")

R = TypeVar("R")

#: Roughly what a queued record holds besides its request and answer.
RECORD_OVERHEAD = 2048
#: A batch is written once it has this many records (a few: making them ready for the
#: database blocks the event loop for a while too)…
BATCH = 8
#: … or its first record has waited this long,
MAX_DELAY_SECONDS = 0.25
#: at the next quiet moment (see FirstBytes), waiting at most this long for one; unless
#: twice as many are queued: a writer that falls behind takes no pauses.
QUIET_WAIT_SECONDS = 0.05
#: The most records written in one go.
MAX_BATCH = 256


class FirstBytes:
    """Counts the responses that have not sent their first byte yet.

    The request middleware calls :meth:`begin` as a request comes in and :meth:`sent` once
    its response has sent a byte of its body (or ended without one). :meth:`quiet` returns
    at the next moment when a response has just sent its first byte and no other waits for
    one: the moment to do work that can wait. (Not when a response has just ended: a
    client often sends its next request right then.)
    """

    def __init__(self) -> None:
        self.waiting = 0
        self._quiet: anyio.Event | None = None

    def begin(self) -> None:
        self.waiting += 1

    def sent(self) -> None:
        self.waiting -= 1
        if not self.waiting and self._quiet is not None:
            self._quiet.set()
            self._quiet = None

    async def quiet(self) -> None:
        """Return at the next moment when no response waits for its first byte any more."""
        if self._quiet is None:
            self._quiet = anyio.Event()
        await self._quiet.wait()


class ChatRecorder(Generic[R]):
    """Writes records with ``flush(records)`` in batches, in order, from one task.

    :meth:`submit` only queues a function that makes the record (summarising a completion
    is left to the writer too). The writer task, kept by :meth:`running` (the app's
    lifespan), writes a batch once it holds ``batch`` records or its oldest has waited
    ``max_delay``; then at the next quiet moment (see :class:`FirstBytes`), waiting at most
    ``quiet_wait`` for one, unless it has fallen behind. Each write is a database round
    trip (for SQLite, a worker thread that competes with the event loop for the
    interpreter): one per batch costs a fraction of one per record, and a client that sends
    its next request as soon as one ends does not find the proxy busy writing the last one
    down. When :meth:`running` ends, the queue is written out before it returns; without a
    running writer, :meth:`submit` writes at once.

    A burst of completions faster than the database can take is absorbed by the queue.
    Once it holds ``limit_bytes`` (as the callers estimate their records), :meth:`admit`
    holds new requests back until there is room: the proxy does not take on more
    completions than it can record, nor grow without bound.

    Failures never reach a client, and no record is lost silently. A batch that fails with
    one of ``retry_on`` (the database is away, the disk full) goes to a :class:`Backlog` of
    up to ``backlog_bytes``, retried with a doubling delay, and new records join it there
    until a retry succeeds: the queue keeps draining, so requests are not held back by an
    outage. A batch that fails otherwise is written record by record, to keep all but the
    bad ones. Records given up on — a bad one, the oldest past the backlog's bound, what is
    still held when the writer stops — are logged and reported to ``on_drop(reason, count)``.
    """

    def __init__(
        self,
        flush: Callable[[list[R]], Awaitable[object]],
        first_bytes: FirstBytes | None = None,
        *,
        limit_bytes: int = 8 * 1024 * 1024,
        batch: int = BATCH,
        max_delay: float = MAX_DELAY_SECONDS,
        quiet_wait: float = QUIET_WAIT_SECONDS,
        retry_on: tuple[type[Exception], ...] = (),
        backlog_bytes: int = 64 * 1024 * 1024,
        on_drop: Callable[[str, int], None] | None = None,
    ):
        self._flush = flush
        self._retry_on = retry_on
        self._on_drop = on_drop
        self._backlog: Backlog[R] = Backlog(backlog_bytes, self._dropped)
        self._first_bytes = first_bytes
        self._limit = limit_bytes
        self._batch = batch
        self._max_delay = max_delay
        self._quiet_wait = quiet_wait
        # (make the record, its size, when it was queued)
        self._queue: deque[tuple[Callable[[], R], int, float]] = deque()
        self._queued = 0
        self._running = False
        self._closing = False
        self._work: anyio.Event | None = None
        self._room: anyio.Event | None = None
        self._pause: anyio.CancelScope | None = None

    @property
    def retrying(self) -> int:
        """How many records wait in the backlog for the database to come back."""
        return len(self._backlog)

    async def admit(self) -> None:
        """Return once there is room for another record; call before relaying."""
        while self._queued >= self._limit:
            if self._room is None:
                self._room = anyio.Event()
            await self._room.wait()

    async def submit(self, make: Callable[[], R], size: int = RECORD_OVERHEAD) -> None:
        """Queue the record ``make()`` returns, which holds about ``size`` bytes until written.

        Without a running writer the record is written now (once), shielded from
        cancellation.
        """
        if not self._running:
            with anyio.CancelScope(shield=True):
                await self._write([(make, 0, 0.0)])
                self._backlog.drop_all("no_writer")
            return
        self._queue.append((make, size, time.monotonic()))
        self._queued += size
        # The writer wakes for the first record (to time it) and for a full batch only.
        if len(self._queue) in (1, self._batch):
            self._wake()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Keep the writer task for as long as the context lasts; write out the queue at its end."""
        async with anyio.create_task_group() as tg:
            self._running, self._closing = True, False
            tg.start_soon(self._write_all)
            try:
                yield
            finally:
                self._closing = True
                if self._pause is not None:
                    self._pause.cancel()
                self._wake()

    def _wake(self) -> None:
        if self._work is not None:
            self._work.set()
            self._work = None

    async def _write_all(self) -> None:
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        break
                    if self._backlog.due(time.monotonic()):
                        with anyio.CancelScope(shield=True):
                            await self._retry()
                        continue
                    self._work = anyio.Event()
                    # Woken by a record, or when the backlog's next attempt is due.
                    with anyio.move_on_after(self._until_retry()):
                        await self._work.wait()
                    continue
                await self._due()
                if len(self._queue) < 2 * self._batch:
                    await self._quiet()
                batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
                # Shielded: a record that was accepted is written, even at shutdown.
                with anyio.CancelScope(shield=True):
                    await self._write(batch)
            # Stopping: one last attempt at what waits for the database.
            with anyio.CancelScope(shield=True):
                if self._backlog:
                    await self._retry()
                self._backlog.drop_all("shutdown")
        finally:
            self._running = False

    def _until_retry(self) -> float:
        if not self._backlog:
            return math.inf
        return max(0.0, self._backlog.retry_at - time.monotonic())

    async def _due(self) -> None:
        """Wait until a batch is full or its oldest record has waited long enough."""
        while len(self._queue) < self._batch and not self._closing:
            delay = self._queue[0][2] + self._max_delay - time.monotonic()
            if delay <= 0:
                return
            self._work = anyio.Event()
            with anyio.move_on_after(delay):
                await self._work.wait()

    async def _quiet(self) -> None:
        if self._first_bytes is None or self._closing:
            return
        with anyio.move_on_after(self._quiet_wait) as self._pause:
            await self._first_bytes.quiet()
        self._pause = None

    async def _write(self, batch: list[tuple[Callable[[], R], int, float]]) -> None:
        records: list[tuple[R, int]] = []
        for make, size, _ in batch:
            try:
                records.append((make(), size))
            except Exception:
                logger.exception("recording a relayed completion failed")
                self._dropped("rejected", 1)
        try:
            if not records:
                return
            if self._backlog:
                # The database is failing: wait in line behind what already waits for it.
                self._backlog.keep(records)
                if self._backlog.due(time.monotonic()):
                    await self._retry()
                return
            await self._store(records)
        finally:
            # Off the queue once written or in the backlog, which has its own bound.
            self._queued -= sum(size for _, size, _ in batch)
            if self._room is not None and self._queued < self._limit:
                self._room.set()
                self._room = None

    async def _retry(self) -> None:
        """Write the backlog, oldest first, while writes succeed."""
        while self._backlog and await self._store(self._backlog.take(MAX_BATCH), retry=True):
            pass

    async def _store(self, records: list[tuple[R, int]], *, retry: bool = False) -> bool:
        """Write ``records`` (taken from the backlog's front when ``retry``); False when
        they went back to the backlog for later."""
        try:
            await self._flush([record for record, _ in records])
        except self._retry_on as exc:
            return self._postpone(records, exc, retry=retry)
        except Exception:
            if len(records) > 1:
                # Keep the good ones: one by one, unless the database fails meanwhile.
                for index, (record, _) in enumerate(records):
                    try:
                        await self._flush([record])
                    except self._retry_on as exc:
                        return self._postpone(records[index:], exc, retry=retry)
                    except Exception:
                        self._reject()
            else:
                self._reject()
        if retry:
            self._backlog.succeeded()
            if not self._backlog:
                logger.warning("chat records are written again; none waits any more")
        return True

    def _postpone(self, records: list[tuple[R, int]], exc: Exception, *, retry: bool) -> bool:
        if not self._backlog and not retry:
            logger.warning("chat records cannot be written now (%s); keeping them to retry", exc)
        self._backlog.keep(records, first=retry)
        self._backlog.failed(time.monotonic())
        return False

    def _reject(self) -> None:
        logger.exception("recording a relayed completion failed")
        self._dropped("rejected", 1)

    def _dropped(self, reason: str, count: int) -> None:
        logger.error("%d chat record(s) could not be written and are dropped (%s)", count, reason)
        if self._on_drop is not None:
            self._on_drop(reason, count)
