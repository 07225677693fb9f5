"""One run from start to end: sandbox, agent, relay token, events, results, session.

:class:`RunLifecycle` is created by :meth:`~proxy.runs.engine.RunEngine.start` for each run,
with the run's dependencies (`RunDeps`), and runs in the engine's task group. It owns the
run's sandbox until the end: then the sandbox is closed, or handed to
:class:`~proxy.runs.followup.KeptSandboxes` for a follow-up turn.
"""

from __future__ import annotations

import logging
import time
from contextlib import aclosing
from datetime import UTC, datetime

import anyio

from proxy.agents.install import AgentInstallError
from proxy.environments import EnvironmentFailed
from proxy.events import (
    AgentError,
    Event,
    Finished,
    Notice,
    Progress,
    SessionStarted,
    TextDelta,
    Usage,
)
from proxy.prices import TokenCounts
from proxy.relay.tokens import ModelUsage
from proxy.runs.agent import prepare_agent
from proxy.runs.artifacts import collect_results, results_markdown
from proxy.runs.deps import RunDeps
from proxy.runs.followup import (
    Continuation,
    mark_continued,
    marker_line,
    restore,
    save_home,
)
from proxy.runs.launch import AGENT_HOME, RunLaunch, environment_record
from proxy.runs.live import LiveRun
from proxy.runs.sandboxspec import (
    RunTakeover,
    StandbyAgentStart,
    sandbox_spec,
    takeover_spec,
)
from proxy.sandbox import ExitStatus, ImageNotFound, Sandbox, SandboxError, SandboxSpec
from proxy.store.records import TrajectoryStatus

logger = logging.getLogger("proxy.runs")

_PENDING: tuple[TrajectoryStatus, ...] = ("pending",)


