"""A live proxy in front of a live scripted upstream, for the HTTP edge tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from proxy.app import create_app
from proxy.settings import Settings
from tests.support.live import serve
from tests.support.scripted_openai import ScriptedUpstream

ProxyFactory = Callable[..., AbstractContextManager[str]]


@pytest.fixture
def upstream() -> Iterator[tuple[ScriptedUpstream, str]]:
    scripted = ScriptedUpstream()
    with serve(scripted.app()) as url:
        yield scripted, url + "/v1"


@pytest.fixture
def make_proxy(tmp_path: Path, upstream: tuple[ScriptedUpstream, str]) -> ProxyFactory:
    """Start a proxy with settings overrides; yields its base URL (without /v1)."""

    @contextmanager
    def start(**overrides: Any) -> Iterator[str]:
        fields: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "upstream_url": upstream[1],
            "upstream_api_key": "sk-upstream-secret",
            "keepalive_seconds": 15.0,
            "auth_cache_seconds": 0.0,
            "backend": "local",
        }
        fields.update(overrides)
        settings = Settings(**fields)
        with serve(create_app(settings), settings=settings) as url:
            yield url

    return start


@pytest.fixture
def proxy(make_proxy: ProxyFactory) -> Iterator[str]:
    with make_proxy() as url:
        yield url
