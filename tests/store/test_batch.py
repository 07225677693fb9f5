"""Group commit: batches, per-caller results and errors, cancellation, fair hand-over."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest

from proxy.store import StoreError
from proxy.store.batch import Coalescer

pytestmark = pytest.mark.anyio


class Recorder:
    def __init__(self, *, fail_on: int | None = None, delay: float = 0.01):
        self.batches: list[list[int]] = []
        self.fail_on = fail_on
        self.delay = delay

    async def flush(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        await anyio.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in items:
            raise RuntimeError(f"bad item {self.fail_on}")
        return [item * 10 for item in items]


async def test_concurrent_callers_share_batches_and_get_their_own_results() -> None:
    recorder = Recorder()
    coalescer = Coalescer(recorder.flush, max_batch=16)
    results: dict[int, int] = {}

    async def call(n: int) -> None:
        results[n] = await coalescer.submit(n)

    async with anyio.create_task_group() as tg:
        for n in range(100):
            tg.start_soon(call, n)
    assert results == {n: n * 10 for n in range(100)}
    assert sorted(item for batch in recorder.batches for item in batch) == list(range(100))
    assert len(recorder.batches) < 100 and max(len(b) for b in recorder.batches) <= 16
    assert await coalescer.submit(7) == 70


async def test_an_error_fails_only_its_batch() -> None:
    recorder = Recorder(fail_on=3)
    coalescer = Coalescer(recorder.flush, max_batch=4)
    outcomes: dict[int, object] = {}

    async def call(n: int) -> None:
        try:
            outcomes[n] = await coalescer.submit(n)
        except StoreError as exc:
            outcomes[n] = exc

    async with anyio.create_task_group() as tg:
        for n in range(12):
            tg.start_soon(call, n)
    failed_batch = next(b for b in recorder.batches if 3 in b)
    for n in range(12):
        if n in failed_batch:
            assert isinstance(outcomes[n], StoreError) and "bad item 3" in str(outcomes[n])
        else:
            assert outcomes[n] == n * 10


async def test_a_caller_cancelled_while_queued_is_never_written() -> None:
    recorder = Recorder(delay=0.05)
    coalescer = Coalescer(recorder.flush, max_batch=100)
    async with anyio.create_task_group() as tg:
        tg.start_soon(coalescer.submit, 1)  # leads: flushes [1] for 50 ms
        await anyio.sleep(0.01)
        with anyio.move_on_after(0.01):
            await coalescer.submit(2)  # queued behind the leader, then cancelled
        tg.start_soon(coalescer.submit, 3)
    assert recorder.batches == [[1], [3]]


async def test_a_cancelled_leader_still_finishes_its_batch() -> None:
    recorder = Recorder(delay=0.05)
    coalescer = Coalescer(recorder.flush, max_batch=100)
    with anyio.move_on_after(0.01):
        await coalescer.submit(1)
    assert recorder.batches == [[1]]
    assert await coalescer.submit(2) == 20


async def test_the_lead_passes_on_so_no_caller_flushes_forever() -> None:
    recorder = Recorder(delay=0.001)
    coalescer = Coalescer(recorder.flush, max_batch=1)
    first_done = anyio.Event()

    async def first() -> None:
        await coalescer.submit(0)
        first_done.set()

    async def stream() -> None:
        for n in range(1, 200):
            await coalescer.submit(n)

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        for _ in range(5):
            tg.start_soon(stream)
        with anyio.fail_after(1):
            await first_done.wait()
