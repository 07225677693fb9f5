"""The recorder writes one record at a time, in order, never raises, and bounds its queue."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
import pytest

from proxy.api.recording import ChatRecorder

pytestmark = pytest.mark.anyio


async def test_writes_run_one_at_a_time_in_order(caplog: pytest.LogCaptureFixture) -> None:
    recorder = ChatRecorder()
    written: list[int] = []
    running = 0
    most = 0

    def writer(n: int) -> Callable[[], Awaitable[None]]:
        async def write() -> None:
            nonlocal running, most
            running += 1
            most = max(most, running)
            await anyio.sleep(0.001)
            running -= 1
            if n == 3:
                raise RuntimeError("the disk is full")
            written.append(n)

        return write

    returned: list[int] = []

    async def submit(n: int) -> None:
        await recorder.submit(writer(n))
        returned.append(n)

    with caplog.at_level(logging.ERROR, "proxy.api"):
        async with anyio.create_task_group() as tg:
            for n in range(6):
                tg.start_soon(submit, n)
    assert written == [0, 1, 2, 4, 5]
    assert most == 1
    # The first caller wrote everything; the others were back at once.
    assert returned[-1] == 0
    assert "the disk is full" in caplog.text


async def test_a_full_queue_holds_new_requests_back() -> None:
    recorder = ChatRecorder(limit_bytes=100)
    gate = anyio.Event()
    admitted = anyio.Event()

    async def slow() -> None:
        await gate.wait()

    async def quick() -> None:
        pass

    async def request() -> None:
        await recorder.admit()
        admitted.set()

    async with anyio.create_task_group() as tg:
        await recorder.admit()  # an empty queue has room
        tg.start_soon(recorder.submit, slow, 60)
        await anyio.sleep(0.01)
        await recorder.submit(quick, 60)  # queued behind the slow one: 120 bytes held
        tg.start_soon(request)
        await anyio.sleep(0.01)
        assert not admitted.is_set()
        gate.set()
    assert admitted.is_set()


async def test_an_accepted_write_survives_its_caller_being_cancelled() -> None:
    recorder = ChatRecorder()
    done = anyio.Event()

    async def write() -> None:
        await anyio.sleep(0.05)
        done.set()

    with anyio.move_on_after(0.01):
        await recorder.submit(write)
    assert done.is_set()
