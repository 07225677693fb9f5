"""`Quotas`: the limits of collections and keys, checked before anything starts.

Wired once in the lifespan and kept running (`running`: a task that reconciles with the
database every ``sync_seconds``)::

    await quotas.admit_request(collection, key)      # every chat request; ~1 µs unlimited
    gate = await quotas.admit_run(collection, key)   # a run: budget and run caps, checked
    run = await store.create_run(new, gate)          # … and held, in the insert's transaction
    if run is None:
        raise await quotas.run_refusal(collection, key, gate)
    quotas.spent(collection, key_id, usd)            # each priced model call and chat

What is exact and what is not:

* live runs and runs per hour are the database's: `~proxy.store.Store.create_run` checks the
  caps in the transaction that inserts the run, so servers sharing a database share them;
* spend is the database's too, but a server adds its own to it every ``sync_seconds`` and
  reads the others' at the same pace; a request is checked against that view, so a budget
  can be passed by what is spent meanwhile (and by calls already going: a run that has
  started is never stopped by a limit);
* requests per minute are checked against this server's copy of each bucket (no database
  round trip on the relay's hot path), which it reconciles with the database's every
  ``sync_seconds``: N servers may admit up to N - 1 seconds' worth of the others' requests
  more than the limit before they see them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio

from proxy.quota.errors import QuotaExceeded, RateLimited
from proxy.quota.limits import (
    NO_LIMITS,
    Effective,
    Limits,
    Period,
    day_of,
    of_key,
    period_bounds,
    resolve,
)
from proxy.quota.rate import Bucket
from proxy.store import ApiKey, Store
from proxy.store.records import RateAdvance, RunGate, RunUsage, SpendEntry

logger = logging.getLogger("proxy.quota")

#: Retry-After for a run refused by a concurrency limit: when a run ends cannot be known, so
#: this is how often to look again, not a promise.
RUN_RETRY_SECONDS = 5.0
HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class QuotaConfig:
    """The limits in the config: the server's default and each collection's table."""

    default: Limits
    collections: Mapping[str, Limits]
    sync_seconds: float = 1.0


def collection_scope(collection: str) -> str:
    return f"collection:{collection}"


def key_scope(key_id: str) -> str:
    return f"key:{key_id}"


@dataclass(slots=True)
class _Spend:
    """A scope's spend in its current budget period, as last read from the database."""

    period: Period
    first_day: str
    ends: float
    usd: float


