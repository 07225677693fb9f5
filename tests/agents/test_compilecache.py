"""Node's compile cache of a Node-script CLI: named as Node names it, made once per install,
and accepted by Node inside a sandbox that sees the install at its mount point."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import anyio
import pytest

from proxy.agents import AgentSpec, get_adapter
from proxy.agents.compilecache import (
    COMPILE_CACHE_DIR,
    cache_key,
    compile_cache_entries,
    file_url,
)
from proxy.agents.install import AgentCache
from proxy.agents.layout import InstalledAgent
from tests.support.fake_npm import write_fake_npm
from tests.support.host_cli import installed_agent

pytestmark = pytest.mark.anyio

TESTENV = "127.0.0.1:5000/jetty/testenv:bookworm"


@pytest.fixture(scope="module")
def gemini() -> InstalledAgent:
    return installed_agent("gemini-cli")


def node_of(agent: InstalledAgent) -> str:
    assert agent.node is not None
    return str(agent.host_dir / agent.node)


@pytest.mark.agents
def test_file_urls_are_spelled_as_node_spells_them(gemini: InstalledAgent) -> None:
    paths = [
        "/opt/jetty/agents/gemini-cli/node_modules/@google/gemini-cli/bundle/gemini.js",
        "/tmp/a dir/50%/#hash?q/`{x}`/ü/\\back/[sq]^|~!$&'()*+,;=:@.js",
    ]
    script = (
        "for (const p of JSON.parse(process.argv[1]))"
        " console.log(require('url').pathToFileURL(p).href)"
    )
    node = subprocess.run(
        [node_of(gemini), "-e", script, json.dumps(paths)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert node.stdout.splitlines() == [file_url(p) for p in paths]


@pytest.mark.agents
def test_cache_entries_are_named_as_node_names_them(gemini: InstalledAgent, tmp_path: Path) -> None:
    scripts = tmp_path / "a dir #1"
    scripts.mkdir()
    (scripts / "main.mjs").write_text("import './dep.mjs'; import('./old.cjs');\n")
    (scripts / "dep.mjs").write_text("export const x = 1;\n")
    (scripts / "old.cjs").write_text("module.exports = 2;\n")
    cache = tmp_path / "cache"
    subprocess.run(
        [node_of(gemini), str(scripts / "main.mjs")],
        env={"NODE_COMPILE_CACHE": str(cache), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    [tag] = cache.iterdir()
    assert sorted(entry.name for entry in tag.iterdir()) == sorted(
        [
            cache_key(1, file_url(str(scripts / "main.mjs"))),
            cache_key(1, file_url(str(scripts / "dep.mjs"))),
            cache_key(0, str(scripts / "old.cjs")),
        ]
    )


@pytest.mark.docker
@pytest.mark.agents
async def test_a_sandbox_runs_the_cli_from_its_compile_cache(
    gemini: InstalledAgent, tmp_path: Path
) -> None:
    # A copy of the install (hard links: no bytes copied), so the shared cache is not touched.
    root = tmp_path / "agents"
    root.mkdir()
    shutil.copytree(gemini.host_dir, root / gemini.host_dir.name, copy_function=os.link)
    cache = AgentCache(root)
    adapter = get_adapter("gemini-cli")
    prepared = await cache.prepare_compile_cache(adapter)
    assert prepared is not None and prepared.compile_cache == COMPILE_CACHE_DIR
    entries = compile_cache_entries(prepared.host_dir)
    assert entries is not None and entries > 10
    assert prepared.runtime_env == {
        "NODE_COMPILE_CACHE": f"{prepared.mount_point}/{COMPILE_CACHE_DIR}"
    }
    # Made once: asked again, it is only read back.
    before = (prepared.host_dir / COMPILE_CACHE_DIR).stat().st_mtime_ns
    await cache.prepare_compile_cache(adapter)
    assert (prepared.host_dir / COMPILE_CACHE_DIR).stat().st_mtime_ns == before

    # The CLI in a container, as a run starts it; Node says what it did with each entry.
    invocation = adapter.build(
        AgentSpec(
            prompt="hi",
            model="gemini-2.5-pro",
            relay_base_url="http://127.0.0.1:1",  # its first model call fails at once
            relay_token="none",
            home="/tmp/home",
        )
    )
    writes = " && ".join(
        f"mkdir -p {shlex.quote(str(Path(path).parent))}"
        f" && printf '%s' {shlex.quote(content.decode())} > {shlex.quote(path)}"
        for path, content in invocation.files.items()
    )
    command = shlex.join([*prepared.argv, *invocation.argv[1:]])
    env = {**invocation.env, **prepared.runtime_env, "NODE_DEBUG_NATIVE": "COMPILE_CACHE"}
    docker = [
        "docker",
        "run",
        "--rm",
        "--pull",
        "never",
        "--network",
        "none",
        "-v",
        f"{prepared.host_dir}:{prepared.mount_point}:ro",
        *(arg for key, value in env.items() for arg in ("-e", f"{key}={value}")),
        TESTENV,
        "sh",
        "-c",
        f"{writes} && {command}",
    ]
    with anyio.fail_after(120):
        result = await anyio.run_process(docker, check=False)
    log = [line for line in result.stderr.decode().splitlines() if "[compile cache]" in line]
    accepted = [line for line in log if "was accepted" in line]
    assert len(accepted) >= entries - 2, "\n".join(log)
    assert not [line for line in log if "mismatch" in line or "rejected" in line]


async def test_an_install_whose_cli_leaves_no_cache_is_not_run_again(tmp_path: Path) -> None:
    log = tmp_path / "npm.log"
    cache = AgentCache(tmp_path / "cache", npm=str(write_fake_npm(tmp_path)))
    os.environ["FAKE_NPM_LOG"] = str(log)
    try:
        agent = await cache.ensure(get_adapter("gemini-cli"))
    finally:
        del os.environ["FAKE_NPM_LOG"]
    # The stand-in CLI writes no compile cache: the install is left without (and says so).
    assert agent.compile_cache is None and agent.runtime_env == {}
    assert compile_cache_entries(agent.host_dir) == 0
    assert await cache.prepare_compile_cache(get_adapter("gemini-cli")) == agent
    # Native CLIs have nothing to compile.
    claude = await cache.ensure(get_adapter("claude-code"))
    assert not (claude.host_dir / COMPILE_CACHE_DIR).exists()
