"""Running a real, pinned agent CLI on this host, the way a sandbox runs it.

The CLI comes from the agent cache named by ``JETTY_PROXY_AGENT_CACHE_DIR`` (as ``jetty-proxy
agents install`` fills it); without one the test is skipped, except in CI, where it fails. The
CLI runs under the loopback forwarder, which relays ``127.0.0.1:PORT`` to the relay's unix
socket, exactly as inside a sandbox with no network.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeAlias

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.agents import AgentSpec, StandbyAgent, get_adapter
from proxy.agents.forwarder import ensure_forwarder, forwarder_argv
from proxy.agents.install import AgentCache
from proxy.agents.layout import InstalledAgent
from proxy.events import Event
from proxy.relay.app import create_relay_app
from proxy.relay.tokens import ModelUsage, RunTokens, new_token
from proxy.settings import Settings
from tests.support.ci import unavailable
from tests.support.live import free_port, serve, serve_unix


def installed_agent(name: str) -> InstalledAgent:
    """The pinned CLI ``name`` from the cache; skips (fails in CI) when it is not there."""
    cache = os.environ.get("JETTY_PROXY_AGENT_CACHE_DIR")
    adapter = get_adapter(name)
    if cache and AgentCache(Path(cache)).status(adapter).installed:
        return anyio.run(AgentCache(Path(cache)).ensure, adapter)
    unavailable(
        f"the pinned {name} CLI is not in JETTY_PROXY_AGENT_CACHE_DIR",
        "scripts/ci/agent-clis.sh fills the cache",
    )


@dataclass
class Recorder:
    """Wraps the relay app and records, per HTTP request, its path and one header."""

    app: ASGIApp
    header: bytes
    seen: list[tuple[str, str | None]] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            value = dict(scope["headers"]).get(self.header)
            self.seen.append((scope["path"], value.decode() if value else None))
        await self.app(scope, receive, send)


def run_under_forwarder(
    agent: InstalledAgent,
    spec: AgentSpec,
    socket_path: Path,
    tools_dir: Path,
    *,
    standby: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Build ``spec`` for ``agent``, write its files, and run it under the forwarder; with
    ``standby``, as a warm sandbox starts it ahead of its run, then hands it ``spec``'s run
    on its stdin.

    ``spec.relay_base_url`` must be ``http://127.0.0.1:{port}`` for the port forwarded.
    """
    port = int(spec.relay_base_url.rsplit(":", 1)[1])
    adapter = get_adapter(agent.name)
    stdin = ""
    if standby:
        assert isinstance(adapter, StandbyAgent)
        started = adapter.standby(spec)
        assert started is not None
        handover = adapter.handover(spec)
        invocation = replace(started, files={**started.files, **handover.files})
        stdin = handover.stdin.decode()
    else:
        invocation = adapter.build(spec)
    for path, content in invocation.files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(content)
    forwarder = anyio.run(ensure_forwarder, tools_dir)
    argv = forwarder_argv(
        [*agent.host_argv, *invocation.argv[1:]],
        port=port,
        socket=str(socket_path),
        command=str(forwarder),
    )
    # Sandboxes provide PATH; on the host the shell tools need ours.
    path = ":".join([*agent.host_path_entries, os.environ.get("PATH", "/usr/bin:/bin")])
    return subprocess.run(
        argv,
        env={**invocation.env, "PATH": path},
        cwd=invocation.cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
    )


def loopback_url() -> str:
    """A base URL on a free loopback port, for the forwarder to listen on."""
    return f"http://127.0.0.1:{free_port()}"


def translate(agent_name: str, process: subprocess.CompletedProcess[str]) -> list[Event]:
    """The events the adapter's translator makes of the process's stdout and exit."""
    translator = get_adapter(agent_name).new_translator()
    events: list[Event] = []
    for line in process.stdout.splitlines():
        events += translator.feed(line)
    events += translator.finish(process.returncode)
    return events


HostRun: TypeAlias = tuple[Recorder, str, list[ModelUsage], subprocess.CompletedProcess[str]]


def run_through_relay(
    agent: InstalledAgent,
    upstream: ASGIApp,
    tmp_path: Path,
    *,
    model: str,
    key_header: bytes,
    settings: Callable[[str], Settings],
    system_prompt: str = "",
    standby: bool = False,
) -> HostRun:
    """Run ``agent`` on one task under the forwarder, through a relay on a unix socket, to
    ``upstream`` (a scripted provider); ``settings(upstream_url)`` points the relay at it.

    With ``standby``, the agent is started as a warm sandbox starts it, with a token of its
    own that the run's grant admits (as at a claim), and handed its run on stdin.

    Returns the relay requests seen (path and ``key_header``), the agent's token, the usage
    the relay reported, and the finished process.
    """
    tokens = RunTokens()
    usage: list[ModelUsage] = []

    async def record(run_id: str, found: ModelUsage) -> None:
        usage.append(found)

    token = tokens.issue(f"run-{agent.name}", "coll")
    if standby:
        started, token = token, new_token()
        tokens.admit(token, like=started)
    with serve(upstream) as upstream_url:
        relay = create_relay_app(tokens, settings(upstream_url), on_usage=record)
        recorder = Recorder(relay, key_header)
        with serve_unix(recorder) as socket_path:
            spec = AgentSpec(
                prompt="Write hello.txt into the results directory.",
                model=model,
                relay_base_url=loopback_url(),
                relay_token=token,
                system_prompt=system_prompt,
                workdir=str(tmp_path / "app"),
                home=str(tmp_path / "home"),
            )
            process = run_under_forwarder(
                agent, spec, socket_path, tmp_path / "tools", standby=standby
            )
    return recorder, token, usage, process
