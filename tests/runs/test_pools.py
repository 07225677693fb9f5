"""Warm pools on the scripted backend: filled ahead, claimed by one run each, refilled, and
never holding anything of a run before its claim."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from proxy.agents.install import AgentCache
from proxy.events import Progress
from proxy.presets import Preset
from proxy.relay.tokens import RunTokens
from proxy.runs.live import LiveRun
from proxy.runs.pools import PoolDefinition, PoolStats, WarmPools
from proxy.runs.runtime import warm_pools
from proxy.runs.service import Runs
from proxy.sandbox import Capabilities, Script, ScriptedBackend, ScriptedSandbox
from proxy.sandbox.base import LABEL_OWNER, LABEL_POOL, LABEL_SERVER
from proxy.sandbox.scripted import SCRIPTED, ScriptedWarmSandbox
from proxy.sandbox.warm import WarmSpec
from proxy.settings import Settings
from proxy.store import Store
from tests.agents.replay import STREAMS
from tests.support.runs import OWNER, PROVIDER_KEY, RUNBOOK, request, runs_on

pytestmark = pytest.mark.anyio

CLAUDE = (STREAMS / "claude-code" / "claude1.jsonl").read_text().splitlines()
PRESET = Preset(
    model="claude-sonnet-4-6", runbook=RUNBOOK, jetty={"collection": "acme", "task": "t"}, warm=2
)


def pool(size: int = 2, **preset: object) -> PoolDefinition:
    return PoolDefinition("preset:demo", size, preset=PRESET.model_copy(update=preset))


def agent(sandbox: ScriptedSandbox) -> Script:
    return Script(stdout=CLAUDE, files={"/app/results/hello.txt": b"hello\n"})


async def finished(live: LiveRun) -> LiveRun:
    async for _ in live.follow():
        pass
    return live


async def filled(runs: Runs, ready: int) -> None:
    """Wait until the pool has ``ready`` sandboxes waiting."""
    with anyio.fail_after(10):
        while runs.pool_stats()[0].ready != ready:
            await anyio.sleep(0.01)


def progress(live: LiveRun) -> list[str]:
    return [event.text for event in live.events if isinstance(event, Progress)]


async def test_a_run_claims_a_warm_sandbox_and_the_pool_refills(
    store: Store, tmp_path: Path, agent_cache: AgentCache
) -> None:
    backend = ScriptedBackend(agent)
    async with runs_on(store, tmp_path, backend, agents=agent_cache, pools=[pool()]) as runs:
        await filled(runs, 2)
        assert backend.sandboxes == []  # nothing launched for a run yet
        live = await finished((await runs.start(request())).live)
        assert live.outcome == "completed", live.error
        [sandbox] = backend.sandboxes
        assert sandbox.warm is backend.warm_sandboxes[0]
        assert any("(warm scripted sandbox" in line for line in progress(live))
        # The run's command and files reached it at the claim, not before.
        assert sandbox.spec.argv[-1] == "Go"
        assert "/app/trajectory.json" in sandbox.files
        assert backend.waiting[0].spec.labels == sandbox.warm.spec.labels
        await filled(runs, 2)
        assert len(backend.warm_sandboxes) == 3
        assert runs.pool_stats() == [PoolStats("preset:demo", 2, 2, 1, 0)]


async def test_each_warm_sandbox_serves_one_run(
    store: Store, tmp_path: Path, agent_cache: AgentCache
) -> None:
    backend = ScriptedBackend(agent)
    async with runs_on(
        store, tmp_path, backend, agents=agent_cache, pools=[pool()], keep_sandbox_seconds=0
    ) as runs:
        await filled(runs, 2)
        for _ in range(3):
            live = await finished((await runs.start(request())).live)
            assert live.outcome == "completed", live.error
            await filled(runs, 2)
        claimed = [sandbox.warm for sandbox in backend.sandboxes]
        assert len(set(map(id, claimed))) == 3 and None not in claimed
        # Each was removed after its run, as any sandbox is; none went back to the pool.
        assert all(sandbox.closed for sandbox in backend.sandboxes)
        assert all(w.claimed is None for w in backend.waiting)


async def test_an_unclaimed_sandbox_holds_nothing_of_a_run(
    store: Store, tmp_path: Path, agent_cache: AgentCache
) -> None:
    backend = ScriptedBackend(agent)
    async with runs_on(store, tmp_path, backend, agents=agent_cache, pools=[pool(1)]) as runs:
        await filled(runs, 1)
        [warm] = backend.waiting
        assert warm.spec.labels == {LABEL_OWNER: OWNER, LABEL_SERVER: "server"}
        assert warm.spec.all_labels()[LABEL_POOL] == "preset:demo"
        # A warm spec has no command, environment or files; no run token exists yet.
        assert not hasattr(warm.spec, "env") and not hasattr(warm.spec, "argv")
        assert len(runs.deps.tokens) == 0
        mounted = {str(m.container_path) for m in warm.spec.mounts}
        assert mounted == {"/opt/jetty/agents/claude-code", "/run/jetty"}


class SlowToRefill(ScriptedBackend):
    """Fills its pool once; refills only when ``refill`` is set."""

    def __init__(self) -> None:
        super().__init__(agent)
        self.refill = anyio.Event()

    async def launch_warm(self, spec: WarmSpec) -> ScriptedWarmSandbox:
        if self.warm_sandboxes:
            await self.refill.wait()
        return await super().launch_warm(spec)


async def test_an_empty_pool_falls_back_to_a_cold_start(
    store: Store, tmp_path: Path, agent_cache: AgentCache
) -> None:
    backend = SlowToRefill()
    async with runs_on(store, tmp_path, backend, agents=agent_cache, pools=[pool(1)]) as runs:
        await filled(runs, 1)
        first = await finished((await runs.start(request())).live)
        second = await finished((await runs.start(request())).live)
        for live in (first, second):
            assert live.outcome == "completed", live.error
        assert [sandbox.warm is not None for sandbox in backend.sandboxes] == [True, False]
        assert runs.pool_stats()[0] == PoolStats("preset:demo", 1, 0, 1, 1)
        assert not any("warm" in line for line in progress(second))
        backend.refill.set()
        await filled(runs, 1)


async def test_a_run_of_another_shape_starts_cold_without_a_miss(
    store: Store, tmp_path: Path, agent_cache: AgentCache
) -> None:
    backend = ScriptedBackend(agent)
    async with runs_on(store, tmp_path, backend, agents=agent_cache, pools=[pool(1)]) as runs:
        await filled(runs, 1)
        live = await finished((await runs.start(request(cpus=1))).live)
        assert live.outcome == "completed", live.error
        assert [sandbox.warm for sandbox in backend.sandboxes] == [None]
        assert runs.pool_stats()[0] == PoolStats("preset:demo", 1, 1, 0, 0)


async def test_a_warm_sandbox_that_stopped_waiting_is_replaced(
    store: Store, tmp_path: Path, agent_cache: AgentCache
) -> None:
    backend = ScriptedBackend(agent)
    async with runs_on(store, tmp_path, backend, agents=agent_cache, pools=[pool(1)]) as runs:
        await filled(runs, 1)
        [dead] = backend.waiting
        dead.die()
        live = await finished((await runs.start(request())).live)
        assert live.outcome == "completed", live.error
        assert dead.closed and backend.sandboxes[0].warm is None
        await filled(runs, 1)
        assert backend.waiting != [dead]


async def test_stopping_removes_every_waiting_sandbox(
    store: Store, tmp_path: Path, agent_cache: AgentCache
) -> None:
    backend = ScriptedBackend(agent)
    async with runs_on(store, tmp_path, backend, agents=agent_cache, pools=[pool(3)]) as runs:
        await filled(runs, 3)
    assert backend.waiting == [] and len(backend.warm_sandboxes) == 3


async def test_a_crashed_servers_pool_is_reaped_by_recovery(
    store: Store, tmp_path: Path, agent_cache: AgentCache
) -> None:
    backend = ScriptedBackend(agent)
    pools = WarmPools([pool(2)], retry_seconds=0.05)
    async with (
        runs_on(store, tmp_path, backend, agents=agent_cache, server_id="gone") as runs,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(pools.keep_filled, runs.deps, backend)
        with anyio.fail_after(10):
            while len(backend.waiting) < 2:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()  # the server dies: its pool is never closed
    assert len(backend.waiting) == 2
    async with runs_on(store, tmp_path, backend, agents=agent_cache, server_id="next") as runs:
        removed = await runs.engine.recover()
    assert len(removed) == 2 and backend.waiting == []


def test_pools_need_a_backend_that_keeps_sandboxes_ready(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, presets={"demo": PRESET})
    assert warm_pools(settings, ScriptedBackend(agent)) is not None
    cold = ScriptedBackend(agent, capabilities=Capabilities(runs_images=True))
    assert warm_pools(settings, cold) is None
    assert warm_pools(Settings(data_dir=tmp_path), ScriptedBackend(agent)) is None


# A scripted backend that writes small files into its start command, as Docker does: where
# pools start the agent ahead of its run.
STANDBY = dataclasses.replace(SCRIPTED, inline_files=True)


class Granted:
    """The agent's script, noting what the agent's relay token granted when it started."""

    def __init__(self) -> None:
        self.tokens: RunTokens | None = None
        self.grants: list[str | None] = []

    def __call__(self, sandbox: ScriptedSandbox) -> Script:
        assert self.tokens is not None
        grant = self.tokens.lookup(sandbox.spec.env["ANTHROPIC_API_KEY"])
        self.grants.append(grant.run_id if grant else None)
        return agent(sandbox)


@asynccontextmanager
async def one_started_agent(
    store: Store, tmp_path: Path, agent_cache: AgentCache
) -> AsyncIterator[tuple[Runs, ScriptedBackend, Granted, ScriptedWarmSandbox]]:
    """Runs with a pool of one sandbox, the preset's agent started in it."""
    granted = Granted()
    backend = ScriptedBackend(granted, capabilities=STANDBY)
    async with runs_on(store, tmp_path, backend, agents=agent_cache, pools=[pool(1)]) as runs:
        granted.tokens = runs.deps.tokens
        await filled(runs, 1)
        [warm] = backend.waiting
        yield runs, backend, granted, warm


