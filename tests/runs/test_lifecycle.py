"""The run lifecycle on the scripted sandbox backend: each run from start to end, in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from proxy.agents import get_adapter
from proxy.agents.install import AgentCache
from proxy.events import Progress
from proxy.jetty import PlanDefaults, parse_jetty_block, resolve_plan
from proxy.relay.tokens import RunTokens
from proxy.runs.artifacts import ResultLimits
from proxy.runs.engine import AgentSetup, EngineConfig, RunEngine, RunLaunch
from proxy.runs.followup import Continuation
from proxy.runs.launch import SANDBOX_OF, SERVER
from proxy.runs.live import LiveRun
from proxy.sandbox import Script, ScriptedBackend, ScriptedSandbox
from proxy.store import Store
from proxy.store.blobs import LocalBlobStore
from tests.agents.replay import STREAMS
from tests.support.leftovers import INTERRUPTED, statuses_of

pytestmark = pytest.mark.anyio

CLAUDE = (STREAMS / "claude-code" / "claude1.jsonl").read_text().splitlines()
RUNBOOK = "# Runbook\n\nWrite hello.txt into {{results_dir}}."


@asynccontextmanager
async def engine(
    store: Store, tmp_path: Path, backend: ScriptedBackend, server_id: str
) -> AsyncIterator[RunEngine]:
    async with anyio.create_task_group() as tg:
        yield RunEngine(
            store=store,
            blobs=LocalBlobStore(tmp_path / "blobs"),
            backend=backend,
            tokens=RunTokens(),
            config=EngineConfig(
                relay_socket=tmp_path / "relay.sock",
                results=ResultLimits(1024 * 1024, 100),
                owner="me",
                server_id=server_id,
                keep_sandbox_seconds=60,
            ),
            task_group=tg,
        )
        tg.cancel_scope.cancel()


async def start(
    runs: RunEngine, store: Store, agents: AgentCache, previous: str | None = None
) -> LiveRun:
    adapter = get_adapter("claude-code")
    block = parse_jetty_block({"runbook": True, "collection": "acme", "task": "t"})
    messages = [{"role": "system", "content": RUNBOOK}, {"role": "user", "content": "Go"}]
    plan = resolve_plan("claude-sonnet-4-6", messages, block, RUNBOOK, PlanDefaults(), {})
    continuation = None
    if previous is not None:
        record = await store.get_trajectory(previous)
        assert record is not None
        continuation = Continuation.of(record)
    trajectory = await store.create_trajectory(
        "acme",
        "t",
        environment={"image": "img", "backend": runs.backend.name, SERVER: runs.server_id},
        session=continuation.session() if continuation else None,
    )
    return runs.start(
        RunLaunch(
            run_id=trajectory.id,
            collection="acme",
            task="t",
            plan=plan,
            adapter=adapter,
            agent=AgentSetup(await agents.ensure(adapter)),
            image="img",
            continuation=continuation,
            trajectory_url=f"http://proxy/api/v1/trajectory/acme/t/{trajectory.id}",
        )
    )


async def finished(live: LiveRun) -> LiveRun:
    async for _ in live.follow():
        pass
    return live


async def test_a_follow_up_in_a_kept_sandbox_is_recovered_when_its_server_dies(
    store: Store, tmp_path: Path, agent_cache: AgentCache
) -> None:
    def agent(sandbox: ScriptedSandbox) -> Script:
        if sandbox.scripts:  # the follow-up turn, still running when its server dies
            return Script(stdout=CLAUDE[:1], hang=True)
        return Script(stdout=CLAUDE)

    backend = ScriptedBackend(agent)
    async with engine(store, tmp_path, backend, "crashes") as runs:
        first = await finished(await start(runs, store, agent_cache))
        assert first.outcome == "completed"
        follow_up = await start(runs, store, agent_cache, previous=first.run_id)
        async for event in follow_up.follow():
            if isinstance(event, Progress) and event.text.startswith("Continuing"):
                break
        assert len(backend.sandboxes) == 1  # the turn runs in the kept sandbox
        record = await store.get_trajectory(follow_up.run_id)
        assert record is not None
        assert record.environment[SANDBOX_OF] == first.run_id
        # Another server, on another engine: it cannot see the sandbox, only the record.
        async with engine(store, tmp_path, ScriptedBackend(agent), "survives") as other:
            await other.recover()
        assert await statuses_of(store, record) == [INTERRUPTED]
