"""What ``GET /api/v1/collections/{collection}/limits`` shows: each limit, where it comes
from, and the current usage next to it (the collection's, and the calling key's own)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from proxy.quota.limits import Effective, period_bounds
from proxy.quota.service import HOUR, Quotas, collection_scope, key_scope
from proxy.store import ApiKey


async def limits_report(quotas: Quotas, collection: str, key: ApiKey | None) -> dict[str, Any]:
    """The collection's limits and usage; with ``key``, the key's own under ``key``."""
    report = await _scope(quotas, quotas.limits(collection), collection_scope(collection))
    mine = None
    if key is not None:
        mine = {"id": key.id, **await _scope(quotas, quotas.key_limits(key), key_scope(key.id))}
    return {"collection": collection, **report, "key": mine}


async def _scope(quotas: Quotas, limits: Effective, scope: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    runs = await quotas.run_usage(scope, now - HOUR)
    per_minute = limits.requests_per_minute
    period = limits.budget_period
    _, renewed = period_bounds(period, now)
    sources = limits.sources

    def entry(name: str, used: float | None, **extra: Any) -> dict[str, Any]:
        return {"limit": getattr(limits, name), "used": used, "source": sources.get(name), **extra}

    return {
        "max_concurrent_runs": entry("max_concurrent_runs", runs.live),
        "runs_per_hour": entry("runs_per_hour", runs.recent),
        "requests_per_minute": entry(
            "requests_per_minute",
            await quotas.requests_used(scope, per_minute) if per_minute is not None else None,
        ),
        "budget_usd": entry(
            "budget_usd",
            round(await quotas.spent_in_period(scope, period, now.timestamp()), 6),
            period=period,
            renews_at=renewed.isoformat(),
        ),
    }
