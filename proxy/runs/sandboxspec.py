"""What a run's sandbox runs: the agent's command line, its environment and files, and what
it needs from this server (the agent CLI, the model relay).

The agent starts through a short shell prelude that makes the directories the runbook
contract promises (/app/results, /app/assets, HOME) and then becomes the agent. Where the
backend takes them (`~proxy.sandbox.Capabilities` ``inline_files``), the run's own small text
files are written by that prelude too; the rest are copied in before the start.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import secrets
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from proxy.agents import AgentAdapter, AgentSpec, Invocation, StandbyAgent
from proxy.agents.forwarder import forwarder_argv
from proxy.jetty import RunPlan
from proxy.relay.tokens import new_token
from proxy.runs.agent import AgentSetup
from proxy.runs.launch import AGENT_HOME, EngineConfig, RunLaunch
from proxy.sandbox import Capabilities, Mount, SandboxError, SandboxRelay, SandboxSpec
from proxy.sandbox.base import LABEL_OWNER, LABEL_SERVER, RELAY_DIR, tool_mounts
from proxy.sandbox.warm import Standby, Takeover

__all__ = [
    "RunTakeover",
    "StandbyAgentStart",
    "agent_mounts",
    "sandbox_spec",
    "standby_agent",
    "takeover_spec",
]

# Bash (or sh) prepares the directories the runbook contract promises, then becomes the agent.
_DIRECTORIES = "mkdir -p /app/results /app/assets"
_PRELUDE = _DIRECTORIES + ' "$HOME"{writes} && cd /app && exec "$@"'
# The run's own small text files (trajectory.json, the agent's config) are written by the
# prelude: copying them into a created container costs the engine a mount of its file system
# and a helper process, about 100 ms on Docker 20.10, before the agent can start.
_PRELUDE_FILES_MAX_BYTES = 64 * 1024


def sandbox_spec(
    launch: RunLaunch,
    agent: AgentSetup,
    config: EngineConfig,
    *,
    token: str,
    image: str,
    capabilities: Capabilities,
    reusing: bool,
    port: int | None = None,
) -> tuple[SandboxSpec, dict[str, bytes]]:
    """The sandbox's spec, and the files (absolute paths) to copy in before the start: those
    the start command does not write itself. ``token`` is the run's relay token; ``reusing``:
    the turn runs in the kept sandbox of the run it continues; ``port``: the loopback port of
    an agent's forwarder (any free-looking one by default).

    The spec says what the sandbox needs (the agent, the relay); how it gets them is the
    backend's. The agent's own settings follow from that: a sandbox that mounts this
    machine's files reaches the relay through its unix socket (through the loopback forwarder
    for an agent that only takes a URL), any other at ``config.relay_url``.
    """
    plan, adapter = launch.plan, launch.adapter
    relay = _Relay.of(adapter, config, capabilities, port)
    invocation = adapter.build(
        relay.agent_spec(
            plan,
            token=token,
            prompt=plan.instruction,
            system_prompt=plan.system_prompt,
            resume_session_id=_resume_session_id(launch, reusing),
            extra_env=dict(plan.secret_env),
        )
    )
    files = {**invocation.files, "/app/trajectory.json": _trajectory_json(launch)}
    # Where argv does not reach the sandbox as given (the local backend rewrites paths in it),
    # file contents must not go through it: there the files are copied in.
    inline = capabilities.inline_files
    prelude, files = _prelude(files) if inline else (_prelude({})[0], files)
    argv, relay_of_spec = relay.command(invocation, agent, adapter, token=token)
    spec = SandboxSpec(
        run_id=launch.run_id,
        collection=launch.collection,
        image=image,
        argv=["/bin/sh", "-c", prelude, "jetty-run", *argv],
        env=_environment(invocation, agent),
        workdir="/app",
        cpus=plan.cpus,
        memory_bytes=plan.memory_bytes,
        network_enabled=plan.network_enabled,
        labels={LABEL_OWNER: config.owner, LABEL_SERVER: config.server_id},
        agent=agent.tools(),
        relay=relay_of_spec,
        timeout_seconds=plan.timeout_sec,
    )
    return spec, files


@dataclass(frozen=True)
class StandbyAgentStart:
    """An agent a warm sandbox starts ahead of its run (`~proxy.sandbox.warm.Standby`): its
    relay credential (one that grants nothing until a run's claim admits it, see
    `~proxy.relay.tokens.RunTokens.admit`), its forwarder's port, and the adapter's
    invocation, which a run must ask for exactly to take it over."""

    token: str
    port: int
    invocation: Invocation
    standby: Standby


def standby_agent(
    adapter: AgentAdapter,
    agent: AgentSetup,
    config: EngineConfig,
    capabilities: Capabilities,
    plan: RunPlan,
) -> StandbyAgentStart | None:
    """The agent a warm sandbox for the runs of ``plan`` starts ahead of them, where
    ``adapter`` can (`~proxy.agents.StandbyAgent`): nothing of a run in it, neither its
    instruction, system prompt, secrets nor relay token. None where it cannot."""
    if not isinstance(adapter, StandbyAgent) or not capabilities.inline_files:
        return None
    token, port = new_token(), _any_port()
    relay = _Relay.of(adapter, config, capabilities, port)
    invocation = adapter.standby(
        relay.agent_spec(plan, token=token, prompt="", system_prompt="", extra_env={})
    )
    if invocation is None:
        return None
    prelude, rest = _prelude(invocation.files)
    if rest:
        return None  # its files do not fit in the start command
    argv, _ = relay.command(invocation, agent, adapter, token=token)
    command = ["/bin/sh", "-c", prelude, "jetty-standby", *argv]
    return StandbyAgentStart(
        token, port, invocation, Standby(command, _environment(invocation, agent))
    )


@dataclass(frozen=True)
class RunTakeover:
    """How a run takes over an agent started ahead of it (`takeover_spec`): the run's
    sandbox spec with that agent's relay ``token`` and port (its own command, should the
    agent have exited), the `Takeover`, and the files to copy in first. The run's grant must
    admit ``token`` before the sandbox starts (`~proxy.relay.tokens.RunTokens.admit`)."""

    spec: SandboxSpec
    takeover: Takeover
    files: dict[str, bytes]
    token: str


def takeover_spec(
    launch: RunLaunch,
    agent: AgentSetup,
    config: EngineConfig,
    *,
    image: str,
    capabilities: Capabilities,
    started: StandbyAgentStart,
) -> RunTakeover | None:
    """How the run of ``launch`` takes over the agent ``started`` ahead of it; None where
    the run asks for anything but what was started (another model, a session to resume,
    secrets)."""
    adapter = launch.adapter
    if not isinstance(adapter, StandbyAgent):
        return None
    plan = launch.plan
    relay = _Relay.of(adapter, config, capabilities, started.port)
    run_agent = relay.agent_spec(
        plan,
        token=started.token,
        prompt=plan.instruction,
        system_prompt=plan.system_prompt,
        resume_session_id=_resume_session_id(launch, reusing=False),
        extra_env=dict(plan.secret_env),
    )
    if adapter.standby(run_agent) != started.invocation:
        return None
    spec, files = sandbox_spec(
        launch,
        agent,
        config,
        token=started.token,
        image=image,
        capabilities=capabilities,
        reusing=False,
        port=started.port,
    )
    handover = adapter.handover(run_agent)
    prepare, rest = _prepare({**handover.files, "/app/trajectory.json": _trajectory_json(launch)})
    takeover = Takeover(prepare, handover.stdin)
    return RunTakeover(spec, takeover, {**files, **rest}, started.token)


@dataclass(frozen=True)
class _Relay:
    """How one sandbox's agent reaches the relay: ``base_url`` (and ``socket``, for an agent
    that dials the relay's socket itself), through a forwarder on ``port`` where it only
    takes a URL and the sandbox mounts this machine's files."""

    config: EngineConfig
    base_url: str
    socket: str | None
    port: int
    forwarder: bool

    @classmethod
    def of(
        cls,
        adapter: AgentAdapter,
        config: EngineConfig,
        capabilities: Capabilities,
        port: int | None,
    ) -> _Relay:
        port = _any_port() if port is None else port
        tcp = adapter.relay_transport == "tcp"
        socket = f"{RELAY_DIR}/{config.relay_socket.name}"
        if not capabilities.mounts_host:
            if config.relay_url is None:
                raise SandboxError(
                    "sandboxes of this backend reach the model relay over the network: set"
                    " relay_url (and relay_port)"
                )
            return cls(config, config.relay_url, None, port, forwarder=False)
        if tcp:
            return cls(config, f"http://127.0.0.1:{port}", None, port, forwarder=True)
        return cls(config, "http://relay", socket, port, forwarder=False)

    def agent_spec(
        self,
        plan: RunPlan,
        *,
        token: str,
        prompt: str,
        system_prompt: str,
        extra_env: dict[str, str],
        resume_session_id: str | None = None,
    ) -> AgentSpec:
        return AgentSpec(
            prompt=prompt,
            model=plan.model,
            relay_base_url=self.base_url,
            relay_token=token,
            system_prompt=system_prompt,
            workdir="/app",
            home=AGENT_HOME,
            max_turns=plan.max_turns,
            resume_session_id=resume_session_id,
            extra_env=extra_env,
            relay_socket=self.socket,
            memory_bytes=plan.memory_bytes,
        )

    def command(
        self, invocation: Invocation, agent: AgentSetup, adapter: AgentAdapter, *, token: str
    ) -> tuple[list[str], SandboxRelay]:
        """The agent's command line in the sandbox, and what the sandbox needs of the relay."""
        config = self.config
        relay = SandboxRelay(token=token, socket=config.relay_socket, url=config.relay_url)
        argv = [*agent.layout.argv_with(invocation.node_options), *invocation.argv[1:]]
        if self.forwarder:
            if agent.forwarder_dir is None:
                raise SandboxError(f"{adapter.name} needs the loopback forwarder")
            relay = dataclasses.replace(relay, forwarder=agent.forwarder_dir)
            socket = f"{RELAY_DIR}/{config.relay_socket.name}"
            argv = forwarder_argv(argv, port=self.port, socket=socket)
        return argv, relay


