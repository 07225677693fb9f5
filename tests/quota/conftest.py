"""Quota tests run on each engine's store (see ``tests.support.stores``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from proxy.store import Store
from tests.support.stores import database_url_fixture, make_store

__all__ = ["database_url_fixture"]


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    the_store = make_store(database_url)
    await the_store.migrate()
    try:
        yield the_store
    finally:
        await the_store.close()