async def test_a_run_takes_over_the_agent_started_in_its_warm_sandbox(
    store: Store, tmp_path: Path, agent_cache: AgentCache
) -> None:
    async with one_started_agent(store, tmp_path, agent_cache) as (runs, backend, granted, warm):
        standby = warm.spec.standby
        assert standby is not None
        # Claude Code waits for its claim, started with nothing of a run: no instruction, no
        # runbook, and a relay token that grants nothing yet.
        command = " ".join(standby.argv)
        assert "--await-claim" in standby.argv and "stream-json" in standby.argv
        assert "Runbook" not in command and "Go" not in standby.argv
        token = standby.env["ANTHROPIC_API_KEY"]
        assert token.startswith("jrt-") and runs.deps.tokens.lookup(token) is None
        assert PROVIDER_KEY not in command + json.dumps(dict(standby.env))

        live = await finished((await runs.start(request())).live)
        assert live.outcome == "completed", live.error
        [sandbox] = backend.sandboxes
        assert sandbox.warm is warm and sandbox.takeover is not None
        # At the claim, the token became the run's (and it ends with the run).
        assert granted.grants == [live.run_id]
        assert runs.deps.tokens.lookup(token) is None
        # The claim hands the agent its runbook and the instruction, then ends its input.
        claim, message = (json.loads(line) for line in sandbox.takeover.stdin.splitlines())
        assert claim["request"]["subtype"] == "claim_session"
        assert claim["request"]["cwd"] == "/app"
        assert "Write hello.txt into /app/results." in claim["request"]["append_system_prompt"]
        assert message["message"] == {"role": "user", "content": "Go"}
        assert "/app/trajectory.json" in sandbox.takeover.prepare
        # Should the agent have exited, the run's own command runs, with that same token.
        assert sandbox.spec.argv[-1] == "Go"
        assert sandbox.spec.env["ANTHROPIC_API_KEY"] == token
        assert any("its agent started ahead" in line for line in progress(live))
        [stats] = runs.pool_stats()
        assert (stats.claimed, stats.taken_over, stats.misses) == (1, 1, 0)
        await filled(runs, 1)


