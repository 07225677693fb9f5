"""What limits count, on every engine: runs admitted under caps (also when two store
instances, as two servers, race for the last slot), spend by day, request-rate buckets, and
limits set at runtime."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import pytest

from proxy.store import Store
from proxy.store.records import NewTrajectory, RateAdvance, RunGate, SpendEntry
from tests.support.stores import make_store

pytestmark = pytest.mark.anyio


def hour_ago() -> datetime:
    return datetime.now(UTC) - timedelta(hours=1)


def run(collection: str = "acme", key_id: str | None = None) -> NewTrajectory:
    return NewTrajectory(collection, "analysis", model="m", agent="claude-code", key_id=key_id)


async def test_a_run_is_created_while_the_collection_has_a_free_slot(store: Store) -> None:
    gate = RunGate(hour_ago(), collection_live=2)
    first = await store.create_run(run(key_id="k1"), gate)
    second = await store.create_run(run(), gate)
    assert first is not None and second is not None
    assert (first.key_id, first.status, first.kind) == ("k1", "pending", "run")
    assert await store.create_run(run(), gate) is None
    # Other collections have their own slots; chats and finished runs hold none.
    assert await store.create_run(run("other"), gate) is not None
    await store.create_trajectory("acme", "_chat", kind="chat", status="completed")
    await store.update_trajectory(first.id, status="completed")
    assert await store.create_run(run(), gate) is not None
    usage = await store.run_usage(hour_ago(), collection="acme")
    assert (usage.live, usage.recent) == (2, 3)


async def test_runs_per_hour_counts_the_runs_created_in_the_window(store: Store) -> None:
    gate = RunGate(hour_ago(), collection_recent=2)
    for _ in range(2):
        created = await store.create_run(run(), gate)
        assert created is not None
        await store.update_trajectory(created.id, status="completed")
    assert await store.create_run(run(), gate) is None
    # A window that starts after them holds none of them.
    later = RunGate(datetime.now(UTC) + timedelta(seconds=1), collection_recent=2)
    assert await store.create_run(run(), later) is not None


async def test_the_usage_says_when_the_next_slot_of_the_window_frees(store: Store) -> None:
    created = [await store.create_trajectory("acme", "t", key_id="k1") for _ in range(3)]
    usage = await store.run_usage(hour_ago(), collection="acme", cap=2)
    # Three in the window, two allowed: the second oldest must age out.
    assert (usage.live, usage.recent) == (3, 3)
    assert usage.slot_frees_at == created[1].created_at
    assert (await store.run_usage(hour_ago(), collection="acme", cap=5)).slot_frees_at is None
    by_key = await store.run_usage(hour_ago(), key_id="k1", cap=3)
    assert (by_key.recent, by_key.slot_frees_at) == (3, created[0].created_at)
    with pytest.raises(ValueError, match="collection or a key"):
        await store.run_usage(hour_ago())


async def test_a_keys_caps_count_its_runs_in_every_collection(store: Store) -> None:
    gate = RunGate(hour_ago(), key_id="k1", key_live=2)
    assert await store.create_run(run("acme", "k1"), gate) is not None
    assert await store.create_run(run("beta", "k1"), gate) is not None
    assert await store.create_run(run("acme", "k1"), gate) is None
    # Another key of the same collection is not held back by k1's cap.
    assert await store.create_run(run("acme", "k2"), RunGate(hour_ago(), key_id="k2", key_live=2))
    assert (await store.run_usage(hour_ago(), key_id="k1")).live == 2


async def test_a_run_must_keep_the_collections_and_the_keys_caps(store: Store) -> None:
    gate = RunGate(hour_ago(), collection_live=3, key_id="k1", key_live=1)
    assert await store.create_run(run("acme", "k1"), gate) is not None
    assert await store.create_run(run("acme", "k1"), gate) is None
    other = RunGate(hour_ago(), collection_live=1, key_id="k2", key_live=5)
    assert await store.create_run(run("acme", "k2"), other) is None


async def test_two_servers_never_both_take_the_last_slot(database_url: str) -> None:
    stores = [make_store(database_url) for _ in range(2)]
    try:
        for one in stores:
            await one.migrate()
        gate = RunGate(hour_ago(), collection_live=3)
        created: list[object] = []

        async def race(one: Store) -> None:
            for _ in range(8):
                created.append(await one.create_run(run(), gate))

        async with anyio.create_task_group() as tg:
            for one in stores:
                for _ in range(3):
                    tg.start_soon(race, one)
        assert sum(item is not None for item in created) == 3
        assert (await stores[0].run_usage(hour_ago(), collection="acme")).live == 3
    finally:
        for one in stores:
            await one.close()


async def test_spend_adds_up_by_scope_and_day(store: Store) -> None:
    await store.add_spend(
        [
            SpendEntry("collection:acme", "2026-11-30", 1.5),
            SpendEntry("collection:acme", "2026-12-01", 0.25, calls=2),
            SpendEntry("key:k1", "2026-12-01", 0.25),
        ]
    )
    await store.add_spend([SpendEntry("collection:acme", "2026-12-01", 0.5)])
    await store.add_spend([])
    spent = await store.spend_since(["collection:acme", "key:k1", "key:k2"], "2026-12-01")
    assert spent == {"collection:acme": 0.75, "key:k1": 0.25, "key:k2": 0.0}
    assert await store.spend_since(["collection:acme"], "2026-11-01") == {"collection:acme": 2.25}
    assert await store.spend_since([], "2026-12-01") == {}


async def test_rate_buckets_move_on_from_the_later_of_now_and_their_time(store: Store) -> None:
    assert await store.rate_times(["collection:acme"]) == {}
    assert await store.advance_rates(
        [RateAdvance("collection:acme", 1000.0, 6.0), RateAdvance("key:k1", 1000.0, 1.0)]
    ) == {"collection:acme": 1006.0, "key:k1": 1001.0}
    # Behind the floor (idle for a while): from the floor. Ahead of it: from its own time.
    assert await store.advance_rates([RateAdvance("collection:acme", 2000.0, 6.0)]) == {
        "collection:acme": 2006.0
    }
    assert await store.advance_rates([RateAdvance("collection:acme", 1500.0, 3.0)]) == {
        "collection:acme": 2009.0
    }
    assert await store.advance_rates([]) == {}
    assert await store.rate_times(["collection:acme", "key:k1", "key:zz"]) == {
        "collection:acme": 2009.0,
        "key:k1": 1001.0,
    }


async def test_limits_set_at_runtime_are_merged_and_removed(store: Store) -> None:
    assert await store.collection_limits() == {}
    assert await store.update_collection_limits(
        "acme", {"max_concurrent_runs": 2, "budget_usd": 5.0}
    ) == {"max_concurrent_runs": 2, "budget_usd": 5.0}
    assert await store.update_collection_limits(
        "acme", {"budget_usd": None, "requests_per_minute": 60}
    ) == {"max_concurrent_runs": 2, "requests_per_minute": 60}
    await store.update_collection_limits("beta", {"runs_per_hour": 10})
    assert await store.collection_limits() == {
        "acme": {"max_concurrent_runs": 2, "requests_per_minute": 60},
        "beta": {"runs_per_hour": 10},
    }


async def test_a_keys_limits_are_kept_with_it(store: Store) -> None:
    limited = await store.create_key(
        "h1", "jp-111111", ("acme",), False, None, {"requests_per_minute": 5}
    )
    plain = await store.create_key("h2", "jp-222222", ("acme",), False, None)
    assert limited.limits == {"requests_per_minute": 5}
    assert (await store.find_key("h1")) == limited
    assert (await store.find_key("h2")) == plain
    assert plain.limits is None
