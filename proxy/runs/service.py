"""The one entry to runs: start one from a parsed request, follow it, cancel it.

The HTTP edge parses a runbook request into a `RunRequest` and calls `Runs.start`; what comes
back is a `StartedRun` to render. Every refusal is raised before anything exists (see
`proxy.runs.checks`); once it returns, the run is live in the engine and its trajectory
exists::

    started = await runs.start(RunRequest(principal, model, messages, block, base_url))
    async for event in started.live.follow():
        ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.environments import Environments
from proxy.jetty import JettyBlock
from proxy.jetty.fields import ToolActivityMode
from proxy.runs.checks import Draft, RunRequest, admit
from proxy.runs.deps import RunDeps
from proxy.runs.engine import RunEngine
from proxy.runs.launch import RunLaunch, environment_record
from proxy.runs.live import LiveRun
from proxy.runs.pools import PoolStats
from proxy.store.records import NewTrajectory

__all__ = ["RunRequest", "Runs", "StartedRun"]


@dataclass(frozen=True)
class StartedRun:
    """A run that started: follow ``live``; its chunks name ``model`` and show tool activity
    as ``tool_activity`` says; a stream says a silent tool is still running every
    ``still_running`` seconds (0: never; see `LiveRun.follow`)."""

    live: LiveRun
    model: str
    tool_activity: ToolActivityMode
    still_running: float = 0

    @property
    def trajectory_id(self) -> str:
        return self.live.run_id


class Runs:
    """This server's runs: the checks, the trajectory, the engine."""

    def __init__(self, deps: RunDeps, engine: RunEngine) -> None:
        self.deps = deps
        self.engine = engine

    @property
    def environments(self) -> Environments | None:
        """The image engine (snapshots, pulls, builds), when the backend builds images."""
        return self.deps.environments

    async def start(self, request: RunRequest) -> StartedRun:
        """Check ``request`` (a `~proxy.errors.ProxyError` for any refusal), record its
        trajectory and start it."""
        draft = await admit(request, self.deps)
        launch = await self._record(draft)
        live = self.engine.start(launch)
        return StartedRun(
            live,
            draft.plan.model,
            draft.plan.tool_activity,
            still_running=self.deps.settings.still_running_seconds,
        )

    def pool_stats(self) -> list[PoolStats]:
        """The warm pools, each with its sandboxes ready, claimed and missed (none: no pools)."""
        return self.deps.pools.stats() if self.deps.pools is not None else []

    def live(self, run_id: str) -> LiveRun | None:
        """The run, while it is live on this server."""
        return self.engine.live.get(run_id)

    async def _record(self, draft: Draft) -> RunLaunch:
        """The run's trajectory, created; and the launch that names it."""
        environment = draft.environment
        if environment is None:
            raise RuntimeError("the environment check did not run")
        continuation = draft.continuation
        key = draft.request.principal.key
        gate = draft.gate
        if gate is None:
            raise RuntimeError("the limits check did not run")
        new = NewTrajectory(
            draft.collection,
            draft.task,
            model=draft.plan.model,
            agent=draft.plan.agent,
            jetty=_recorded_block(draft.request.jetty),
            environment=environment_record(
                environment.reference, self.deps.backend.name, self.deps.config.server_id
            ),
            session=continuation.session() if continuation else None,
            key_id=key.id if key is not None else None,
        )
        trajectory = await self.deps.store.create_run(new, gate)
        if trajectory is None:
            # Another run took the last slot since the check: nothing of this one exists.
            raise await self.deps.quotas.run_refusal(draft.collection, gate)
        # Every link the run puts in its answer is signed: it opens in a browser without a key.
        links = self.deps.links.links(
            draft.request.base_url, draft.collection, draft.task, trajectory.id
        )
        return RunLaunch(
            run_id=trajectory.id,
            collection=draft.collection,
            task=draft.task,
            plan=draft.plan,
            adapter=draft.adapter,
            agent=draft.agent,
            environment=environment,
            inputs=draft.inputs,
            base_url=links.base,
            credentials=draft.credentials,
            secrets=draft.secrets,
            continuation=continuation,
            previous_inputs=draft.previous_inputs,
            trajectory_url=links.page(),
            key_id=new.key_id,
        )


def _recorded_block(block: JettyBlock) -> dict[str, Any]:
    recorded: dict[str, Any] = block.model_dump(mode="json", exclude_none=True)
    return recorded
