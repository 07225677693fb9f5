"""Two servers on one database: what one decides about the other's runs, the other learns
through the database — a cancel stops the run, a turn continued elsewhere releases the kept
sandbox.

Each server has its own store instance (its own connections, notifier and listener), its own
scripted engine and its own id; they share the database and the blobs. On PostgreSQL a server
reads its runs' records only once in ten minutes, so only the database's notifications can
tell it in time; on SQLite, which tells nothing across processes, it reads them every 50 ms.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from proxy.agents.install import AgentCache
from proxy.events import Progress
from proxy.runs.followup import CONTINUED_BY
from proxy.runs.launch import LIVE_STATUSES, SANDBOX_OF, SERVER
from proxy.runs.service import Runs
from proxy.sandbox import Script, ScriptedBackend, ScriptedSandbox
from tests.support.runs import (
    CLAUDE,
    SESSION_FILE,
    continuing,
    finished,
    request,
    runs_on,
    started_agent,
    status_of,
)
from tests.support.stores import database_url_fixture, make_store

__all__ = ["database_url_fixture"]

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def server(
    database_url: str, tmp_path: Path, backend: ScriptedBackend, agents: AgentCache, name: str
) -> AsyncIterator[Runs]:
    """A server named ``name`` on ``database_url``, listening to the others (PostgreSQL)."""
    store = make_store(database_url)
    await store.migrate()
    told = database_url.startswith("postgresql")
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.listen)
            async with runs_on(
                store,
                tmp_path,
                backend,
                agents=agents,
                server_id=name,
                watch_seconds=600.0 if told else 0.05,
            ) as runs:
                yield runs
            tg.cancel_scope.cancel()
    finally:
        await store.close()


async def test_a_cancel_on_another_server_stops_the_run_where_it_runs(
    database_url: str, tmp_path: Path, agent_cache: AgentCache
) -> None:
    script = Script(stdout=CLAUDE[:1], files={"/app/results/so-far.txt": b"s"}, hang=True)
    engine_a = ScriptedBackend(lambda _: script)
    engine_b = ScriptedBackend(lambda _: script)
    async with (
        server(database_url, tmp_path, engine_a, agent_cache, "a") as a,
        server(database_url, tmp_path, engine_b, agent_cache, "b") as b,
    ):
        live = (await a.start(request())).live
        await started_agent(live)
        # Server a's watch has read the run's own record changes: from now on only the
        # cancel wakes it (on PostgreSQL, only through the database's notification).
        await anyio.sleep(0.3)
        # What a `statuses` cancel does on a server where the run is not live.
        assert b.live(live.run_id) is None
        await b.deps.store.transition(
            live.run_id, "cancelled", allowed_from=LIVE_STATUSES, finished_at=datetime.now(UTC)
        )
        with anyio.fail_after(10):
            await finished(live)
        assert a.live(live.run_id) is None
    assert live.outcome == "cancelled"
    [sandbox] = engine_a.sandboxes
    assert sandbox.killed and sandbox.closed
    assert engine_b.sandboxes == []
    assert [x.path for x in await a.deps.store.list_artifacts(live.run_id)] == ["so-far.txt"]
    assert (await status_of(a.deps.store, live.run_id))[0] == "cancelled"


async def test_a_turn_on_another_server_is_restored_there_and_the_kept_sandbox_released(
    database_url: str, tmp_path: Path, agent_cache: AgentCache
) -> None:
    seen: list[dict[str, bytes]] = []

    def agent(sandbox: ScriptedSandbox) -> Script:
        seen.append(dict(sandbox.files))
        if len(seen) == 1:
            session = {SESSION_FILE: b'{"turn":1}\n', "/app/results/one.txt": b"1"}
            return Script(stdout=CLAUDE, files=session)
        return Script(stdout=CLAUDE)

    engine_a, engine_b = ScriptedBackend(agent), ScriptedBackend(agent)
    async with (
        server(database_url, tmp_path, engine_a, agent_cache, "a") as a,
        server(database_url, tmp_path, engine_b, agent_cache, "b") as b,
    ):
        first = await a.start(request())
        await finished(first.live)
        [kept] = engine_a.sandboxes
        assert first.trajectory_id in a.deps.kept and not kept.closed

        second = await finished((await b.start(request(continuing(first)))).live)
        assert second.outcome == "completed", second.error
        with anyio.fail_after(10):
            while not kept.closed:
                await anyio.sleep(0.01)
        assert first.trajectory_id not in a.deps.kept
        # The new turn's sandbox is kept on its own server, for the turn after it.
        [restored] = engine_b.sandboxes
        assert second.run_id in b.deps.kept and not restored.closed

    assert seen[1][SESSION_FILE] == b'{"turn":1}\n'
    assert seen[1]["/app/results/one.txt"] == b"1"
    progress = [e.text for e in second.events if isinstance(e, Progress)]
    restoring = f"Continuing run {first.trajectory_id} (turn 2) in a new sandbox; restored:"
    assert any(restoring in text for text in progress)
    store = a.deps.store
    previous = await store.get_trajectory(first.trajectory_id)
    assert previous is not None and previous.session is not None
    assert previous.session[CONTINUED_BY] == second.run_id
    assert previous.status == "completed"
    record = await store.get_trajectory(second.run_id)
    assert record is not None
    assert record.environment[SERVER] == "b" and SANDBOX_OF not in record.environment


async def test_a_turn_on_the_same_server_takes_the_kept_sandbox_it_marks_continued(
    database_url: str, tmp_path: Path, agent_cache: AgentCache
) -> None:
    engine = ScriptedBackend(lambda _: Script(stdout=CLAUDE))
    async with server(database_url, tmp_path, engine, agent_cache, "a") as a:
        first = await a.start(request())
        await finished(first.live)
        second = await finished((await a.start(request(continuing(first)))).live)
        assert second.outcome == "completed", second.error
        # One sandbox for both turns, kept again for the next one.
        [sandbox] = engine.sandboxes
        assert not sandbox.closed and second.run_id in a.deps.kept
        previous = await a.deps.store.get_trajectory(first.trajectory_id)
        assert previous is not None and previous.session is not None
        assert previous.session[CONTINUED_BY] == second.run_id
        await a.engine.recover()
        assert not sandbox.closed
