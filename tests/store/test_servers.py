"""Serving processes' heartbeats, on each engine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from proxy.store import Store

pytestmark = pytest.mark.anyio


async def test_a_server_is_live_from_its_last_beat_on(store: Store) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    await store.beat("a")
    await store.beat("b")
    assert await store.live_servers(before) == {"a", "b"}
    assert await store.live_servers(datetime.now(UTC) + timedelta(seconds=1)) == set()
    # A later beat moves the server's time on.
    await store.beat("a")
    assert await store.live_servers(datetime.now(UTC) - timedelta(milliseconds=100)) >= {"a"}


async def test_a_forgotten_server_is_not_live(store: Store) -> None:
    await store.beat("a")
    await store.forget_server("a")
    await store.forget_server("never-beat")
    assert await store.live_servers(datetime.now(UTC) - timedelta(hours=1)) == set()
