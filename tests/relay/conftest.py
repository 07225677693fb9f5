"""A live relay in front of a live scripted Anthropic upstream."""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.types import ASGIApp

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


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test runner owns signals
        pass


@contextmanager
def serve_unix(app: ASGIApp) -> Iterator[Path]:
    """Run ``app`` on a unix socket until the block ends; yields the socket's path."""
    # Socket paths are limited to ~100 bytes, too few for pytest's tmp_path.
    with tempfile.TemporaryDirectory(prefix="relay-") as directory:
        path = Path(directory) / "relay.sock"
        config = uvicorn.Config(
            app, uds=str(path), log_level="warning", lifespan="on", loop="asyncio"
        )
        server = _Server(config)
        thread = threading.Thread(target=server.run, name="uvicorn-uds", daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server on a unix socket did not start")
            time.sleep(0.005)
        try:
            yield path
        finally:
            server.should_exit = True
            thread.join(timeout=10)
