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

from proxy.agents import AgentSpec
from proxy.agents.forwarder import forwarder_argv
from proxy.runs.agent import AgentSetup
from proxy.runs.launch import AGENT_HOME, EngineConfig, RunLaunch
from proxy.sandbox import Capabilities, Mount, SandboxError, SandboxRelay, SandboxSpec
from proxy.sandbox.base import LABEL_OWNER, LABEL_SERVER, RELAY_DIR, tool_mounts

__all__ = ["agent_mounts", "sandbox_spec"]

# Bash (or sh) prepares the directories the runbook contract promises, then becomes the agent.
_PRELUDE = 'mkdir -p /app/results /app/assets "$HOME"{writes} && cd /app && exec "$@"'
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
) -> tuple[SandboxSpec, dict[str, bytes]]:
    """The sandbox's spec, and the files (absolute paths) to copy in before the start: those
    the start command does not write itself. ``token`` is the run's relay token; ``reusing``:
    the turn runs in the kept sandbox of the run it continues.

    The spec says what the sandbox needs (the agent, the relay); how it gets them is the
    backend's. The agent's own settings follow from that: a sandbox that mounts this
    machine's files reaches the relay through its unix socket (through the loopback forwarder
    for an agent that only takes a URL), any other at ``config.relay_url``.
    """
    plan, layout = launch.plan, agent.layout
    tcp = launch.adapter.relay_transport == "tcp"
    relay = SandboxRelay(token=token, socket=config.relay_socket, url=config.relay_url)
    socket = f"{RELAY_DIR}/{config.relay_socket.name}"
    # Any free-looking port: the sandbox has its own loopback (the local backend shares the
    # host's, so it must not be a fixed one).
    port = secrets.randbelow(20_000) + 40_000
    if not capabilities.mounts_host:
        if config.relay_url is None:
            raise SandboxError(
                "sandboxes of this backend reach the model relay over the network: set"
                " relay_url (and relay_port)"
            )
        base_url, relay_socket = config.relay_url, None
    elif tcp:
        base_url, relay_socket = f"http://127.0.0.1:{port}", None
    else:
        base_url, relay_socket = "http://relay", socket
    invocation = launch.adapter.build(
        AgentSpec(
            prompt=plan.instruction,
            model=plan.model,
            relay_base_url=base_url,
            relay_token=token,
            system_prompt=plan.system_prompt,
            workdir="/app",
            home=AGENT_HOME,
            max_turns=plan.max_turns,
            resume_session_id=_resume_session_id(launch, reusing),
            extra_env=dict(plan.secret_env),
            relay_socket=relay_socket,
            memory_bytes=plan.memory_bytes,
        )
    )
    files = {**invocation.files, "/app/trajectory.json": _trajectory_json(launch)}
    # Where argv does not reach the sandbox as given (the local backend rewrites paths in it),
    # file contents must not go through it: there the files are copied in.
    inline = capabilities.inline_files
    prelude, files = _prelude(files) if inline else (_prelude({})[0], files)
    argv = [*layout.argv_with(invocation.node_options), *invocation.argv[1:]]
    if tcp and capabilities.mounts_host:
        if agent.forwarder_dir is None:
            raise SandboxError(f"{launch.adapter.name} needs the loopback forwarder")
        relay = dataclasses.replace(relay, forwarder=agent.forwarder_dir)
        argv = forwarder_argv(argv, port=port, socket=socket)
    spec = SandboxSpec(
        run_id=launch.run_id,
        collection=launch.collection,
        image=image,
        argv=["/bin/sh", "-c", prelude, "jetty-run", *argv],
        env={**invocation.env, **layout.runtime_env, "PATH": layout.env_path()},
        workdir="/app",
        cpus=plan.cpus,
        memory_bytes=plan.memory_bytes,
        network_enabled=plan.network_enabled,
        labels={LABEL_OWNER: config.owner, LABEL_SERVER: config.server_id},
        agent=agent.tools(),
        relay=relay,
        timeout_seconds=plan.timeout_sec,
    )
    return spec, files


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
