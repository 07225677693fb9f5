"""A live proxy whose store the test writes runs into (see tests/support/seeded.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from proxy.app import create_app
from proxy.settings import Settings
from tests.support.live import serve
from tests.support.seeded import Seeder

ProxyFactory = Callable[..., AbstractContextManager[str]]


@pytest.fixture
def seeder(tmp_path: Path) -> Seeder:
    return Seeder(tmp_path / "data")


@pytest.fixture
def make_proxy(tmp_path: Path) -> ProxyFactory:
    """Start a proxy on ``tmp_path/data`` with settings overrides; yields its base URL."""

    @contextmanager
    def start(**overrides: Any) -> Iterator[str]:
        fields: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "upstream_url": "http://127.0.0.1:9/v1",
            "auth_cache_seconds": 0.0,
            "events_poll_seconds": 0.05,
            "backend": "local",
        }
        fields.update(overrides)
        with serve(create_app(Settings(**fields))) as url:
            yield url

    return start
