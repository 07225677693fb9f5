"""Every limit enforced by `Quotas` on a real store of each engine, with a clock the tests
move: refusals and their Retry-After, windows and their reset, keys narrowing their
collection, limits set at runtime, and two servers sharing one database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from proxy.quota import Limits, QuotaConfig, QuotaExceeded, Quotas, RateLimited, limits_report
from proxy.store import ApiKey, Store
from proxy.store.faults import StoreUnavailable
from proxy.store.records import NewTrajectory
from tests.support.stores import make_store

pytestmark = pytest.mark.anyio

START = datetime(2026, 12, 31, 23, 0, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def quotas_on(
    store: Store,
    clock: Clock,
    *,
    default: Limits | None = None,
    **collections: Limits,
) -> Quotas:
    return Quotas(store, QuotaConfig(default or Limits(), collections), clock=clock)


def key(key_id: str = "k1", **limits: Any) -> ApiKey:
    return ApiKey(key_id, "jp-xxxxxx", ("acme",), False, datetime.now(UTC), limits=limits or None)


async def test_without_limits_a_request_is_only_counted(store: Store) -> None:
    quotas = quotas_on(store, Clock())
    for _ in range(1000):
        await quotas.admit_request("acme", key())
    assert quotas.requests["acme"] == 1000
    gate = await quotas.admit_run("acme", None)
    assert not gate.caps


async def test_requests_per_minute_refuses_with_an_honest_retry_after(store: Store) -> None:
    clock = Clock()
    quotas = quotas_on(store, clock, acme=Limits(requests_per_minute=3))
    for _ in range(3):
        await quotas.admit_request("acme", None)
    with pytest.raises(RateLimited) as refused:
        await quotas.admit_request("acme", None)
    error = refused.value
    assert (error.status_code, error.code, error.limit) == (
        429,
        "rate_limit_exceeded",
        "requests_per_minute",
    )
    assert error.headers() == {"x-should-retry": "true", "retry-after": "20"}
    assert error.body()["error"]["type"] == "rate_limit_error"
    # Other collections are not held back; this one is admitted again when it said.
    await quotas.admit_request("beta", None)
    clock.now += 19.5
    with pytest.raises(RateLimited):
        await quotas.admit_request("acme", None)
    clock.now += 0.5
    await quotas.admit_request("acme", None)
    assert quotas.refusals["acme", "requests_per_minute"] == 2


async def test_a_key_narrows_its_collection(store: Store) -> None:
    quotas = quotas_on(store, Clock(), acme=Limits(requests_per_minute=10))
    slow = key("slow", requests_per_minute=1)
    await quotas.admit_request("acme", slow)
    with pytest.raises(RateLimited, match="Key slow"):
        await quotas.admit_request("acme", slow)
    # The collection's other keys go on, up to the collection's own limit.
    for _ in range(9):
        await quotas.admit_request("acme", key("other"))
    with pytest.raises(RateLimited, match="Collection 'acme'"):
        await quotas.admit_request("acme", key("other"))
    # A key cannot be given more than its collection: its own higher limit changes nothing.
    with pytest.raises(RateLimited, match="Collection 'acme'"):
        await quotas.admit_request("acme", key("generous", requests_per_minute=1000))


async def test_a_refused_request_takes_nothing_from_the_other_bucket(store: Store) -> None:
    quotas = quotas_on(store, Clock(), acme=Limits(requests_per_minute=2))
    limited = key("k1", requests_per_minute=1)
    await quotas.admit_request("acme", limited)
    with pytest.raises(RateLimited):
        await quotas.admit_request("acme", limited)
    # The key's refusal did not count against the collection: one more still fits.
    await quotas.admit_request("acme", key("k2"))
    with pytest.raises(RateLimited):
        await quotas.admit_request("acme", key("k2"))


async def test_a_spent_budget_refuses_requests_and_runs_until_its_period_renews(
    store: Store,
) -> None:
    clock = Clock()
    quotas = quotas_on(store, clock, acme=Limits(budget_usd=1.0, budget_period="day"))
    await quotas.admit_request("acme", None)
    quotas.spent("acme", "k1", 0.6)
    await quotas.admit_request("acme", None)
    quotas.spent("acme", None, 0.5)
    quotas.spent("acme", None, None)  # unknown: counts nothing, refuses nothing
    with pytest.raises(QuotaExceeded) as refused:
        await quotas.admit_request("acme", None)
    error = refused.value
    assert (error.status_code, error.code, error.error_type) == (
        429,
        "insufficient_quota",
        "insufficient_quota",
    )
    # No retry helps before midnight UTC, an hour away.
    assert error.headers() == {"x-should-retry": "false", "retry-after": "3600"}
    with pytest.raises(QuotaExceeded):
        await quotas.admit_run("acme", None)
    await quotas.sync()
    assert await store.spend_since(["collection:acme", "key:k1"], "2026-12-31") == {
        "collection:acme": pytest.approx(1.1),
        "key:k1": pytest.approx(0.6),
    }
    clock.now += 3600
    await quotas.admit_request("acme", None)
    gate = await quotas.admit_run("acme", None)
    assert not gate.caps


async def test_a_monthly_budget_counts_the_whole_month(store: Store) -> None:
    clock = Clock(datetime(2026, 12, 15, tzinfo=UTC).timestamp())
    quotas = quotas_on(store, clock, default=Limits(budget_usd=2.0))
    quotas.spent("acme", None, 1.5)
    await quotas.sync()
    clock.now += 3 * 86400
    quotas.spent("acme", None, 0.5)
    with pytest.raises(QuotaExceeded, match="this month"):
        await quotas.admit_request("acme", None)
    clock.now = datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    await quotas.admit_request("acme", None)


async def test_a_keys_budget_counts_what_the_key_spent(store: Store) -> None:
    quotas = quotas_on(store, Clock())
    thrifty = key("k1", budget_usd=0.5)
    quotas.spent("acme", "k1", 0.5)
    with pytest.raises(QuotaExceeded, match="Key k1"):
        await quotas.admit_request("acme", thrifty)
    await quotas.admit_request("acme", key("k2", budget_usd=0.5))


async def runs_of(store: Store, quotas: Quotas, the_key: ApiKey | None, count: int) -> list[str]:
    started = []
    for _ in range(count):
        gate = await quotas.admit_run("acme", the_key)
        new = NewTrajectory("acme", "t", key_id=the_key.id if the_key else None)
        run = await store.create_run(new, gate)
        assert run is not None
        started.append(run.id)
    return started


async def test_max_concurrent_runs_refuses_while_they_run(store: Store) -> None:
    quotas = quotas_on(store, Clock(), acme=Limits(max_concurrent_runs=2))
    first, _ = await runs_of(store, quotas, None, 2)
    with pytest.raises(RateLimited) as refused:
        await quotas.admit_run("acme", None)
    assert refused.value.limit == "max_concurrent_runs"
    assert refused.value.headers()["retry-after"] == "5"
    assert "2 runs going" in refused.value.message
    await store.update_trajectory(first, status="completed")
    await runs_of(store, quotas, None, 1)


async def test_a_run_that_lost_the_race_for_the_slot_is_told_why(store: Store) -> None:
    quotas = quotas_on(store, Clock(), acme=Limits(max_concurrent_runs=1))
    gate = await quotas.admit_run("acme", None)
    # Another server takes the slot between the check and the insert.
    assert await store.create_run(NewTrajectory("acme", "t"), gate) is not None
    assert await store.create_run(NewTrajectory("acme", "t"), gate) is None
    refusal = await quotas.run_refusal("acme", gate)
    assert (refusal.limit, refusal.status_code) == ("max_concurrent_runs", 429)


async def test_runs_per_hour_says_when_the_oldest_run_leaves_the_window(store: Store) -> None:
    quotas = quotas_on(store, Clock(), default=Limits(runs_per_hour=2))
    await runs_of(store, quotas, None, 2)
    with pytest.raises(RateLimited) as refused:
        await quotas.admit_run("acme", None)
    assert refused.value.limit == "runs_per_hour"
    # The oldest run was created moments ago: its slot frees in (almost) an hour.
    assert 3590 <= refused.value.retry_after <= 3600


async def test_a_keys_run_caps_count_its_own_runs(store: Store) -> None:
    quotas = quotas_on(store, Clock(), acme=Limits(max_concurrent_runs=5))
    one_at_a_time = key("k1", max_concurrent_runs=1)
    await runs_of(store, quotas, one_at_a_time, 1)
    with pytest.raises(RateLimited, match="Key k1"):
        await quotas.admit_run("acme", one_at_a_time)
    await runs_of(store, quotas, key("k2"), 2)


async def test_limits_set_at_runtime_hold_at_once_and_elsewhere_after_a_sync(
    database_url: str,
) -> None:
    async with two_servers(database_url) as (here, there, _):
        await here.set_limits("acme", {"requests_per_minute": 1})
        await here.admit_request("acme", None)
        with pytest.raises(RateLimited):
            await here.admit_request("acme", None)
        await there.admit_request("acme", None)  # not seen there yet
        await here.sync()
        await there.sync()
        with pytest.raises(RateLimited):
            await there.admit_request("acme", None)
        # Removing it lets the config's (none) hold again.
        effective = await here.set_limits("acme", {"requests_per_minute": None})
        assert effective.requests_per_minute is None
        await here.admit_request("acme", None)


async def test_two_servers_share_request_rates_and_spend(database_url: str) -> None:
    async with two_servers(database_url, acme=Limits(requests_per_minute=4, budget_usd=1.0)) as (
        here,
        there,
        clock,
    ):
        for _ in range(3):
            await here.admit_request("acme", None)
        await here.sync()
        await there.sync()
        await there.admit_request("acme", None)
        with pytest.raises(RateLimited):
            await there.admit_request("acme", None)
        clock.now += 60
        here.spent("acme", None, 1.0)
        await here.sync()
        await there.sync()
        with pytest.raises(QuotaExceeded):
            await there.admit_request("acme", None)


@asynccontextmanager
async def two_servers(
    database_url: str, **collections: Limits
) -> AsyncIterator[tuple[Quotas, Quotas, Clock]]:
    clock = Clock()
    stores = [make_store(database_url) for _ in range(2)]
    try:
        for one in stores:
            await one.migrate()
        here, there = (quotas_on(one, clock, **collections) for one in stores)
        yield here, there, clock
    finally:
        for one in stores:
            await one.close()


async def test_the_report_shows_usage_next_to_each_limit(store: Store) -> None:
    clock = Clock(datetime.now(UTC).timestamp())
    quotas = quotas_on(
        store, clock, default=Limits(budget_usd=10.0), acme=Limits(max_concurrent_runs=3)
    )
    await quotas.set_limits("acme", {"requests_per_minute": 60})
    mine = key("k1", requests_per_minute=5)
    await quotas.admit_request("acme", mine)
    await quotas.admit_request("acme", mine)
    await runs_of(store, quotas, mine, 1)
    quotas.spent("acme", "k1", 0.25)
    report = await limits_report(quotas, "acme", mine)
    assert report["collection"] == "acme"
    assert report["max_concurrent_runs"] == {"limit": 3, "used": 1, "source": "config"}
    assert report["runs_per_hour"] == {"limit": None, "used": 1, "source": None}
    assert report["requests_per_minute"] == {"limit": 60, "used": 2, "source": "runtime"}
    budget = report["budget_usd"]
    assert (budget["limit"], budget["used"], budget["source"]) == (10.0, 0.25, "default")
    assert budget["period"] == "month" and budget["renews_at"].endswith("+00:00")
    assert report["key"]["id"] == "k1"
    assert report["key"]["requests_per_minute"] == {"limit": 5, "used": 2, "source": "key"}
    assert report["key"]["max_concurrent_runs"]["used"] == 1
    assert (await limits_report(quotas, "beta", None))["key"] is None


class FailingSpend:
    """The store, but writing spend fails while ``failing``."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.failing = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def add_spend(self, entries: Any) -> None:
        if self.failing:
            raise StoreUnavailable("the database is away")
        await self._store.add_spend(entries)


async def test_spend_that_cannot_be_written_is_kept_for_the_next_sync(store: Store) -> None:
    failing = FailingSpend(store)
    quotas = quotas_on(cast(Store, failing), Clock())
    quotas.spent("acme", None, 0.5)
    with pytest.raises(StoreUnavailable):
        await quotas.sync()
    assert await quotas.spent_in_period("collection:acme", "month", START) == 0.5
    failing.failing = False
    await quotas.sync()
    await quotas.sync()
    assert await store.spend_since(["collection:acme"], "2026-12-01") == {"collection:acme": 0.5}
    assert await quotas.spent_in_period("collection:acme", "month", START) == 0.5
