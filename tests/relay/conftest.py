"""A live relay in front of a live scripted Anthropic upstream."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from proxy.relay.app import create_relay_app
from proxy.relay.tokens import ModelUsage, RunTokens
from proxy.settings import Settings
from tests.support.live import serve
from tests.support.scripted_anthropic import ScriptedAnthropic

REAL_KEY = "sk-ant-real-upstream-key"
RelayFactory = Callable[..., AbstractContextManager[str]]
UsageLog = list[tuple[str, ModelUsage]]


@pytest.fixture
def scripted() -> Iterator[tuple[ScriptedAnthropic, str]]:
    upstream = ScriptedAnthropic()
    with serve(upstream.app()) as url:
        yield upstream, url


@pytest.fixture
def tokens() -> RunTokens:
    return RunTokens()


@pytest.fixture
def usage_log() -> UsageLog:
    return []


@pytest.fixture
def make_settings(
    tmp_path: Path, scripted: tuple[ScriptedAnthropic, str]
) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        fields: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "anthropic_base_url": scripted[1],
            "anthropic_api_key": REAL_KEY,
        }
        fields.update(overrides)
        return Settings(**fields)

    return build


@pytest.fixture
def make_relay(
    tokens: RunTokens, usage_log: UsageLog, make_settings: Callable[..., Settings]
) -> RelayFactory:
    """Start a relay with settings overrides; yields its base URL."""

    async def record(run_id: str, usage: ModelUsage) -> None:
        usage_log.append((run_id, usage))

    @contextmanager
    def start(**overrides: Any) -> Iterator[str]:
        app = create_relay_app(tokens, make_settings(**overrides), on_usage=record)
        with serve(app) as url:
            yield url

    return start


@pytest.fixture
def relay(make_relay: RelayFactory) -> Iterator[str]:
    with make_relay() as url:
        yield url