async def test_a_run_that_asks_for_another_agent_setup_stops_the_started_one(
    store: Store, tmp_path: Path, agent_cache: AgentCache
) -> None:
    async with one_started_agent(store, tmp_path, agent_cache) as (runs, backend, granted, warm):
        assert warm.spec.standby is not None
        # Another model: same sandbox shape, but not the agent that was started.
        live = await finished((await runs.start(request(model="claude-opus-4-5"))).live)
        assert live.outcome == "completed", live.error
        [sandbox] = backend.sandboxes
        assert sandbox.warm is warm and sandbox.takeover is None
        assert "claude-opus-4-5" in sandbox.spec.argv
        # Its own token, not the started agent's.
        assert sandbox.spec.env["ANTHROPIC_API_KEY"] != warm.spec.standby.env["ANTHROPIC_API_KEY"]
        assert granted.grants == [live.run_id]
        [stats] = runs.pool_stats()
        assert (stats.claimed, stats.taken_over, stats.misses) == (1, 0, 0)
        assert not any("its agent started ahead" in line for line in progress(live))
        await filled(runs, 1)


async def test_a_run_picks_the_sandbox_whose_agent_it_can_take_over(
    store: Store, tmp_path: Path, agent_cache: AgentCache
) -> None:
    """Two pools of one shape: the run claims the sandbox of the pool whose started agent it
    asks for, not the first that fits."""
    backend = ScriptedBackend(agent, capabilities=STANDBY)
    pools = [
        PoolDefinition(
            "preset:a", 1, preset=PRESET.model_copy(update={"model": "claude-opus-4-5"})
        ),
        PoolDefinition("preset:b", 1, preset=PRESET),
    ]
    async with runs_on(store, tmp_path, backend, agents=agent_cache, pools=pools) as runs:
        with anyio.fail_after(10):
            while [stats.ready for stats in runs.pool_stats()] != [1, 1]:
                await anyio.sleep(0.01)
        live = await finished((await runs.start(request())).live)
        assert live.outcome == "completed", live.error
        [sandbox] = backend.sandboxes
        assert sandbox.takeover is not None
        assert sandbox.warm is not None and sandbox.warm.spec.pool == "preset:b"
        assert [(s.claimed, s.taken_over) for s in runs.pool_stats()] == [(0, 0), (1, 1)]