def _any_port() -> int:
    # Any free-looking port: the sandbox has its own loopback (the local backend shares the
    # host's, so it must not be a fixed one).
    return secrets.randbelow(20_000) + 40_000


def _environment(invocation: Invocation, agent: AgentSetup) -> dict[str, str]:
    layout = agent.layout
    return {**invocation.env, **layout.runtime_env, "PATH": layout.env_path()}


def agent_mounts(agent: AgentSetup, config: EngineConfig, *, forwarder: bool) -> list[Mount]:
    """What a sandbox of a backend that mounts host paths mounts to run ``agent``: its CLI, the
    relay's socket and, with ``forwarder`` (when there is one), the loopback forwarder, as
    `SandboxSpec.host_mounts` makes them for a run. Warm sandboxes mount the same
    (`proxy.runs.pools`), so that a run's mounts are found among theirs."""
    return tool_mounts(
        agent.tools(), config.relay_socket, agent.forwarder_dir if forwarder else None
    )


def _resume_session_id(launch: RunLaunch, reusing: bool) -> str | None:
    """The agent session to resume: only where its files are (kept sandbox, saved HOME).

    Resuming a session whose files are missing makes the CLIs exit at once (Codex: "no rollout
    found", Gemini CLI: exit 42); without them the turn starts a new session.
    """
    continuation = launch.continuation
    if continuation is None or not continuation.agent_session_id:
        return None
    if reusing or continuation.home_blob:
        return continuation.agent_session_id
    return None


def _trajectory_json(launch: RunLaunch) -> bytes:
    metadata = {
        "trajectory_id": launch.run_id,
        "collection": launch.collection,
        "task": launch.task,
        "agent": launch.adapter.name,
        "model": launch.plan.model,
        "results_dir": "/app/results",
    }
    return json.dumps(metadata, indent=2).encode()


def _prelude(files: Mapping[str, bytes]) -> tuple[str, dict[str, bytes]]:
    """The prelude, writing those of ``files`` that fit in it; and the others, to copy in."""
    writes, rest = _writes(files)
    return _PRELUDE.format(writes=writes), rest


def _prepare(files: Mapping[str, bytes]) -> tuple[str, dict[str, bytes]]:
    """A takeover's script: the prelude's directories and ``files`` as it would write them
    (the agent's own HOME was made when it started); and the files to copy in."""
    writes, rest = _writes(files)
    return _DIRECTORIES + writes, rest


def _writes(files: Mapping[str, bytes]) -> tuple[str, dict[str, bytes]]:
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
    return "".join(writes), rest
