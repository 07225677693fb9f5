"""Group commit: concurrent writes coalesced into batches, one transaction per batch.

Two hundred runs appending events at once would otherwise pay for two hundred separate
commits (and, on SQLite, two hundred worker-thread round trips). With a
:class:`Coalescer`, the first caller becomes the *leader*: it flushes whatever has queued
up, including its own item, then hands the lead to the oldest caller still waiting. Every
caller gets its own result or error; no caller flushes more than the batches up to its
own item, so none waits on the others forever.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio
from anyio.lowlevel import RunVar

from proxy.store.errors import StoreError

I = TypeVar("I")  # noqa: E741
R = TypeVar("R")


@dataclass(eq=False)
class _Slot(Generic[I, R]):
    item: I
    wake: anyio.Event = field(default_factory=anyio.Event)
    done: bool = False
    result: R | None = None
    error: BaseException | None = None


@dataclass
class _Queue(Generic[I, R]):
    pending: list[_Slot[I, R]] = field(default_factory=list)
    leading: bool = False


class Coalescer(Generic[I, R]):
    """Runs ``flush(items) -> results`` (one result per item, same order) in batches.

    ``flush`` is called by one task at a time per event loop and runs shielded from
    cancellation: a batch that has started is finished. A caller cancelled while still
    queued is dropped from the queue (its item is never written).
    """

    def __init__(self, flush: Callable[[Sequence[I]], Awaitable[Sequence[R]]], *, max_batch: int):
        self._flush = flush
        self._max_batch = max_batch
        # Queues hold anyio events, which belong to one event loop: keep one per loop.
        self._queues: RunVar[_Queue[I, R]] = RunVar(f"coalescer-{id(self)}")

    async def submit(self, item: I) -> R:
        queue = self._queue()
        slot: _Slot[I, R] = _Slot(item)
        queue.pending.append(slot)
        if queue.leading:
            try:
                await slot.wake.wait()
            except BaseException:
                with anyio.CancelScope(shield=True):
                    if slot in queue.pending and not slot.wake.is_set():
                        queue.pending.remove(slot)
                    else:
                        await slot.wake.wait()
                        if not slot.done:
                            await self._lead(queue, slot)
                raise
        if not slot.done:
            await self._lead(queue, slot)
        if slot.error is not None:
            raise StoreError(str(slot.error)) from slot.error
        return slot.result  # type: ignore[return-value]

    def _queue(self) -> _Queue[I, R]:
        queue = self._queues.get(None)
        if queue is None:
            queue = _Queue()
            self._queues.set(queue)
        return queue

    async def _lead(self, queue: _Queue[I, R], mine: _Slot[I, R]) -> None:
        queue.leading = True
        with anyio.CancelScope(shield=True):
            while not mine.done:
                batch = queue.pending[: self._max_batch]
                del queue.pending[: self._max_batch]
                try:
                    results = await self._flush([slot.item for slot in batch])
                    if len(results) != len(batch):
                        raise StoreError(f"{len(results)} results for {len(batch)} items")
                except Exception as exc:
                    for slot in batch:
                        slot.error = exc
                else:
                    for slot, result in zip(batch, results, strict=True):
                        slot.result = result
                for slot in batch:
                    slot.done = True
                    slot.wake.set()
        if queue.pending:
            queue.pending[0].wake.set()  # the oldest waiter leads next
        else:
            queue.leading = False
