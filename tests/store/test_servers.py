"""Serving processes' heartbeats, on each engine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
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


async def test_servers_silent_for_long_are_forgotten(store: Store) -> None:
    await store.beat("old")
    cut = datetime.now(UTC) + timedelta(milliseconds=1)
    assert await store.forget_servers_before(cut) == 1
    await anyio.sleep(0.01)  # past the cut
    await store.beat("new")
    assert await store.forget_servers_before(cut) == 0
    assert await store.live_servers(datetime.now(UTC) - timedelta(hours=1)) == {"new"}
