"""Recovery after a restart: runs whose sandboxes were left behind are marked failed."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest

from proxy.app import create_app
from proxy.relay.tokens import RunTokens
from proxy.runs.artifacts import ResultLimits
from proxy.runs.engine import SANDBOX_OF, EngineConfig, RunEngine
from proxy.runs.runtime import sandbox_owner
from proxy.sandbox.local import installation_dir
from proxy.settings import Settings
from proxy.store import Store
from proxy.store.blobs import LocalBlobStore
from tests.support.live import serve
from tests.support.stores import make_store

pytestmark = pytest.mark.anyio


class _Leftovers:
    """A backend that finds sandboxes labelled with the given run ids."""

    name = "docker"

    def __init__(self, labelled: list[str]) -> None:
        self.labelled = labelled
        self.owner: str | None = None

    async def remove_orphans(self, keep_run_ids: set[str], owner: str | None = None) -> list[str]:
        self.owner = owner
        return [run_id for run_id in self.labelled if run_id not in keep_run_ids]


async def test_a_follow_up_in_a_kept_sandbox_is_recovered_through_its_label(
    store: Store, tmp_path: Path
) -> None:
    first = await store.create_trajectory("acme", "chat", status="completed")
    follow_up = await store.create_trajectory(
        "acme", "chat", status="running", environment={SANDBOX_OF: first.id}
    )
    own = await store.create_trajectory("acme", "chat", status="running")
    elsewhere = await store.create_trajectory("acme", "chat", status="running")
    backend = _Leftovers([first.id, own.id, ""])
    async with anyio.create_task_group() as tg:
        engine = RunEngine(
            store=store,
            blobs=LocalBlobStore(tmp_path / "blobs"),
            backend=backend,  # type: ignore[arg-type]
            tokens=RunTokens(),
            config=EngineConfig(
                relay_socket=tmp_path / "relay.sock",
                results=ResultLimits(1024, 10),
                owner="me",
            ),
            task_group=tg,
        )
        await engine.recover()
    assert backend.owner == "me"
    statuses = {}
    for record in (first, follow_up, own, elsewhere):
        fetched = await store.get_trajectory(record.id)
        assert fetched is not None
        statuses[record.id] = (fetched.status, fetched.error)
    interrupted = "interrupted: the proxy stopped while the run was live"
    assert statuses[first.id] == ("completed", None)
    assert statuses[follow_up.id] == ("failed", interrupted)
    assert statuses[own.id] == ("failed", interrupted)
    # Another proxy's live run (no sandbox of ours) is left alone.
    assert statuses[elsewhere.id] == ("running", None)


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
        # The proxy stopped cleanly: no run left, and their base gone with them.
        assert not base.exists()
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
