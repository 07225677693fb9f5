"""The recorder writes records in batches, in order, at quiet moments; never raises; bounds
its queue; keeps and retries what a passing fault could not write; counts what it gives up;
and writes out what it holds when it stops."""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
import pytest

from proxy.api.recording import ChatRecorder, FirstBytes

pytestmark = pytest.mark.anyio


class Flushes:
    """A ``flush`` that keeps every batch it was given."""

    def __init__(self, delay: float = 0.0, fail_on: int | None = None):
        self.batches: list[list[int]] = []
        self.running = 0
        self.most = 0
        self._delay = delay
        self._fail_on = fail_on

    async def __call__(self, records: list[int]) -> None:
        self.running += 1
        self.most = max(self.most, self.running)
        await anyio.sleep(self._delay)
        self.running -= 1
        if self._fail_on in records:
            raise RuntimeError("a record the database refuses")
        self.batches.append(records)

    @property
    def written(self) -> list[int]:
        return [record for batch in self.batches for record in batch]


def record(n: int) -> Callable[[], int]:
    return lambda: n


async def test_batches_are_written_one_at_a_time_in_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flushes = Flushes(delay=0.01, fail_on=3)
    recorder = ChatRecorder(flushes, batch=2, max_delay=0.01)

    def broken() -> int:
        raise ValueError("no summary")

    with caplog.at_level(logging.ERROR, "proxy.api"):
        async with recorder.running():
            for n in range(0, 6, 2):
                # Queued, not written: submitting returns at once.
                with anyio.fail_after(0.0005):
                    await recorder.submit(record(n))
                    await recorder.submit(record(n + 1))
                await anyio.sleep(0.005)  # the next pair comes while this one is written
            await recorder.submit(broken)
            await anyio.sleep(0.2)
    # [2, 3] failed, then 2 was written alone; 3 and broken are given up.
    assert flushes.batches == [[0, 1], [2], [4, 5]]
    assert flushes.most == 1
    assert "the database refuses" in caplog.text and "no summary" in caplog.text


async def test_a_writer_that_falls_behind_writes_all_it_has() -> None:
    flushes = Flushes()
    recorder = ChatRecorder(flushes, FirstBytes(), batch=2, max_delay=60, quiet_wait=60)
    async with recorder.running():
        for n in range(5):
            await recorder.submit(record(n))
        await anyio.sleep(0.01)
        # Twice a batch queued: no waiting for a quiet moment, and all of it in one go.
        assert flushes.batches == [[0, 1, 2, 3, 4]]


async def test_a_batch_waits_for_a_quiet_moment_but_not_too_long() -> None:
    first_bytes = FirstBytes()
    flushes = Flushes()
    recorder = ChatRecorder(flushes, first_bytes, batch=3, max_delay=0.05, quiet_wait=0.2)

    async with recorder.running():
        await recorder.submit(record(0))
        await anyio.sleep(0.1)
        assert flushes.written == []  # due, but nothing has happened: not a moment to take
        first_bytes.begin()  # a response comes in…
        await anyio.sleep(0.01)
        assert flushes.written == []
        first_bytes.sent()  # … and has sent its first byte
        await anyio.sleep(0.01)
        assert flushes.written == [0]

        await recorder.submit(record(1))
        await anyio.sleep(0.1)
        assert flushes.written == [0]
        await anyio.sleep(0.2)  # waited its longest for a quiet moment
        assert flushes.written == [0, 1]

        for n in (2, 3, 4):  # a full batch does not wait for its oldest
            await recorder.submit(record(n))
        await anyio.sleep(0.01)
        first_bytes.begin()
        first_bytes.sent()
        await anyio.sleep(0.01)
        assert flushes.batches[-1] == [2, 3, 4]


async def test_what_is_queued_is_written_when_the_recorder_stops() -> None:
    flushes = Flushes(delay=0.001)
    recorder = ChatRecorder(flushes, FirstBytes(), batch=2, max_delay=60)

    with anyio.fail_after(1):
        async with recorder.running():
            for n in range(3):
                await recorder.submit(record(n))
            await anyio.sleep(0.01)
            assert flushes.written == []  # a full batch, but no quiet moment yet
    assert flushes.written == [0, 1, 2]
    # Stopped: a record now is written at once.
    await recorder.submit(record(3))
    assert flushes.written == [0, 1, 2, 3]


