"""Fixtures shared by the run tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.store import Store
from tests.support.stores import make_store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    the_store = make_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    await the_store.migrate()
    try:
        yield the_store
    finally:
        await the_store.close()
