"""Recovery: the sandboxes and runs of servers that stopped are removed and failed, at start
and by the servers still running; those of live servers are left alone."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from proxy.app import create_app
from proxy.runs.launch import SANDBOX_OF, SERVER
from proxy.runs.runtime import sandbox_owner
from proxy.sandbox.rundirs import installation_dir
from proxy.settings import Settings
from proxy.store import Store, StoreError
from tests.support.leftovers import (
    INTERRUPTED,
    engine_on,
    leave,
    left_on,
    statuses_of,
    still_there,
)
from tests.support.live import serve
from tests.support.stores import make_store

pytestmark = pytest.mark.anyio


async def test_a_follow_up_in_a_kept_sandbox_is_recovered_through_its_label(
    store: Store, tmp_path: Path
) -> None:
    first = await store.create_trajectory("acme", "chat", status="completed")
    follow_up = await store.create_trajectory(
        "acme", "chat", status="running", environment={SANDBOX_OF: first.id}
    )
    own = await store.create_trajectory("acme", "chat", status="running")
    elsewhere = await store.create_trajectory("acme", "chat", status="running")
    backend = await left_on({first.id: None, own.id: None, "": None})
    await leave(backend, {"theirs": None}, owner="another installation")
    async with engine_on(store, tmp_path, backend) as engine:
        await engine.recover()
    assert still_there(backend) == ["theirs"]
    assert await statuses_of(store, first, follow_up, own, elsewhere) == [
        ("completed", None),
        INTERRUPTED,
        INTERRUPTED,
        # A run with no sandbox and no server named (an older version's) is left alone.
        ("running", None),
    ]


async def test_the_sandboxes_and_runs_of_live_servers_are_theirs(
    store: Store, tmp_path: Path
) -> None:
    await store.beat("alive")
    runs = {
        server: await store.create_trajectory(
            "acme", "chat", status="running", environment={SERVER: server}
        )
        for server in ("alive", "me-1", "gone")
    }
    # "gone" beat long ago: its run is failed even though no sandbox of it is left.
    backend = await left_on({runs["alive"].id: "alive", runs["me-1"].id: "me-1"})
    async with engine_on(store, tmp_path, backend, server_id="me-1") as engine:
        await engine.beat()
        assert await engine.recover() == []
    assert still_there(backend) == [runs["alive"].id, runs["me-1"].id]
    assert await statuses_of(store, *runs.values()) == [
        ("running", None),
        ("running", None),
        INTERRUPTED,
    ]


async def test_a_server_that_stops_beating_is_swept_up_by_a_live_one(
    store: Store, tmp_path: Path
) -> None:
    await store.beat("crashed")
    run = await store.create_trajectory(
        "acme", "chat", status="running", environment={SERVER: "crashed"}
    )
    backend = await left_on({run.id: "crashed"})
    async with (
        engine_on(store, tmp_path, backend, server_id="me-1", **_quick(0.3, 0.05)) as engine,
        anyio.create_task_group() as tg,
    ):
        await engine.beat()
        assert await engine.recover() == []  # "crashed" beat a moment ago: alive
        tg.start_soon(engine.keep_beating)
        with anyio.fail_after(5):
            while still_there(backend):
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    assert await statuses_of(store, run) == [INTERRUPTED]
    assert "me-1" in await store.live_servers(datetime.now(UTC) - timedelta(seconds=1))
    # The crashed server's record goes a day after its last beat, not before.
    assert "crashed" in await store.live_servers(datetime.now(UTC) - timedelta(hours=1))


async def test_no_server_is_judged_by_one_that_missed_a_beat(store: Store, tmp_path: Path) -> None:
    # After a database outage everyone's beats are late: a server that could not beat
    # either waits a whole stale period of good beats before it judges others.
    run = await store.create_trajectory(
        "acme", "chat", status="running", environment={SERVER: "other"}
    )
    backend = await left_on({run.id: "other"})
    failing = _FailingBeats(store, failures=5)
    async with (
        engine_on(failing, tmp_path, backend, server_id="me-1", **_quick(0.4, 0.02)) as engine,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(engine.keep_beating)
        with anyio.fail_after(5):
            while failing.beats < failing.failures:
                await anyio.sleep(0.01)
        recovered_at = anyio.current_time()
        with anyio.fail_after(5):
            while still_there(backend):
                await anyio.sleep(0.01)
        waited = anyio.current_time() - recovered_at
        tg.cancel_scope.cancel()
    assert waited >= 0.4 - 0.05, waited
    assert await statuses_of(store, run) == [INTERRUPTED]


def _quick(stale: float, sweep: float) -> dict[str, Any]:
    """Test timings: a beat every 20 ms, gone after ``stale``, a sweep every ``sweep``."""
    return {"heartbeat_seconds": 0.02, "server_stale_seconds": stale, "sweep_seconds": sweep}


class _FailingBeats:
    """The store, but its first ``failures`` beats fail as with the database away."""

    def __init__(self, store: Store, failures: int) -> None:
        self._store = store
        self.failures = failures
        self.beats = 0

    async def beat(self, server_id: str) -> None:
        self.beats += 1
        if self.beats <= self.failures:
            raise StoreError("the database is away")
        await self._store.beat(server_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_a_restarted_proxy_fails_the_local_runs_a_crashed_one_left(tmp_path: Path) -> None:
    """The local backend's runs live in the installation's directory, so a proxy started
    after a crash kills and removes what is left there and marks those runs failed."""
    settings = Settings(data_dir=tmp_path / "data", backend="local", local_bwrap=False)

    async def create() -> str:
        store = make_store(settings.database)
        await store.migrate()
        try:
            return (await store.create_trajectory("acme", "chat", status="running")).id
        finally:
            await store.close()

    run_id = anyio.run(create)
    base = installation_dir(sandbox_owner(settings))
    assert base is not None

    # A proxy process that starts a run and dies without cleaning up.
    crashed = subprocess.run(
        [sys.executable, "-c", _CRASH, str(base), run_id],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    run_dir, pid = Path(crashed.stdout.split()[0]), int(crashed.stdout.split()[1])
    try:
        with serve(create_app(settings)) as url:
            record = httpx.get(f"{url}/api/v1/db/trajectory/acme/chat/{run_id}").json()
            assert (record["status"], record["error"]) == (
                "failed",
                "interrupted: the proxy stopped while the run was live",
            )
            assert not run_dir.exists()
            assert _dead_within(pid, 5)
            # The server holds its lock file (see proxy.runs.presence) while it runs.
            assert len(list((settings.data_dir / "servers").glob("*.lock"))) == 1
        # The proxy stopped cleanly: no run left, their base gone with them, and its lock.
        assert not base.exists()
        assert list((settings.data_dir / "servers").iterdir()) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)


_CRASH = """
import os, sys, anyio
from pathlib import Path
from proxy.sandbox import SandboxSpec
from proxy.sandbox.local import LocalBackend

async def main():
    spec = SandboxSpec(run_id=sys.argv[2], collection="acme", image="local",
                       argv=["sh", "-c", "echo $$; sleep 300"])
    sandbox = await LocalBackend(Path(sys.argv[1]), use_bwrap=False).launch(spec)
    await sandbox.start()
    pid = await sandbox.stdout_lines().__anext__()
    print(sandbox.run_dir, pid, flush=True)
    os._exit(0)

anyio.run(main)
"""


def _dead_within(pid: int, seconds: float) -> bool:
    """True once ``pid`` is gone (or a zombie not yet reaped)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return True
        time.sleep(0.02)
    return False
