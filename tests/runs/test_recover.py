"""Recovery after a restart: runs whose sandboxes were left behind are marked failed."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from proxy.relay.tokens import RunTokens
from proxy.runs.artifacts import ResultLimits
from proxy.runs.engine import SANDBOX_OF, EngineConfig, RunEngine
from proxy.store import Store
from proxy.store.blobs import LocalBlobStore

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
