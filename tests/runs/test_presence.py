"""Servers of one machine: a lock file each, free once its process is gone, however it ended."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy.runs.launch import SERVER
from proxy.runs.presence import Presence
from proxy.store import Store
from tests.support.leftovers import INTERRUPTED, engine_on, left_on, statuses_of, still_there

pytestmark = pytest.mark.anyio

_CRASH = """
import os, sys
from pathlib import Path
from proxy.runs.presence import Presence
Presence(Path(sys.argv[1]), sys.argv[2]).claim()
os._exit(0)
"""


def _crashed_server(directory: Path, server_id: str) -> None:
    """A server process that claimed its lock and died without a word."""
    subprocess.run([sys.executable, "-c", _CRASH, str(directory), server_id], check=True)


def test_a_held_lock_is_a_running_server_and_a_free_one_a_gone_one(tmp_path: Path) -> None:
    me, other = Presence(tmp_path, "me"), Presence(tmp_path, "other")
    me.claim()
    other.claim()
    _crashed_server(tmp_path, "crashed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crashed.lock", "me.lock", "other.lock"]
    assert me.gone() == {"crashed"}
    assert not (tmp_path / "crashed.lock").exists()  # judged once
    assert me.gone() == set()
    other.release()  # a clean stop leaves nothing to judge
    assert sorted(p.name for p in tmp_path.iterdir()) == ["me.lock"]
    assert me.gone() == set()
    me.release()
    assert list(tmp_path.iterdir()) == []


def test_gone_before_any_server_made_the_directory(tmp_path: Path) -> None:
    assert Presence(tmp_path / "absent", "me").gone() == set()


async def test_a_crashed_server_of_this_machine_is_gone_before_its_heartbeat_is_stale(
    store: Store, tmp_path: Path
) -> None:
    # It beat a moment ago (a restart right after a crash), but its lock is free.
    await store.beat("crashed")
    await store.beat("running")
    runs = [
        await store.create_trajectory(
            "acme", "chat", status="running", environment={SERVER: server}
        )
        for server in ("crashed", "running")
    ]
    locks = tmp_path / "servers"
    _crashed_server(locks, "crashed")
    running = Presence(locks, "running")
    running.claim()
    me = Presence(locks, "me")
    me.claim()
    backend = await left_on({runs[0].id: "crashed", runs[1].id: "running"})
    try:
        async with engine_on(store, tmp_path, backend, server_id="me", presence=me) as engine:
            assert await engine.recover() == [runs[0].id]
    finally:
        running.release()
        me.release()
    assert still_there(backend) == [runs[1].id]
    assert await statuses_of(store, *runs) == [INTERRUPTED, ("running", None)]