class Quotas:
    """This server's view of every limit, kept in step with the database (see module)."""

    def __init__(
        self, store: Store, config: QuotaConfig, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._config = config
        self._clock = clock
        # Limits set at runtime, by collection (the database's, re-read every sync).
        self._runtime: dict[str, dict[str, Any]] = {}
        self._effective: dict[str, Effective] = {}
        self._keys: dict[str, tuple[object, Effective]] = {}
        self._buckets: dict[str, Bucket] = {}
        self._spend: dict[str, _Spend] = {}
        # Spend not yet in the database: by (scope, day), and by scope for the checks; what
        # is being written now stays counted until the database's total is read back.
        self._owed: dict[tuple[str, str], list[float]] = {}
        self._owed_by_scope: defaultdict[str, float] = defaultdict(float)
        self._writing: defaultdict[str, float] = defaultdict(float)
        #: For /metrics, by collection: requests seen, dollars spent, runs live here,
        #: refusals by limit.
        self.requests: Counter[str] = Counter()
        self.spend: defaultdict[str, float] = defaultdict(float)
        self.live_runs: Counter[str] = Counter()
        self.refusals: Counter[tuple[str, str]] = Counter()

    # What holds.

    def limits(self, collection: str) -> Effective:
        """The collection's limits: runtime, else its table, else the server's default."""
        found = self._effective.get(collection)
        if found is None:
            found = resolve(
                self._runtime.get(collection),
                self._config.collections.get(collection),
                self._config.default,
            )
            self._effective[collection] = found
        return found

    def key_limits(self, key: ApiKey | None) -> Effective:
        """The key's own limits (none for the local user or a key without any)."""
        if key is None or not key.limits:
            return NO_LIMITS
        cached = self._keys.get(key.id)
        # The auth cache hands out the same record for a while: checked once per record.
        if cached is not None and cached[0] is key.limits:
            return cached[1]
        effective = of_key(key.limits)
        self._keys[key.id] = (key.limits, effective)
        return effective

    async def set_limits(self, collection: str, changes: Mapping[str, Any]) -> Effective:
        """Set limits at runtime (``None`` removes one: the config's holds again); they hold
        here at once, on other servers within ``sync_seconds``."""
        stored = await self._store.update_collection_limits(collection, changes)
        self._runtime[collection] = stored
        self._effective.pop(collection, None)
        return self.limits(collection)

    # Checks.

    async def admit_request(self, collection: str, key: ApiKey | None) -> None:
        """Count a chat request (relayed or runbook) and refuse it over a request rate or a
        spent budget (`RateLimited`, `QuotaExceeded`). Without limits: a few dict reads."""
        self.requests[collection] += 1
        limits = self._effective.get(collection) or self.limits(collection)
        mine = self.key_limits(key) if key is not None and key.limits else NO_LIMITS
        if not limits.on_requests and not mine.on_requests:
            return
        now = self._clock()
        scopes: list[tuple[str, Effective]] = []
        if limits.on_requests:
            scopes.append((collection_scope(collection), limits))
        if mine.on_requests and key is not None:
            scopes.append((key_scope(key.id), mine))
        for scope, held in scopes:
            if held.budget_usd is not None:
                await self._check_budget(collection, scope, held, now, exact=False)
        taking: list[tuple[Bucket, int]] = []
        for scope, held in scopes:
            per_minute = held.requests_per_minute
            if per_minute is None:
                continue
            bucket = self._buckets.get(scope) or await self._bucket(scope)
            wait = bucket.wait(now, per_minute)
            if wait > 0:
                self.refusals[collection, "requests_per_minute"] += 1
                raise RateLimited(
                    f"{_whose(scope)} is over its requests_per_minute ({per_minute});"
                    f" retry in {wait:.1f} s.",
                    retry_after=wait,
                    limit="requests_per_minute",
                )
            taking.append((bucket, per_minute))
        for bucket, per_minute in taking:
            bucket.take(now, per_minute)

    async def admit_run(self, collection: str, key: ApiKey | None) -> RunGate:
        """Refuse a run over a budget (the database's spend) or a run cap (the database's
        counts); else the gate its insert must pass (`~proxy.store.Store.create_run`), which
        holds the caps against runs started meanwhile, here or on other servers."""
        limits, mine = self.limits(collection), self.key_limits(key)
        now = self._clock()
        if limits.budget_usd is not None:
            await self._check_budget(collection, collection_scope(collection), limits, now)
        if key is not None and mine.budget_usd is not None:
            await self._check_budget(collection, key_scope(key.id), mine, now)
        gate = RunGate(
            # The database's time, as runs are stamped with it (not the clock of the checks).
            since=datetime.now(UTC) - HOUR,
            collection_live=limits.max_concurrent_runs,
            collection_recent=limits.runs_per_hour,
            key_id=key.id if key is not None else None,
            key_live=mine.max_concurrent_runs,
            key_recent=mine.runs_per_hour,
        )
        if gate.caps:
            refusal = await self._run_refusal(collection, gate)
            if refusal is not None:
                raise refusal
        return gate

    async def run_refusal(self, collection: str, gate: RunGate) -> RateLimited:
        """Why a run's insert was refused by ``gate`` (another run took the slot first)."""
        refusal = await self._run_refusal(collection, gate)
        if refusal is None:  # a slot freed since: say so
            self.refusals[collection, "max_concurrent_runs"] += 1
            return RateLimited(
                f"Collection '{collection}' had no free run slot; retry now.",
                retry_after=1,
                limit="max_concurrent_runs",
            )
        return refusal

    async def _run_refusal(self, collection: str, gate: RunGate) -> RateLimited | None:
        scopes = [("collection", collection, gate.collection_live, gate.collection_recent)]
        if gate.key_id is not None:
            scopes.append(("key", gate.key_id, gate.key_live, gate.key_recent))
        for kind, name, live_cap, recent_cap in scopes:
            if live_cap is None and recent_cap is None:
                continue
            scope = collection_scope(name) if kind == "collection" else key_scope(name)
            usage = await self.run_usage(scope, gate.since, cap=recent_cap)
            whose = _whose(scope)
            if live_cap is not None and usage.live >= live_cap:
                self.refusals[collection, "max_concurrent_runs"] += 1
                return RateLimited(
                    f"{whose} has {usage.live} runs going, its max_concurrent_runs"
                    f" ({live_cap}); retry once one ends.",
                    retry_after=RUN_RETRY_SECONDS,
                    limit="max_concurrent_runs",
                )
            if recent_cap is not None and usage.slot_frees_at is not None:
                wait = (usage.slot_frees_at + HOUR - datetime.now(UTC)).total_seconds()
                self.refusals[collection, "runs_per_hour"] += 1
                return RateLimited(
                    f"{whose} started {usage.recent} runs in the last hour, its runs_per_hour"
                    f" ({recent_cap}); the next may start in {max(wait, 1):.0f} s.",
                    retry_after=wait,
                    limit="runs_per_hour",
                )
        return None

    async def _check_budget(
        self, collection: str, scope: str, held: Effective, now: float, *, exact: bool = True
    ) -> None:
        budget = held.budget_usd
        assert budget is not None
        spent = await self.spent_in_period(scope, held.budget_period, now, exact=exact)
        if spent >= budget:
            self.refusals[collection, "budget_usd"] += 1
            known = self._spend[scope]
            raise QuotaExceeded(
                f"{_whose(scope)} has spent ${spent:.4f} of its budget_usd (${budget:g}) this"
                f" {held.budget_period}; it is renewed at"
                f" {datetime.fromtimestamp(known.ends, UTC).isoformat()}.",
                retry_after=known.ends - now,
                limit="budget_usd",
            )

    async def requests_used(self, scope: str, per_minute: int) -> int:
        """About how many requests of the last minute count against ``scope``."""
        bucket = self._buckets.get(scope) or await self._bucket(scope)
        return bucket.used(self._clock(), per_minute)

    async def run_usage(self, scope: str, since: datetime, cap: int | None = None) -> RunUsage:
        """The scope's live runs and those started since ``since`` (the database's)."""
        kind, _, name = scope.partition(":")
        if kind == "collection":
            return await self._store.run_usage(since, collection=name, cap=cap)
        return await self._store.run_usage(since, key_id=name, cap=cap)

    # Spend.

    def spent(self, collection: str, key_id: str | None, usd: float | None) -> None:
        """Count ``usd`` (one priced call or chat; None: unknown, counts nothing) against the
        collection and the key."""
        if not usd:
            return
        day = day_of(datetime.fromtimestamp(self._clock(), UTC))
        self.spend[collection] += usd
        scopes = [collection_scope(collection)]
        if key_id is not None:
            scopes.append(key_scope(key_id))
        for scope in scopes:
            owed = self._owed.setdefault((scope, day), [0.0, 0.0])
            owed[0] += usd
            owed[1] += 1
            self._owed_by_scope[scope] += usd

    async def spent_in_period(
        self, scope: str, period: Period, now: float, *, exact: bool = True
    ) -> float:
        """Dollars ``scope`` spent in its current ``period``: the database's total (read now
        when ``exact``, else as of the last sync) and what this server has not written yet."""
        known = self._spend.get(scope)
        if exact or known is None or known.period != period or now >= known.ends:
            first, ends = period_bounds(period, datetime.fromtimestamp(now, UTC))
            totals = await self._store.spend_since([scope], first.isoformat())
            known = _Spend(period, first.isoformat(), ends.timestamp(), totals[scope])
            self._spend[scope] = known
        return known.usd + self._owed_by_scope[scope] + self._writing[scope]

    # Keeping in step with the database.

    async def _bucket(self, scope: str) -> Bucket:
        """The scope's bucket, read from the database the first time this server needs it."""
        times = await self._store.rate_times([scope])
        bucket = self._buckets.setdefault(scope, Bucket())
        if scope in times:
            bucket.settle(times[scope])
        return bucket

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Reconcile with the database every ``sync_seconds`` while the block lasts; what is
        still owed is written at its end."""
        await self._read_limits()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._keep_in_step)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            try:
                await self.sync()
            except Exception as exc:
                logger.warning("could not write the last spend and request counts: %s", exc)

    async def _keep_in_step(self) -> None:
        while True:
            await anyio.sleep(self._config.sync_seconds)
            try:
                await self.sync()
            except Exception as exc:  # the next round tries again; nothing owed is lost
                logger.warning("could not bring limits in step with the database: %s", exc)

    async def sync(self) -> None:
        """Write what this server owes (spend, requests), read what every server did."""
        await self._write_spend()
        await self._write_rates()
        await self._read_limits()

    async def _write_spend(self) -> None:
        owed, self._owed = self._owed, {}
        moving, self._owed_by_scope = self._owed_by_scope, defaultdict(float)
        # Counted as being written until the database's totals, which hold it, are read back.
        for scope, usd in moving.items():
            self._writing[scope] += usd
        entries = [
            SpendEntry(scope, day, usd, int(calls)) for (scope, day), (usd, calls) in owed.items()
        ]
        try:
            await self._store.add_spend(entries)
        except BaseException:
            for key, (usd, calls) in owed.items():
                again = self._owed.setdefault(key, [0.0, 0.0])
                again[0] += usd
                again[1] += calls
            for scope, usd in moving.items():
                self._writing[scope] -= usd
                self._owed_by_scope[scope] += usd
            raise
        watched: dict[str, list[str]] = {}
        for scope, spend in self._spend.items():
            watched.setdefault(spend.first_day, []).append(scope)
        for first_day, scopes in watched.items():
            for scope, usd in (await self._store.spend_since(scopes, first_day)).items():
                known = self._spend.get(scope)
                if known is not None and known.first_day == first_day:
                    known.usd = usd
        self._writing = defaultdict(float)

    async def _write_rates(self) -> None:
        advances = []
        for scope, bucket in self._buckets.items():
            owing = bucket.owing()
            if owing is not None:
                advances.append(RateAdvance(scope, *owing))
        try:
            times = await self._store.advance_rates(advances)
        except BaseException:
            for advance in advances:
                self._buckets[advance.scope].owe_again(advance.floor, advance.add)
            raise
        others = [scope for scope in self._buckets if scope not in times]
        times.update(await self._store.rate_times(others))
        for scope, tat in times.items():
            self._buckets[scope].settle(tat)

    async def _read_limits(self) -> None:
        runtime = await self._store.collection_limits()
        if runtime != self._runtime:
            self._runtime = runtime
            self._effective.clear()


def _whose(scope: str) -> str:
    kind, _, name = scope.partition(":")
    return f"Collection '{name}'" if kind == "collection" else f"Key {name}"
