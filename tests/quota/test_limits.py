"""Where each limit comes from, keys' own limits, and the budget's periods."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from proxy.quota.limits import Limits, day_of, of_key, period_bounds, resolve
from proxy.settings import load_settings


def test_each_limit_comes_from_runtime_else_the_collection_else_the_default() -> None:
    effective = resolve(
        {"max_concurrent_runs": 1},
        Limits(max_concurrent_runs=4, requests_per_minute=30),
        Limits(requests_per_minute=600, runs_per_hour=100, budget_usd=50.0),
    )
    assert effective.as_dict() == {
        "max_concurrent_runs": 1,
        "runs_per_hour": 100,
        "requests_per_minute": 30,
        "budget_usd": 50.0,
        "budget_period": "month",
    }
    assert dict(effective.sources) == {
        "max_concurrent_runs": "runtime",
        "requests_per_minute": "config",
        "runs_per_hour": "default",
        "budget_usd": "default",
    }
    assert effective.on_requests and effective.on_runs


def test_nothing_configured_limits_nothing() -> None:
    effective = resolve(None, None, Limits())
    assert not effective.on_requests and not effective.on_runs
    assert effective.as_dict()["budget_period"] == "month"
    assert not resolve(None, Limits(max_concurrent_runs=2), Limits()).on_requests


def test_a_keys_limits_are_its_own() -> None:
    mine = of_key({"requests_per_minute": 5, "budget_usd": 1.5, "budget_period": "day"})
    assert (mine.requests_per_minute, mine.budget_usd, mine.budget_period) == (5, 1.5, "day")
    assert set(mine.sources.values()) == {"key"}
    assert not of_key(None).on_requests and not of_key({}).on_runs
    with pytest.raises(ValidationError):
        of_key({"requests_per_minute": 0})


def test_budget_periods_are_utc_calendar_days_and_months() -> None:
    moment = datetime(2026, 12, 31, 23, 59, tzinfo=UTC)
    assert period_bounds("day", moment) == (
        date(2026, 12, 31),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert period_bounds("month", moment) == (
        date(2026, 12, 1),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert period_bounds("month", datetime(2027, 2, 1, tzinfo=UTC))[1] == datetime(
        2027, 3, 1, tzinfo=UTC
    )
    assert day_of(moment) == "2026-12-31"


def test_limits_are_read_from_the_toml_config(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        "[default_limits]\nrequests_per_minute = 600\n\n"
        '[collections.acme]\nnetwork = "allowed"\nmax_concurrent_runs = 2\n'
        'budget_usd = 25.0\nbudget_period = "day"\n'
    )
    settings = load_settings(config, data_dir=tmp_path)
    assert settings.default_limits == Limits(requests_per_minute=600)
    acme = settings.collections["acme"]
    assert (acme.network, acme.max_concurrent_runs, acme.budget_usd, acme.budget_period) == (
        "allowed",
        2,
        25.0,
        "day",
    )


@pytest.mark.parametrize(
    "table",
    [
        "[collections.acme]\nmax_concurrent_runs = 0\n",
        "[collections.acme]\nbudget_usd = -1\n",
        '[collections.acme]\nbudget_period = "week"\n',
        "[default_limits]\nrequests_per_second = 5\n",
    ],
)
def test_a_bad_limit_is_refused_at_start(tmp_path: Path, table: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(table)
    with pytest.raises(ValueError, match=r"limits|collections"):
        load_settings(config, data_dir=tmp_path)
