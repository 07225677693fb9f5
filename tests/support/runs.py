"""Runs wired as the lifespan wires them, on a given store and sandbox backend, for run tests.

The sandbox backend is usually `proxy.sandbox.ScriptedBackend`; everything else is real: the
store, the blob directory, the run tokens, the agent cache, the engine and its task group, the
watch of the runs' records.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx

from proxy.agents.install import AgentCache
from proxy.auth import LOCAL_PRINCIPAL
from proxy.environments import Environments
from proxy.events import SessionStarted, TextDelta
from proxy.jetty import PlanDefaults, parse_jetty_block
from proxy.links import LinkSigner
from proxy.prices import PriceBook
from proxy.quota import Limits, QuotaConfig, Quotas
from proxy.relay.tokens import RunTokens
from proxy.runs.artifacts import ResultLimits
from proxy.runs.deps import RunDeps
from proxy.runs.engine import RunEngine
from proxy.runs.followup import KeptSandboxes
from proxy.runs.launch import AGENT_HOME, EngineConfig
from proxy.runs.live import LiveRun
from proxy.runs.pools import PoolDefinition, WarmPools
from proxy.runs.presence import Presence
from proxy.runs.service import RunRequest, Runs, StartedRun
from proxy.runs.watch import RunWatch
from proxy.sandbox import SandboxBackend
from proxy.sandbox.warm import WarmLauncher
from proxy.settings import Settings
from proxy.store import Store
from proxy.store.blobs import LocalBlobStore
from tests.agents.replay import STREAMS

#: Claude Code's output, recorded from the real CLI: a session started, a tool call, an answer.
CLAUDE = (STREAMS / "claude-code" / "claude1.jsonl").read_text().splitlines()
SESSION = "be2fab52-8198-4e59-a560-dad4374c749d"  # the session claude1.jsonl starts
# Where Claude Code keeps that session, under its HOME.
SESSION_FILE = f"{AGENT_HOME}/.claude/projects/-app/{SESSION}.jsonl"
OWNER = "me"
IMAGE = "img"
RUNBOOK = "# Runbook\n\nWrite hello.txt into {{results_dir}}."
PROVIDER_KEY = "sk-ant-test-0123456789"


@asynccontextmanager
async def runs_on(
    store: Store,
    tmp_path: Path,
    backend: SandboxBackend,
    *,
    agents: AgentCache | None = None,
    environments: Environments | None = None,
    presence: Presence | None = None,
    defaults: PlanDefaults | None = None,
    settings: Mapping[str, Any] | None = None,
    quotas: Quotas | None = None,
    prices: PriceBook | None = None,
    pools: Sequence[PoolDefinition] = (),
    **config: Any,
) -> AsyncIterator[Runs]:
    """`Runs` over ``backend`` until the block ends; then its live runs are cancelled and its
    kept sandboxes and warm ``pools`` closed, as when a server stops. ``settings``:
    `Settings` fields; ``config``: `EngineConfig` fields."""
    fields: dict[str, Any] = {"owner": OWNER, "keep_sandbox_seconds": 600.0, **config}
    server = Settings(
        data_dir=tmp_path / "data", anthropic_api_key=PROVIDER_KEY, **(settings or {})
    )
    warm = WarmPools(pools, retry_seconds=0.05) if pools else None
    async with httpx.AsyncClient() as http, anyio.create_task_group() as tg:
        deps = RunDeps(
            store=store,
            blobs=LocalBlobStore(tmp_path / "blobs"),
            tokens=RunTokens(),
            backend=backend,
            agents=agents or AgentCache(tmp_path / "agents"),
            config=EngineConfig(
                relay_socket=tmp_path / "relay.sock",
                results=ResultLimits(1024 * 1024, 100),
                **fields,
            ),
            kept=KeptSandboxes(tg, fields["keep_sandbox_seconds"]),
            defaults=defaults or PlanDefaults(image=IMAGE),
            settings=server,
            http=http,
            links=LinkSigner("test-secret", lifetime_seconds=3600),
            prices=prices or PriceBook(),
            quotas=quotas or Quotas(store, QuotaConfig(Limits(), {})),
            environments=environments,
            pools=warm,
        )
        engine = RunEngine(deps, tg, presence=presence)
        tg.start_soon(RunWatch(store, engine.live, deps.kept, deps.config.watch_seconds).run)
        if warm is not None:
            assert isinstance(backend, WarmLauncher)
            tg.start_soon(warm.keep_filled, deps, backend)
        try:
            yield Runs(deps, engine)
        finally:
            tg.cancel_scope.cancel()
    if warm is not None:
        await warm.close()
    await deps.kept.close_all()


def request(
    messages: Sequence[Mapping[str, Any]] = (),
    *,
    model: str = "claude-sonnet-4-6",
    runbook: str = RUNBOOK,
    **jetty: Any,
) -> RunRequest:
    """A runbook request of the local user to collection acme, task t: ``runbook`` as its
    system message, then ``messages`` (a user's "Go" when there are none)."""
    block = parse_jetty_block({"runbook": True, "collection": "acme", "task": "t", **jetty})
    history = [{"role": "system", "content": runbook}, *messages]
    if not messages:
        history.append({"role": "user", "content": "Go"})
    return RunRequest(LOCAL_PRINCIPAL, model, history, block, "http://proxy.test")


async def status_of(store: Store, run_id: str) -> tuple[str, str | None]:
    record = await store.get_trajectory(run_id)
    assert record is not None
    return record.status, record.error


async def finished(live: LiveRun) -> LiveRun:
    async for _ in live.follow():
        pass
    return live


async def started_agent(live: LiveRun) -> None:
    """Follow ``live`` until the agent said it started."""
    async for event in live.follow():
        if isinstance(event, SessionStarted):
            return


def answer_of(live: LiveRun) -> str:
    return "".join(event.text for event in live.events if isinstance(event, TextDelta))


def continuing(started: StartedRun) -> list[dict[str, Any]]:
    """The history a chat UI sends next: the run's answer (with its marker line), then more."""
    return [
        {"role": "user", "content": "Go"},
        {"role": "assistant", "content": answer_of(started.live)},
        {"role": "user", "content": "And now the second file."},
    ]
