"""Event logs on every engine: gapless seqs under concurrent writers, replay, live follow."""

from __future__ import annotations

import time

import anyio
import pytest

from proxy.store import RecordNotFound, Store, StoredEvent
from proxy.store.follow import follow_events
from tests.support.stores import make_store

pytestmark = pytest.mark.anyio


async def test_append_and_read_back(store: Store) -> None:
    run = await store.create_trajectory("alpha", "t")
    assert await store.append_event(run.id, "progress", {"text": "starting"}) == 1
    assert await store.append_event(run.id, "text_delta", {"text": "héllo"}) == 2
    assert await store.append_event(run.id, "usage", {"input_tokens": 3, "cost_usd": 0.5}) == 3
    events = await store.events_after(run.id)
    assert [(e.seq, e.type) for e in events] == [(1, "progress"), (2, "text_delta"), (3, "usage")]
    assert events[1].data == {"text": "héllo"}
    assert events[2].data == {"input_tokens": 3, "cost_usd": 0.5}
    assert [e.seq for e in await store.events_after(run.id, 1)] == [2, 3]
    assert [e.seq for e in await store.events_after(run.id, 0, limit=2)] == [1, 2]
    assert await store.events_after(run.id, 3) == []
    assert (await store.get_trajectory(run.id)).last_seq == 3  # type: ignore[union-attr]
    with pytest.raises(RecordNotFound):
        await store.append_event("ffffffff", "progress", {})


async def test_many_runs_appending_at_once_lose_nothing(store: Store) -> None:
    runs = [(await store.create_trajectory("alpha", "load")).id for _ in range(40)]
    per_run = 25

    async def writer(trajectory_id: str) -> None:
        for n in range(per_run):
            await store.append_event(trajectory_id, "text_delta", {"n": n})

    async with anyio.create_task_group() as tg:
        for trajectory_id in runs:
            tg.start_soon(writer, trajectory_id)

    for trajectory_id in runs:
        events = await store.events_after(trajectory_id)
        assert [e.seq for e in events] == list(range(1, per_run + 1))
        assert [e.data["n"] for e in events] == list(range(per_run))


async def test_concurrent_writers_on_one_run_get_distinct_gapless_seqs(
    store: Store, database_url: str
) -> None:
    run = await store.create_trajectory("alpha", "t")
    # A second store instance stands for a second process on the same database.
    other = make_store(database_url)
    await other.migrate()
    seqs: list[int] = []

    async def writer(target: Store, name: str) -> None:
        for n in range(30):
            seqs.append(await target.append_event(run.id, "progress", {"w": name, "n": n}))

    try:
        async with anyio.create_task_group() as tg:
            for w in range(6):
                tg.start_soon(writer, store if w % 2 else other, f"w{w}")
    finally:
        await other.close()

    assert sorted(seqs) == list(range(1, 181))
    events = await store.events_after(run.id)
    assert [e.seq for e in events] == list(range(1, 181))
    for w in range(6):
        mine = [e.data["n"] for e in events if e.data["w"] == f"w{w}"]
        assert mine == list(range(30)), "each writer's events keep their order"


async def test_subscribe_wakes_on_append_and_update(store: Store) -> None:
    run = await store.create_trajectory("alpha", "t")
    with store.subscribe(run.id) as changed:
        await store.append_event(run.id, "progress", {})
        assert await changed.wait(5)
    with store.subscribe(run.id) as changed:
        await store.update_trajectory(run.id, status="running")
        assert await changed.wait(5)
    with store.subscribe(run.id) as changed:
        assert not await changed.wait(0.01)


async def _collect(store: Store, trajectory_id: str, after: int = 0) -> list[StoredEvent]:
    return [e async for e in follow_events(store, trajectory_id, after, poll_seconds=0.05)]


async def test_follow_replays_then_follows_until_the_run_ends(store: Store) -> None:
    run = await store.create_trajectory("alpha", "t")
    for n in range(3):
        await store.append_event(run.id, "text_delta", {"n": n})
    seen: list[StoredEvent] = []

    async def follower() -> None:
        seen.extend(await _collect(store, run.id))

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(follower)
        await anyio.sleep(0.1)
        for n in range(3, 6):
            await store.append_event(run.id, "text_delta", {"n": n})
        await store.update_trajectory(run.id, status="completed")
    assert [e.data["n"] for e in seen] == list(range(6))
    assert [e.seq for e in seen] == list(range(1, 7))
    assert time.monotonic() - started < 5


async def test_follow_resumes_after_a_seq(store: Store) -> None:
    run = await store.create_trajectory("alpha", "t")
    for n in range(10):
        await store.append_event(run.id, "text_delta", {"n": n})
    await store.update_trajectory(run.id, status="failed")
    resumed = await _collect(store, run.id, after=6)
    assert [e.seq for e in resumed] == [7, 8, 9, 10]
    assert await _collect(store, run.id, after=10) == []


async def test_follow_sees_another_process_by_polling(store: Store, database_url: str) -> None:
    run = await store.create_trajectory("alpha", "t")
    writer = make_store(database_url)
    await writer.migrate()
    seen: list[StoredEvent] = []

    async def follower() -> None:
        seen.extend(await _collect(store, run.id))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(follower)
            for n in range(4):
                await anyio.sleep(0.03)
                await writer.append_event(run.id, "text_delta", {"n": n})
            await writer.update_trajectory(run.id, status="completed")
    finally:
        await writer.close()
    assert [e.seq for e in seen] == [1, 2, 3, 4]


async def test_follow_pages_through_long_logs(store: Store) -> None:
    run = await store.create_trajectory("alpha", "t")
    for n in range(25):
        await store.append_event(run.id, "text_delta", {"n": n})
    await store.update_trajectory(run.id, status="completed")
    events = [e async for e in follow_events(store, run.id, 0, batch=10)]
    assert [e.seq for e in events] == list(range(1, 26))


async def test_record_watchers_wake_on_updates_and_transitions_not_on_events(
    store: Store,
) -> None:
    run = await store.create_trajectory("alpha", "t")
    other = await store.create_trajectory("alpha", "t")
    with store.subscribe_records({run.id}.__contains__) as changed:
        await store.append_event(run.id, "progress", {})
        await store.update_trajectory(other.id, status="running")
        assert not await changed.wait(0.01)
        await store.update_trajectory(run.id, status="running")
        assert await changed.wait(5)
    with store.subscribe_records({run.id}.__contains__) as changed:
        await store.transition(run.id, "cancelled", allowed_from=["running"])
        assert await changed.wait(5)


async def test_several_trajectories_in_one_read(store: Store) -> None:
    runs = [await store.create_trajectory("alpha", "t") for _ in range(3)]
    found = await store.get_trajectories([runs[0].id, runs[2].id, "ffffffff", runs[0].id])
    assert sorted(t.id for t in found) == sorted([runs[0].id, runs[2].id])
    assert await store.get_trajectories([]) == []
