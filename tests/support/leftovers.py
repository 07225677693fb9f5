"""Recovery tests' parts: a backend with scripted leftovers, an engine over it, statuses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from proxy.relay.tokens import RunTokens
from proxy.runs.artifacts import ResultLimits
from proxy.runs.engine import EngineConfig, RunEngine
from proxy.runs.presence import Presence
from proxy.sandbox import Orphans
from proxy.store import Store
from proxy.store.blobs import LocalBlobStore
from proxy.store.records import Trajectory


class Leftovers:
    """A backend that finds sandboxes: run id -> the server that launched it (or None)."""

    name = "docker"

    def __init__(self, labelled: dict[str, str | None]) -> None:
        self.labelled = labelled
        self.owner: str | None = None
        self.live_servers: set[str] = set()

    async def remove_orphans(self, orphans: Orphans) -> list[str]:
        self.owner, self.live_servers = orphans.owner, set(orphans.live_servers)
        removed = [
            run_id for run_id, server in self.labelled.items() if not orphans.kept(run_id, server)
        ]
        for run_id in removed:
            del self.labelled[run_id]
        return removed


@asynccontextmanager
async def engine_on(
    store: Store,
    tmp_path: Path,
    backend: Leftovers,
    *,
    presence: Presence | None = None,
    **config: Any,
) -> AsyncIterator[RunEngine]:
    async with anyio.create_task_group() as tg:
        yield RunEngine(
            store=store,
            blobs=LocalBlobStore(tmp_path / "blobs"),
            backend=backend,  # type: ignore[arg-type]
            tokens=RunTokens(),
            config=EngineConfig(
                relay_socket=tmp_path / "relay.sock",
                results=ResultLimits(1024, 10),
                owner="me",
                **config,
            ),
            task_group=tg,
            presence=presence,
        )
        tg.cancel_scope.cancel()


async def statuses_of(store: Store, *records: Trajectory) -> list[tuple[str, str | None]]:
    statuses: list[tuple[str, str | None]] = []
    for record in records:
        fetched = await store.get_trajectory(record.id)
        assert fetched is not None
        statuses.append((fetched.status, fetched.error))
    return statuses


INTERRUPTED = ("failed", "interrupted: the proxy stopped while the run was live")
