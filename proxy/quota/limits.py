"""What a collection or a key may use, where each limit comes from, and the budget's periods.

A collection's limits are, field by field, the ones set at runtime (``PATCH
/api/v1/collections/{collection}/limits``), else its ``[collections.NAME]`` table, else the
server's ``[default_limits]``. A key's own limits (``keys create --rpm …``) count what that key
does, in all its collections, on top of its collections' limits: a key can only be held to
less than its collection, never given more.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Period = Literal["day", "month"]
Source = Literal["runtime", "config", "default", "key"]
DEFAULT_PERIOD: Period = "month"


class Limits(BaseModel):
    """Limits as they are written (TOML tables, a PATCH body, a key): a field left out (or
    ``None``) limits nothing."""

    model_config = ConfigDict(extra="forbid")

    max_concurrent_runs: int | None = Field(
        default=None, ge=1, description="runs live (pending or running) at once"
    )
    runs_per_hour: int | None = Field(
        default=None, ge=1, description="runs started in any 60 minutes"
    )
    requests_per_minute: int | None = Field(
        default=None,
        ge=1,
        description="chat completion requests (relayed and runbook) per minute",
    )
    budget_usd: float | None = Field(
        default=None, ge=0, description="US dollars of model calls per budget_period"
    )
    budget_period: Period | None = Field(
        default=None, description="day or month (UTC calendar); default month"
    )

    def set_fields(self) -> dict[str, Any]:
        """The fields that are set, by name."""
        return {name: value for name, value in self.model_dump().items() if value is not None}


LIMIT_NAMES: tuple[str, ...] = tuple(Limits.model_fields)


@dataclass(frozen=True, slots=True)
class Effective:
    """The limits that hold for a collection (or a key), and where each came from."""

    max_concurrent_runs: int | None = None
    runs_per_hour: int | None = None
    requests_per_minute: int | None = None
    budget_usd: float | None = None
    budget_period: Period = DEFAULT_PERIOD
    sources: Mapping[str, Source] = field(default_factory=dict)

    @property
    def on_requests(self) -> bool:
        """Whether a chat request is limited at all (the hot path asks only this)."""
        return self.requests_per_minute is not None or self.budget_usd is not None

    @property
    def on_runs(self) -> bool:
        return self.max_concurrent_runs is not None or self.runs_per_hour is not None

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in LIMIT_NAMES}


NO_LIMITS = Effective()


def resolve(
    runtime: Mapping[str, Any] | None, configured: Limits | None, default: Limits
) -> Effective:
    """Field by field: ``runtime`` (set through the API), else ``configured`` (the
    collection's table), else ``default`` (the server's)."""
    layers: list[tuple[Source, Mapping[str, Any]]] = [
        ("runtime", runtime or {}),
        ("config", configured.set_fields() if configured is not None else {}),
        ("default", default.set_fields()),
    ]
    values: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    for name in LIMIT_NAMES:
        for source, layer in layers:
            if layer.get(name) is not None:
                values[name], sources[name] = layer[name], source
                break
    return Effective(**values, sources=sources)


def of_key(limits: Mapping[str, Any] | None) -> Effective:
    """A key's own limits, as stored with it."""
    if not limits:
        return NO_LIMITS
    checked = Limits.model_validate(limits).set_fields()
    return Effective(**checked, sources=dict.fromkeys(checked, "key"))


def day_of(moment: datetime) -> str:
    """The UTC day of ``moment``, as spend is kept (ISO date)."""
    return moment.astimezone(UTC).date().isoformat()


def period_bounds(period: Period, moment: datetime) -> tuple[date, datetime]:
    """The first day of ``moment``'s budget period (UTC), and when the next period begins."""
    today = moment.astimezone(UTC).date()
    if period == "day":
        first, following = today, today + timedelta(days=1)
    else:
        first = today.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
    return first, datetime(following.year, following.month, following.day, tzinfo=UTC)
