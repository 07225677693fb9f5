"""One run from start to end: sandbox, agent, relay token, events, results, session.

:class:`RunLifecycle` is created by :meth:`RunEngine.start` for each run and runs in the
engine's task group. It owns the run's sandbox until the end: then the sandbox is closed, or
handed to the engine's :class:`~proxy.runs.followup.KeptSandboxes` for a follow-up turn.
"""

from __future__ import annotations

import json
import logging
import posixpath
import secrets
import shlex
import time
from collections.abc import Mapping
from contextlib import aclosing
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import anyio

from proxy.agents import AgentSpec
from proxy.agents.forwarder import FORWARDER_MOUNT_POINT, forwarder_argv
from proxy.agents.install import AgentInstallError, InstalledAgent
from proxy.environments import EnvironmentFailed, resolve_environment
from proxy.events import (
    AgentError,
    Event,
    Finished,
    Progress,
    SessionStarted,
    TextDelta,
    Usage,
)
from proxy.events import Warning as WarningEvent
from proxy.relay.tokens import ModelUsage
from proxy.runs.artifacts import collect_results, results_markdown
from proxy.runs.followup import Continuation, marker_line, restore, save_home
from proxy.runs.launch import AGENT_HOME, RELAY_MOUNT, SANDBOX_OF, RunLaunch
from proxy.runs.live import LiveRun
from proxy.sandbox import ExitStatus, Mount, Sandbox, SandboxError, SandboxSpec
from proxy.sandbox.base import LABEL_OWNER, LABEL_SERVER
from proxy.store.records import TrajectoryStatus

if TYPE_CHECKING:
    from proxy.runs.engine import RunEngine

logger = logging.getLogger("proxy.runs")

_PENDING: tuple[TrajectoryStatus, ...] = ("pending",)
# Bash (or sh) prepares the directories the runbook contract promises, then becomes the agent.
_PRELUDE = 'mkdir -p /app/results /app/assets "$HOME"{writes} && cd /app && exec "$@"'
# The run's own small text files (trajectory.json, the agent's config) are written by the
# prelude: copying them into a created container costs the engine a mount of its file system
# and a helper process, about 100 ms on Docker 20.10, before the agent can start.
_PRELUDE_FILES_MAX_BYTES = 64 * 1024


