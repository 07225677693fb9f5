"""The run engine: starts, tracks, cancels and recovers runs.

A run is checked first (`proxy.runs.checks`: everything that can be refused with a 4xx is
refused before any sandbox exists), then handed to :meth:`RunEngine.start`, which runs it in
the engine's own task group. That is why a run can outlive the request that started it
(``detach``), and why a client disconnect is a *cancel request* rather than the death of the
run's task. Every sandbox has exactly one owner: its run's
:class:`~proxy.runs.lifecycle.RunLifecycle`, which removes it in a shielded ``finally``, or,
between the turns of a conversation, :class:`~proxy.runs.followup.KeptSandboxes`.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from datetime import UTC, datetime, timedelta

import anyio
from anyio.abc import TaskGroup

from proxy.runs.deps import RunDeps
from proxy.runs.launch import LIVE_STATUSES, SANDBOX_OF, SERVER, RunLaunch
from proxy.runs.lifecycle import RunLifecycle
from proxy.runs.live import LiveRun
from proxy.runs.presence import Presence
from proxy.runs.redaction import LiveRedactor
from proxy.sandbox import Orphans
from proxy.store import StoreError

__all__ = ["RunEngine"]

logger = logging.getLogger("proxy.runs")

#: How long the record of a server that stopped without a word is kept.
_FORGET_AFTER = timedelta(days=1)


class RunEngine:
    """Starts runs, tracks the live ones, cancels them, and cleans up after a restart."""

    def __init__(
        self, deps: RunDeps, task_group: TaskGroup, *, presence: Presence | None = None
    ) -> None:
        self.deps = deps
        self._tg = task_group
        self.live: dict[str, LiveRun] = {}
        # The servers of this machine known gone at once (see proxy.runs.presence).
        self._presence = presence

    async def beat(self) -> None:
        """Record that this server is alive (see `recover`)."""
        await self.deps.store.beat(self.deps.config.server_id)

    async def keep_beating(self) -> None:
        """Beat every ``heartbeat_seconds`` and look for orphans every ``sweep_seconds``
        (sandboxes and runs of servers that died since this one started) — but only once
        this server has beaten without a miss for ``server_stale_seconds``: after a
        database outage every server's beats are late, and none is gone for that."""
        config = self.deps.config
        clock = anyio.current_time
        healthy_since: float | None = clock()
        last_sweep = clock()
        while True:
            await anyio.sleep(config.heartbeat_seconds)
            try:
                await self.beat()
            except Exception as exc:  # the heartbeat outlives a failed beat, whatever failed
                logger.warning(
                    "could not record that this server is alive: %s",
                    exc,
                    exc_info=not isinstance(exc, StoreError),
                )
                healthy_since = None
                continue
            now = clock()
            if healthy_since is None:
                healthy_since = now
            if (
                now - healthy_since < config.server_stale_seconds
                or now - last_sweep < config.sweep_seconds
            ):
                continue
            last_sweep = now
            try:
                removed = await self.recover()
                # Servers that crashed long ago: their sandboxes and runs are seen to.
                await self.deps.store.forget_servers_before(datetime.now(UTC) - _FORGET_AFTER)
            except Exception:  # a failed look must not stop the heartbeat
                logger.exception("looking for sandboxes of stopped servers failed")
            else:
                if removed:
                    logger.warning("removed %d sandboxes of servers that stopped", len(removed))

    async def recover(self) -> list[str]:
        """Remove the sandboxes no live server owns, mark their runs failed; return their ids.

        Every serving process beats (`beat`) and labels its sandboxes and runs with its id.
        A server that has not beaten for ``server_stale_seconds``, or one of this machine whose
        lock is free (`Presence`), is gone: its sandboxes (and those of older versions, which
        carry no server) are removed, and its live runs failed. The installation's other
        servers, sharing its database and engine, keep theirs. Called at start, then by
        `keep_beating`.
        """
        store, config = self.deps.store, self.deps.config
        since = datetime.now(UTC) - timedelta(seconds=config.server_stale_seconds)
        beating = await store.live_servers(since)
        if self._presence is not None:
            beating -= await anyio.to_thread.run_sync(self._presence.gone)
        live_servers = beating | {config.server_id}
        removed = await self.deps.backend.remove_orphans(
            Orphans(set(self.live), config.owner, live_servers)
        )
        gone = {run_id for run_id in removed if run_id}
        for trajectory in await store.live_trajectories():
            if trajectory.id in self.live:
                continue
            # A follow-up turn that ran in its previous turn's kept sandbox: the sandbox carries
            # the label of the run that created it, the turn names that run in its environment.
            if trajectory.environment.get(SANDBOX_OF) in gone:
                gone.add(trajectory.id)
            # A run whose server is gone, whether or not its sandbox is still there.
            server = trajectory.environment.get(SERVER)
            if server is not None and server not in live_servers:
                gone.add(trajectory.id)
        for run_id in sorted(gone):
            # Only runs that were live: a kept sandbox's run had finished, and stays as it was.
            failed = await store.transition(
                run_id,
                "failed",
                allowed_from=LIVE_STATUSES,
                finished_at=datetime.now(UTC),
            )
            if failed is not None:
                with suppress(LookupError):
                    await store.update_trajectory(
                        run_id, error="interrupted: the proxy stopped while the run was live"
                    )
        return removed

    def start(self, launch: RunLaunch) -> LiveRun:
        """Run ``launch`` in the background; follow the returned :class:`LiveRun`."""
        live = LiveRun(
            run_id=launch.run_id,
            collection=launch.collection,
            task=launch.task,
            agent=launch.adapter.name,
            model=launch.plan.model,
            detached=launch.plan.detach,
            redactor=LiveRedactor.of(launch.secrets),
            page_url=launch.trajectory_url,
        )
        self.live[launch.run_id] = live
        self.deps.quotas.live_runs[launch.collection] += 1
        self._tg.start_soon(self._lifecycle, launch, live, name=f"run-{launch.run_id}")
        return live

    async def _lifecycle(self, launch: RunLaunch, live: LiveRun) -> None:
        try:
            with live.cancellable():
                await RunLifecycle(self.deps, launch, live).execute()
        except Exception as exc:  # a bug must fail the run, not the server
            logger.exception("run %s crashed", launch.run_id)
            live.close("failed", f"internal error: {type(exc).__name__}", "internal_error")
        finally:
            live.close("cancelled", "The run was cancelled.", "cancelled")
            self.live.pop(launch.run_id, None)
            self.deps.quotas.live_runs[launch.collection] -= 1
