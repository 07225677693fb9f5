"""What a run's sandbox is asked for: the agent and the relay, said once, got as the backend can.

A backend that mounts this machine's files gets the agent's install, the relay's socket and
(for an agent that only takes a URL) the forwarder as host mounts; one that does not gets the
agent by name and version and the relay's network URL, and nothing is installed here for it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.agents import get_adapter
from proxy.agents.install import AgentCache, pinned_layout
from proxy.sandbox import Capabilities, Isolation, Mount, Script, ScriptedBackend
from proxy.sandbox.base import FORWARDER_DIR, RELAY_DIR
from proxy.store import Store
from tests.support.runs import CLAUDE, finished, request, runs_on

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
