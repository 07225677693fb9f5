"""Processes on one PostgreSQL database hear each other's changes (LISTEN/NOTIFY).

Each store here stands for a process of its own: its own pool, its own listening connection,
its own notifier. Followers poll so rarely in these tests that only a notification can wake
them in time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import psycopg
import pytest

from proxy.store import Store, StoredEvent
from proxy.store.follow import follow_events
from proxy.store.notify import ChangeNotifier
from proxy.store.pgnotify import MAX_IDS, channel_of, deliver, payload
from tests.support.stores import fresh_database, make_store

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

#: Longer than any test waits: a follower that polls is too late.
NEVER = 600.0


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    with fresh_database("postgres", tmp_path) as url:
        yield url


@asynccontextmanager
async def process(url: str) -> AsyncIterator[Store]:
    """A store on ``url`` that listens, once it hears the others."""
    store = make_store(url)
    await store.migrate()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.listen)
            await hearing(store)
            yield store
            tg.cancel_scope.cancel()
    finally:
        await store.close()


async def hearing(store: Store) -> None:
    with anyio.fail_after(10):
        while True:
            with store.subscribe("-") as probe:
                if probe.hears_others:
                    return
            await anyio.sleep(0.02)


async def test_a_follower_wakes_for_another_process_appends(database_url: str) -> None:
    async with process(database_url) as writer, process(database_url) as reader:
        run = await writer.create_trajectory("alpha", "t")
        seen: list[StoredEvent] = []

        async def follow() -> None:
            async for event in follow_events(reader, run.id, poll_seconds=NEVER):
                seen.append(event)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(follow)
                for n in range(3):
                    await anyio.sleep(0.05)
                    await writer.append_event(run.id, "text_delta", {"n": n})
                await writer.update_trajectory(run.id, status="completed")
        assert [e.data["n"] for e in seen] == [0, 1, 2]


async def test_a_record_watcher_wakes_for_another_process_status_change(
    database_url: str,
) -> None:
    async with process(database_url) as writer, process(database_url) as watcher:
        run = await writer.create_trajectory("alpha", "t", status="running")
        with watcher.subscribe_records({run.id}.__contains__) as changed:
            await writer.append_event(run.id, "progress", {})
            assert not await changed.wait(0.3)
            await writer.transition(run.id, "cancelled", allowed_from=["running"])
            assert await changed.wait(10)


async def test_other_schemas_are_other_installations(tmp_path: Path) -> None:
    with (
        fresh_database("postgres", tmp_path / "one") as one,
        fresh_database("postgres", tmp_path / "two") as two,
    ):
        async with process(one) as writer, process(two) as elsewhere:
            run = await writer.create_trajectory("alpha", "t")
            with elsewhere.subscribe_records(lambda _: True) as changed:
                await writer.update_trajectory(run.id, status="running")
                assert not await changed.wait(0.3)


async def test_the_listener_comes_back_when_its_connection_is_killed(database_url: str) -> None:
    async with process(database_url) as writer, process(database_url) as reader:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
            channel = await channel_of(admin)
            with reader.subscribe("-") as waiting:
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE query = %s AND pid <> pg_backend_pid()",
                    (f'LISTEN "{channel}"',),
                )
                # Lost: everyone is woken to poll (two listeners heard the channel).
                assert await waiting.wait(10)
        await hearing(reader)
        run = await writer.create_trajectory("alpha", "t")
        with reader.subscribe(run.id) as changed:
            await writer.append_event(run.id, "progress", {})
            assert await changed.wait(10)


def test_payloads_name_trajectories_and_what_changed_not_the_change() -> None:
    notifier = ChangeNotifier()
    woken: list[tuple[str, bool]] = []
    notifier.notify = lambda key, *, record=False: woken.append((key, record))  # type: ignore[method-assign]
    deliver(notifier, payload("e", "them", ["a1b2c3d4", "0badcafe"]), own_origin="me")
    deliver(notifier, payload("r", "them", {"a1b2c3d4"}), own_origin="me")
    deliver(notifier, payload("r", "me", {"a1b2c3d4"}), own_origin="me")  # woken when written
    deliver(notifier, "x them a1b2c3d4", own_origin="me")
    deliver(notifier, "nonsense", own_origin="me")
    assert woken == [("0badcafe", False), ("a1b2c3d4", False), ("a1b2c3d4", True)]
    with pytest.raises(ValueError, match="at most"):
        payload("e", "them", [f"{n:08x}" for n in range(MAX_IDS + 1)])
