"""Fixtures shared by the run tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from proxy.agents import get_adapter
from proxy.agents.install import AgentCache
from proxy.store import Store
from tests.support.fake_npm import write_fake_npm
from tests.support.stores import make_store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    the_store = make_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    await the_store.migrate()
    try:
        yield the_store
    finally:
        await the_store.close()


@pytest.fixture(scope="session")
def agent_cache(tmp_path_factory: pytest.TempPathFactory) -> AgentCache:
    """An agent cache with Claude Code installed (by the real installer, from a fake npm)."""
    root = tmp_path_factory.mktemp("agents")
    cache = AgentCache(root / "cache", npm=str(write_fake_npm(root)))
    anyio.run(cache.ensure, get_adapter("claude-code"))
    return cache