class RunLifecycle:
    """One execution of one run (a fresh object per run keeps the state local)."""

    def __init__(self, engine: RunEngine, launch: RunLaunch, live: LiveRun) -> None:
        self.engine = engine
        self.launch = launch
        self.live = live
        self.store = engine._store
        self.started = time.monotonic()
        self.sandbox: Sandbox | None = None
        self.agent = launch.agent
        self.image = launch.image
        self.artifacts_collected = False
        self.kept = False
        self.reusing = False  # this turn runs in the kept sandbox of the run it continues

    async def emit(self, event: Event) -> None:
        self.live.publish(event)
        data = event.to_dict()
        await self.store.append_event(self.launch.run_id, str(data.get("type")), data)

    async def record_model_call(self, usage: ModelUsage) -> None:
        await self.store.append_event(
            self.launch.run_id,
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
            },
        )

    async def execute(self) -> None:
        launch, plan = self.launch, self.launch.plan
        token = self.engine._tokens.issue(
            launch.run_id,
            launch.collection,
            launch.credentials,
            on_usage=self.record_model_call,
        )
        try:
            for warning in plan.warnings:
                await self.emit(WarningEvent(warning))
            if self.agent is None and not await self._install_agent():
                return
            self.image = await self._environment()
            self.sandbox = await self._kept_sandbox(token)
            if self.sandbox is None:
                await self.emit(
                    Progress(
                        f"Starting {launch.adapter.name} {self.installed.version} in "
                        f"{self.image} ({self.engine.backend.name} sandbox, run {launch.run_id})"
                    )
                )
                self.sandbox = await self.engine.backend.launch(
                    self._sandbox_spec(token, self.image)
                )
                if launch.continuation is not None:
                    await self._restore(self.sandbox, launch.continuation)
            await self._put_inputs(self.sandbox, token)
            await self.store.transition(launch.run_id, "running", allowed_from=_PENDING)
            await self.store.update_trajectory(launch.run_id, started_at=datetime.now(UTC))
            await self.sandbox.start()
            status = await self._follow(self.sandbox)
            await self._finish(self.sandbox, status)
        except EnvironmentFailed as exc:
            await self._fail(exc.message, exc.code or "environment_failed")
        except SandboxError as exc:
            await self._fail(f"Sandbox failed: {exc}", "sandbox_error")
        finally:
            with anyio.CancelScope(shield=True):
                self.engine._tokens.revoke(launch.run_id)
                await self._cleanup()

    async def _install_agent(self) -> bool:
        """Install the agent CLI (its first run on this server); False when that failed."""
        adapter, setup = self.launch.adapter, self.launch.setup
        version = adapter.binary.version
        await self.emit(
            Progress(
                f"Installing {adapter.name} {version}: the first run of this agent on this"
                " server (later runs reuse it)"
            )
        )
        try:
            if setup is None:
                raise AgentInstallError(adapter.binary.npm_package, version, "no installer")
            self.agent = await setup()
        except AgentInstallError as exc:
            await self._fail(
                f"The {adapter.name} CLI could not be installed: {exc}", "agent_unavailable"
            )
            return False
        return True

    @property
    def installed(self) -> InstalledAgent:
        if self.agent is None:
            raise SandboxError("the agent CLI is not installed")
        return self.agent.installed

    async def _kept_sandbox(self, token: str) -> Sandbox | None:
        """The previous turn's sandbox, ready for this turn, if it is still kept."""
        continuation = self.launch.continuation
        taken = self.engine.kept.take(continuation.previous.id) if continuation else None
        if continuation is None or taken is None:
            return None
        sandbox, kept_image = taken
        if kept_image != self.image:
            await self.emit(
                Progress(
                    f"Run {continuation.previous.id} ran in {kept_image}, and this turn asks for"
                    f" {self.image}: continuing in a new sandbox"
                )
            )
            with anyio.CancelScope(shield=True):
                await sandbox.close()
            return None
        self.reusing = True
        spec = self._sandbox_spec(token, self.image)
        try:
            await self.store.update_trajectory(
                self.launch.run_id,
                environment={
                    "image": self.image,
                    "backend": self.engine.backend.name,
                    SANDBOX_OF: sandbox.run_id,
                },
            )
            await sandbox.rerun(spec.argv, spec.env)
        except SandboxError as exc:
            logger.warning(
                "could not reuse the sandbox of run %s: %s", continuation.previous.id, exc
            )
            with anyio.CancelScope(shield=True):
                await sandbox.close()
            self.reusing = False
            return None
        await self.emit(
            Progress(
                f"Continuing run {continuation.previous.id} (turn {continuation.turn}) in its"
                f" sandbox: {self.launch.adapter.name} {self.installed.version} in"
                f" {self.image}, run {self.launch.run_id}"
            )
        )
        return sandbox

    async def _restore(self, sandbox: Sandbox, continuation: Continuation) -> None:
        """Put back what the previous turn left: its agent HOME, results and input files."""
        restored = await restore(
            sandbox,
            continuation,
            store=self.store,
            blobs=self.engine._blobs,
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
        """Pull or build the run's environment, with its progress in the stream; the image."""
        environments = self.engine._environments
        if environments is None:
            return self.launch.image

        async def say(text: str) -> None:
            await self.emit(Progress(text))

        resolved = await resolve_environment(
            self.launch.plan.environment, environments=environments, progress=say
        )
        return resolved.reference

    def _sandbox_spec(self, token: str, image: str) -> SandboxSpec:
        launch, plan = self.launch, self.launch.plan
        socket = f"{RELAY_MOUNT}/{self.engine._config.relay_socket.name}"
        mounts = [
            Mount(self.installed.host_dir, self.installed.mount_point),
            Mount(self.engine._config.relay_socket.parent, RELAY_MOUNT),
        ]
        tcp = launch.adapter.relay_transport == "tcp"
        # Any free-looking port: the sandbox has its own loopback (the local backend shares
        # the host's, so it must not be a fixed one).
        port = secrets.randbelow(20_000) + 40_000
        invocation = launch.adapter.build(
            AgentSpec(
                prompt=plan.instruction,
                model=plan.model,
                relay_base_url=f"http://127.0.0.1:{port}" if tcp else "http://relay",
                relay_token=token,
                system_prompt=plan.system_prompt,
                workdir="/app",
                home=AGENT_HOME,
                max_turns=plan.max_turns,
                resume_session_id=self._resume_session_id(),
                extra_env=dict(plan.secret_env),
                relay_socket=None if tcp else socket,
            )
        )
        files = dict(invocation.files)
        files["/app/trajectory.json"] = self._trajectory_json()
        # Without a container (local backend) sandbox paths in argv are rewritten, file
        # contents must not be: there the files are copied in as before.
        inline = self.engine.backend.name == "docker"
        prelude, self._files_to_copy = _prelude(files) if inline else (_prelude({})[0], files)
        argv = [*self.installed.argv, *invocation.argv[1:]]
        if tcp:
            forwarder_dir = self.agent.forwarder_dir if self.agent else None
            if forwarder_dir is None:
                raise SandboxError(f"{launch.adapter.name} needs the loopback forwarder")
            mounts.append(Mount(forwarder_dir, FORWARDER_MOUNT_POINT))
            argv = forwarder_argv(argv, port=port, socket=socket)
        env = {**invocation.env, "PATH": self.installed.env_path()}
        return SandboxSpec(
            run_id=launch.run_id,
            collection=launch.collection,
            image=image,
            argv=["/bin/sh", "-c", prelude, "jetty-run", *argv],
            env=env,
            workdir="/app",
            mounts=tuple(mounts),
            cpus=plan.cpus,
            memory_bytes=plan.memory_bytes,
            network_enabled=plan.network_enabled,
            labels={
                LABEL_OWNER: self.engine._config.owner,
                LABEL_SERVER: self.engine._config.server_id,
            },
        )

    def _resume_session_id(self) -> str | None:
        """The agent session to resume: only where its files are (kept sandbox, saved HOME).

        Resuming a session whose files are missing makes the CLIs exit at once (Codex: "no
        rollout found", Gemini CLI: exit 42); without them the turn starts a new session.
        """
        continuation = self.launch.continuation
        if continuation is None or not continuation.agent_session_id:
            return None
        if self.reusing or continuation.home_blob:
            return continuation.agent_session_id
        return None

    def _trajectory_json(self) -> bytes:
        launch = self.launch
        metadata = {
            "trajectory_id": launch.run_id,
            "collection": launch.collection,
            "task": launch.task,
            "agent": launch.adapter.name,
            "model": launch.plan.model,
            "results_dir": "/app/results",
        }
        return json.dumps(metadata, indent=2).encode()

    async def _put_inputs(self, sandbox: Sandbox, token: str) -> None:
        launch = self.launch
        if self._files_to_copy:
            files = {path.lstrip("/"): content for path, content in self._files_to_copy.items()}
            await sandbox.put_files("/", files)
        if launch.inputs:
            await sandbox.put_files("/app/assets", launch.inputs)

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
            },
            cost_usd=usage.cost_usd,
            error=error,
            finished_at=datetime.now(UTC),
            session=session,
        )
        # Kept before the run is closed: a follow-up sent as soon as the answer ends finds it.
        self.kept = self.engine.kept.keep(launch.run_id, sandbox, self.image)
        if ok:
            live.close("completed")
        else:
            code = finished.reason if finished is not None and not finished.ok else "agent_error"
            live.close("failed", error, code)

    async def _save_session(self, sandbox: Sandbox) -> dict[str, object]:
        """Archive the agent's HOME (its session files) so a later turn can resume it."""
        launch, config = self.launch, self.engine._config
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
                blobs=self.engine._blobs,
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
                WarningEvent(
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
            self.engine._blobs,
            run_id=launch.run_id,
            collection=launch.collection,
            task=launch.task,
            limits=self.engine._config.results,
        )
        for item in collected.files:
            item["url"] = f"{launch.base_url}{item['url']}"
        self.live.artifacts = collected.files
        for warning in collected.warnings():
            await self.emit(WarningEvent(warning))
        return collected.files

    async def _fail(self, message: str, code: str) -> None:
        await self.emit(AgentError(message, code))
        await self.emit(Finished(ok=False, reason=code))
        await self.store.update_trajectory(
            self.launch.run_id, status="failed", error=message, finished_at=datetime.now(UTC)
        )
        self.live.close("failed", message, code)

    async def _cleanup(self) -> None:
        """Shielded: keep what the run wrote, remove the sandbox, settle the record."""
        sandbox = self.sandbox
        with anyio.move_on_after(self.engine._config.cleanup_timeout):
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
                )
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


def _prelude(files: Mapping[str, bytes]) -> tuple[str, dict[str, bytes]]:
    """The prelude, writing those of ``files`` that fit in it; and the others, to copy in."""
    writes: list[str] = []
    rest: dict[str, bytes] = {}
    size = 0
    for path, content in files.items():
        try:
            text = content.decode()
        except UnicodeDecodeError:
            text = None
        if text is None or "\0" in text or size + len(content) > _PRELUDE_FILES_MAX_BYTES:
            rest[path] = content
            continue
        size += len(content)
        directory = shlex.quote(posixpath.dirname(path))
        writes.append(
            f" && mkdir -p {directory} && printf '%s' {shlex.quote(text)} > {shlex.quote(path)}"
        )
    return _PRELUDE.format(writes="".join(writes)), rest