class RunLifecycle:
    """One execution of one run (a fresh object per run keeps the state local)."""

    def __init__(self, deps: RunDeps, launch: RunLaunch, live: LiveRun) -> None:
        self.deps = deps
        self.launch = launch
        self.live = live
        self.store = deps.store
        self.started = time.monotonic()
        self.sandbox: Sandbox | None = None
        self.agent = launch.agent
        self.image = launch.environment.reference
        self.artifacts_collected = False
        self.kept = False
        # The run's final record is written: later model calls update its cost.
        self.settled = False

    async def emit(self, event: Event) -> None:
        self.live.publish(event)
        data = event.to_dict()
        await self.store.append_event(self.launch.run_id, str(data.get("type")), data)

    async def record_model_call(self, usage: ModelUsage) -> None:
        """One model call through the relay: priced, counted against the limits, recorded."""
        launch = self.launch
        tokens = TokenCounts(
            usage.prompt_tokens,
            usage.output_tokens,
            usage.cache_read_input_tokens,
            usage.cache_creation_input_tokens,
        )
        cost = self.deps.prices.cost(
            [usage.model, launch.plan.model], tokens, provider=usage.provider
        )
        self.live.cost.add(cost)
        self.deps.quotas.spent(launch.collection, launch.key_id, cost)
        await self.store.append_event(
            launch.run_id,
            "model_call",
            {
                "provider": usage.provider,
                "model": usage.model,
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "cache_read_input_tokens": usage.cache_read_input_tokens,
                "cache_creation_input_tokens": usage.cache_creation_input_tokens,
                "reasoning_tokens": usage.reasoning_tokens,
                "complete": usage.complete,
                "cost_usd": cost,
            },
        )
        total = self.live.cost.total
        if self.settled and total is not None:
            # A call reported after the run's record was written (its last bytes reached the
            # agent before the relay counted them): the record keeps up.
            await self.store.update_trajectory(launch.run_id, cost_usd=total)

    async def execute(self) -> None:
        launch, plan = self.launch, self.launch.plan
        token = self.deps.tokens.issue(
            launch.run_id,
            launch.collection,
            launch.credentials,
            on_usage=self.record_model_call,
        )
        try:
            for warning in plan.warnings:
                await self.emit(Notice(warning))
            if self.agent is None and not await self._install_agent():
                return
            self.image = await self._environment()
            sandbox, files = await self._sandbox(token)
            await self._put_files(sandbox, files)
            await self.store.transition(launch.run_id, "running", allowed_from=_PENDING)
            await self.store.update_trajectory(launch.run_id, started_at=datetime.now(UTC))
            await sandbox.start()
            status = await self._follow(sandbox)
            await self._finish(sandbox, status)
        except EnvironmentFailed as exc:
            await self._fail(exc.message, exc.code or "environment_failed")
        except ImageNotFound as exc:
            # A backend whose nodes pull the image finds out only now, at once.
            await self._fail(f"Sandbox failed: {exc}", "image_not_found")
        except SandboxError as exc:
            await self._fail(f"Sandbox failed: {exc}", "sandbox_error")
        finally:
            with anyio.CancelScope(shield=True):
                self.deps.tokens.revoke(launch.run_id)
                await self._cleanup()

    async def _sandbox(self, token: str) -> tuple[Sandbox, dict[str, bytes]]:
        """The run's sandbox (``self.sandbox`` from the moment it is the run's), ready to
        start, and the files to copy into it first: the continued run's kept sandbox when it
        can take this turn, else a new one."""
        kept = await self._kept_sandbox()
        if self.launch.continuation is not None:
            # After taking it, if this server kept it: a server that keeps it lets it go.
            await mark_continued(self.store, self.launch.continuation, self.launch.run_id)
        if kept is not None:
            self.sandbox = kept  # owned from here: the cleanup closes it
            spec, files = self._sandbox_spec(token, reusing=True)
            if await self._rerun(kept, spec):
                return kept, files
        spec, files = self._sandbox_spec(token, reusing=False)
        backend, pools = self.deps.backend, self.deps.pools
        # A warm sandbox, where one waits for a run like this one (with its agent started,
        # if it asks for that agent as started); else a new one.
        claimed = await pools.claim(spec, self._takeover_of) if pools else None
        sandbox = claimed.sandbox if claimed is not None else None
        if sandbox is not None:
            self.sandbox = sandbox  # owned from here: the cleanup closes it
        taken = claimed.taken if claimed is not None else None
        if taken is not None:
            # The started agent holds its own token: now the run's, before it gets the run.
            self.deps.tokens.admit(taken.token, like=token)
            files = taken.files
        how = "warm " if sandbox is not None else ""
        started = ", its agent started ahead" if taken is not None else ""
        await self.emit(
            Progress(
                f"Starting {self.launch.adapter.name} {self.version} in "
                f"{self.image} ({how}{backend.name} sandbox{started}, run {self.launch.run_id})"
            )
        )
        if sandbox is None:
            sandbox = await backend.launch(spec)
        self.sandbox = sandbox  # owned from here: the cleanup closes it
        if self.launch.continuation is not None:
            await self._restore(sandbox, self.launch.continuation)
        return sandbox, files

    async def _install_agent(self) -> bool:
        """Install the agent CLI (its first run on this server); False when that failed."""
        adapter = self.launch.adapter
        version = adapter.binary.version
        await self.emit(
            Progress(
                f"Installing {adapter.name} {version}: the first run of this agent on this"
                " server (later runs reuse it)"
            )
        )
        try:
            self.agent = await prepare_agent(
                self.deps.agents,
                adapter,
                mounts_host=self.deps.backend.capabilities.mounts_host,
            )
        except AgentInstallError as exc:
            await self._fail(
                f"The {adapter.name} CLI could not be installed: {exc}", "agent_unavailable"
            )
            return False
        return True

    @property
    def version(self) -> str:
        """The version of the run's agent CLI."""
        if self.agent is None:
            raise SandboxError("the agent CLI is not installed")
        return self.agent.layout.version

    async def _kept_sandbox(self) -> Sandbox | None:
        """The continued run's sandbox, now this run's, if it is kept in this run's image."""
        continuation = self.launch.continuation
        taken = self.deps.kept.take(continuation.previous.id) if continuation else None
        if continuation is None or taken is None:
            return None
        sandbox, kept_image = taken
        if kept_image == self.image:
            return sandbox
        await self.emit(
            Progress(
                f"Run {continuation.previous.id} ran in {kept_image}, and this turn asks for"
                f" {self.image}: continuing in a new sandbox"
            )
        )
        with anyio.CancelScope(shield=True):
            await sandbox.close()
        return None

    async def _rerun(self, sandbox: Sandbox, spec: SandboxSpec) -> bool:
        """Ready the kept ``sandbox`` for this turn; False (it is closed) when it cannot be."""
        continuation = self.launch.continuation
        assert continuation is not None
        try:
            await self.store.update_trajectory(
                self.launch.run_id,
                environment=environment_record(
                    self.image,
                    self.deps.backend.name,
                    self.deps.config.server_id,
                    sandbox_of=sandbox.run_id,
                ),
            )
            await sandbox.rerun(spec.argv, spec.env)
        except SandboxError as exc:
            logger.warning(
                "could not reuse the sandbox of run %s: %s", continuation.previous.id, exc
            )
            self.sandbox = None
            with anyio.CancelScope(shield=True):
                await sandbox.close()
            return False
        await self.emit(
            Progress(
                f"Continuing run {continuation.previous.id} (turn {continuation.turn}) in its"
                f" sandbox: {self.launch.adapter.name} {self.version} in"
                f" {self.image}, run {self.launch.run_id}"
            )
        )
        return True

    async def _restore(self, sandbox: Sandbox, continuation: Continuation) -> None:
        """Put back what the previous turn left: its agent HOME, results and input files."""
        restored = await restore(
            sandbox,
            continuation,
            store=self.store,
            blobs=self.deps.blobs,
            home=AGENT_HOME,
            inputs=self.launch.previous_inputs,
        )
        what = ", ".join(restored) or "nothing was saved"
        await self.emit(
            Progress(
                f"Continuing run {continuation.previous.id} (turn {continuation.turn}) in a new"
                f" sandbox; restored: {what}"
            )
        )

    async def _environment(self) -> str:
        """The image the checks chose, pulled or built first where the backend builds images
        (with the progress in the stream)."""
        environments = self.deps.environments
        if environments is None:
            return self.launch.environment.reference

        async def say(text: str) -> None:
            await self.emit(Progress(text))

        resolved = await environments.prepare(self.launch.environment, progress=say)
        return resolved.reference

    def _takeover_of(self, started: StandbyAgentStart) -> RunTakeover | None:
        """How this run takes over an agent a warm sandbox started (None: it cannot)."""
        if self.agent is None:
            return None
        return takeover_spec(
            self.launch,
            self.agent,
            self.deps.config,
            image=self.image,
            capabilities=self.deps.backend.capabilities,
            started=started,
        )

    def _sandbox_spec(self, token: str, *, reusing: bool) -> tuple[SandboxSpec, dict[str, bytes]]:
        if self.agent is None:
            raise SandboxError("the agent CLI is not installed")
        return sandbox_spec(
            self.launch,
            self.agent,
            self.deps.config,
            token=token,
            image=self.image,
            capabilities=self.deps.backend.capabilities,
            reusing=reusing,
        )

    async def _put_files(self, sandbox: Sandbox, files: dict[str, bytes]) -> None:
        """The run's own ``files`` (absolute paths), then its input files under /app/assets."""
        if files:
            await sandbox.put_files("/", {path.lstrip("/"): data for path, data in files.items()})
        if self.launch.inputs:
            await sandbox.put_files("/app/assets", self.launch.inputs)

    async def _follow(self, sandbox: Sandbox) -> ExitStatus:
        """Translate the agent's output until it exits or the run's time is up."""
        translator = self.launch.adapter.new_translator()
        timeout = self.launch.plan.timeout_sec
        with anyio.move_on_after(timeout) as deadline:
            async with aclosing(sandbox.stdout_lines()) as lines:
                async for line in lines:
                    for event in translator.feed(line):
                        await self.emit(event)
                        if isinstance(event, SessionStarted):
                            # The first sign of life from the agent itself: say so.
                            model = f" with {event.model}" if event.model else ""
                            await self.emit(Progress(f"{self.launch.adapter.name} started{model}"))
            status = await sandbox.wait(timeout=max(1.0, timeout - self._elapsed()))
        if deadline.cancelled_caught or status.timed_out:
            await sandbox.kill()
            message = f"The run timed out after {timeout} s and was stopped."
            await self.emit(AgentError(message, "timeout"))
            await self.emit(Finished(ok=False, reason="timeout"))
            return ExitStatus(exit_code=137, timed_out=True)
        if status.oom_killed:
            await self.emit(AgentError("The sandbox ran out of memory.", "out_of_memory"))
        for event in translator.finish(status.exit_code):
            await self.emit(event)
        return status

    async def _finish(self, sandbox: Sandbox, status: ExitStatus) -> None:
        launch, live = self.launch, self.live
        collected = await self._collect(sandbox)
        if collected:
            await self.emit(TextDelta(results_markdown(collected)))
        if launch.trajectory_url:
            await self.emit(TextDelta(marker_line(launch.run_id, launch.trajectory_url)))
        session = await self._save_session(sandbox)
        finished = live.finished
        ok = finished is not None and finished.ok and status.exit_code == 0
        usage = live.usage or Usage(0, 0)
        error = None if ok else _failure_message(live, status, sandbox.stderr_tail())
        await self.store.update_trajectory(
            launch.run_id,
            status="completed" if ok else "failed",
            usage={
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "cache_read_tokens": usage.cache_read_tokens,
                "cache_write_tokens": usage.cache_write_tokens,
                **self._costs(),
            },
            cost_usd=live.cost.total,
            error=error,
            finished_at=datetime.now(UTC),
            session=session,
        )
        self.settled = True
        # Kept before the run is closed: a follow-up sent as soon as the answer ends finds it.
        # Only where the backend can rerun it for that turn.
        if self.deps.backend.capabilities.reruns:
            self.kept = self.deps.kept.keep(launch.run_id, sandbox, self.image)
        if ok:
            live.close("completed")
        else:
            code = finished.reason if finished is not None and not finished.ok else "agent_error"
            live.close("failed", error, code)

    async def _save_session(self, sandbox: Sandbox) -> dict[str, object]:
        """Archive the agent's HOME (its session files) so a later turn can resume it."""
        launch, config = self.launch, self.deps.config
        session: dict[str, object] = (
            launch.continuation.session()
            if launch.continuation
            else {"conversation": launch.run_id, "turn": 1}
        )
        started = [e for e in self.live.events if isinstance(e, SessionStarted)]
        if started:
            session["agent_session_id"] = started[-1].session_id
        try:
            saved = await save_home(
                sandbox,
                blobs=self.deps.blobs,
                home=AGENT_HOME,
                max_bytes=config.session_max_bytes,
                max_files=config.session_max_files,
                secrets=launch.plan.secret_env,
            )
        except Exception:
            logger.exception("saving the agent session of run %s", launch.run_id)
            return session
        if saved.skipped:
            await self.emit(
                Notice(
                    f"The agent's session was saved without {saved.skipped} files"
                    " (over the size or file caps); a follow-up may miss them."
                )
            )
        session["home_blob"] = saved.blob_key
        session["home_bytes"] = saved.size
        return session

    async def _collect(self, sandbox: Sandbox) -> list[dict[str, object]]:
        if self.artifacts_collected:
            return self.live.artifacts
        self.artifacts_collected = True
        launch = self.launch
        collected = await collect_results(
            sandbox,
            self.store,
            self.deps.blobs,
            run_id=launch.run_id,
            collection=launch.collection,
            task=launch.task,
            limits=self.deps.config.results,
        )
        for item in collected.files:
            item["url"] = f"{launch.base_url}{item['url']}"
        self.live.artifacts = collected.files
        for warning in collected.warnings():
            await self.emit(Notice(warning))
        return collected.files

    async def _fail(self, message: str, code: str) -> None:
        await self.emit(AgentError(message, code))
        await self.emit(Finished(ok=False, reason=code))
        await self.store.update_trajectory(
            self.launch.run_id,
            status="failed",
            error=message,
            finished_at=datetime.now(UTC),
            cost_usd=self.live.cost.total,
        )
        self.settled = True
        self.live.close("failed", message, code)

    def _costs(self) -> dict[str, object]:
        """The run's cost figures besides its total: the agent's own, and its model calls."""
        cost = self.live.cost
        return {
            "agent_cost_usd": self.live.usage.cost_usd if self.live.usage else None,
            "model_calls": cost.calls,
            "unpriced_model_calls": cost.unpriced,
        }

    async def _cleanup(self) -> None:
        """Shielded: keep what the run wrote, remove the sandbox, settle the record."""
        sandbox = self.sandbox
        with anyio.move_on_after(self.deps.config.cleanup_timeout):
            if sandbox is not None and not self.live.done:
                # Cancelled (client gone, server stopping): stop the agent, keep its results.
                try:
                    await sandbox.kill()
                    await self._collect(sandbox)
                except Exception:
                    logger.exception("keeping results of cancelled run %s", self.launch.run_id)
            if not self.live.done:
                await self.store.update_trajectory(
                    self.launch.run_id,
                    status="cancelled",
                    error="cancelled before it finished",
                    finished_at=datetime.now(UTC),
                    cost_usd=self.live.cost.total,
                )
                self.settled = True
        if sandbox is not None and not self.kept:
            await sandbox.close()

    def _elapsed(self) -> float:
        return time.monotonic() - self.started


def _failure_message(live: LiveRun, status: ExitStatus, stderr: str) -> str:
    errors = [e.message for e in live.events if isinstance(e, AgentError)]
    if errors:
        return errors[-1]
    tail = stderr.strip().splitlines()[-3:]
    detail = f": {' | '.join(tail)}" if tail else ""
    return f"The agent exited with code {status.exit_code}{detail}"