async def test_a_full_queue_holds_new_requests_back() -> None:
    gate = anyio.Event()

    async def flush(records: list[int]) -> None:
        await gate.wait()

    recorder = ChatRecorder(flush, limit_bytes=100, batch=1, max_delay=0)
    admitted = anyio.Event()

    async def request() -> None:
        await recorder.admit()
        admitted.set()

    async with recorder.running(), anyio.create_task_group() as tg:
        await recorder.admit()  # an empty queue has room
        await recorder.submit(record(0), 60)
        await anyio.sleep(0.01)
        await recorder.submit(record(1), 60)  # 120 bytes held
        tg.start_soon(request)
        await anyio.sleep(0.01)
        assert not admitted.is_set()
        gate.set()
    assert admitted.is_set()


async def test_an_accepted_record_survives_its_caller_being_cancelled() -> None:
    flushes = Flushes(delay=0.05)
    recorder = ChatRecorder(flushes)

    with anyio.move_on_after(0.01):
        await recorder.submit(record(0))
    assert flushes.written == [0]


class Outage(Exception):
    """A fault that passes."""


class Database:
    """A ``flush`` that fails with :class:`Outage` while ``down``."""

    def __init__(self) -> None:
        self.down = True
        self.attempts = 0
        self.written: list[int] = []

    async def __call__(self, records: list[int]) -> None:
        self.attempts += 1
        if self.down:
            raise Outage("the database is away")
        self.written.extend(records)


class Drops:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, reason: str, count: int) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + count


async def _until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(30):
        while not condition():
            await anyio.sleep(0.01)


async def test_records_wait_for_a_database_that_comes_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    database, drops = Database(), Drops()
    recorder = ChatRecorder(database, batch=1, max_delay=0, retry_on=(Outage,), on_drop=drops)
    async with recorder.running():
        for n in range(5):
            await recorder.admit()  # an outage does not hold requests back
            await recorder.submit(record(n))
        await _until(lambda: recorder.retrying == 5)
        attempts = database.attempts
        await _until(lambda: database.attempts > attempts)  # retried, with a delay
        assert recorder.retrying == 5
        for n in range(5, 8):
            await recorder.submit(record(n))
        await _until(lambda: recorder.retrying == 8)
        database.down = False
        await _until(lambda: recorder.retrying == 0)
    assert database.written == list(range(8))  # all of them, in order
    assert drops.counts == {}
    assert "keeping them to retry" in caplog.text and "written again" in caplog.text


async def test_past_its_bound_the_backlog_drops_the_oldest_and_counts_them() -> None:
    database, drops = Database(), Drops()
    recorder = ChatRecorder(
        database, batch=1, max_delay=0, retry_on=(Outage,), backlog_bytes=300, on_drop=drops
    )
    async with recorder.running():
        for n in range(5):
            await recorder.submit(record(n), 100)
        await _until(lambda: drops.counts.get("backlog_full") == 2)
        assert recorder.retrying == 3
        database.down = False
        await _until(lambda: recorder.retrying == 0)
    assert database.written == [2, 3, 4]


async def test_what_still_waits_when_the_recorder_stops_is_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    database, drops = Database(), Drops()
    recorder = ChatRecorder(database, batch=1, max_delay=0, retry_on=(Outage,), on_drop=drops)
    async with recorder.running():
        await recorder.submit(record(0))
        await _until(lambda: recorder.retrying == 1)
        attempts = database.attempts
    assert database.attempts == attempts + 1  # one last try
    assert drops.counts == {"shutdown": 1}
    assert "1 chat record(s) could not be written and are dropped (shutdown)" in caplog.text
    # Without a writer there is no retry: one attempt, then counted.
    await recorder.submit(record(1))
    assert drops.counts == {"shutdown": 1, "no_writer": 1}
