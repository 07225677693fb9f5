"""Recovery tests' parts: sandboxes left on a scripted engine, an engine over it, statuses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from proxy.runs.engine import RunEngine
from proxy.runs.presence import Presence
from proxy.sandbox import SandboxSpec, Script, ScriptedBackend
from proxy.sandbox.base import LABEL_OWNER, LABEL_SERVER
from proxy.store import Store
from proxy.store.records import Trajectory
from tests.support.runs import OWNER, runs_on


async def left_on(labelled: dict[str, str | None], *, owner: str = OWNER) -> ScriptedBackend:
    """An engine holding a sandbox for each run id, launched by the server named (or by an
    older version, which named none), of this installation (``owner``)."""
    backend = ScriptedBackend(lambda _: Script(hang=True))
    await leave(backend, labelled, owner=owner)
    return backend


async def leave(
    backend: ScriptedBackend, labelled: dict[str, str | None], *, owner: str = OWNER
) -> None:
    for run_id, server in labelled.items():
        labels = {LABEL_OWNER: owner} | ({LABEL_SERVER: server} if server else {})
        spec = SandboxSpec(run_id=run_id, collection="acme", image="i", argv=["a"], labels=labels)
        await (await backend.launch(spec)).start()


def still_there(backend: ScriptedBackend) -> list[str]:
    return [sandbox.run_id for sandbox in backend.open_sandboxes]


@asynccontextmanager
async def engine_on(
    store: Store,
    tmp_path: Path,
    backend: ScriptedBackend,
    *,
    presence: Presence | None = None,
    **config: Any,
) -> AsyncIterator[RunEngine]:
    async with runs_on(store, tmp_path, backend, presence=presence, **config) as runs:
        yield runs.engine


async def statuses_of(store: Store, *records: Trajectory) -> list[tuple[str, str | None]]:
    statuses: list[tuple[str, str | None]] = []
    for record in records:
        fetched = await store.get_trajectory(record.id)
        assert fetched is not None
        statuses.append((fetched.status, fetched.error))
    return statuses


INTERRUPTED = ("failed", "interrupted: the proxy stopped while the run was live")
