"""The real Claude Code CLI, on this host, through the relay on a unix socket.

Needs the pinned CLI: from the agent cache named by ``JETTY_PROXY_AGENT_CACHE_DIR`` (as
``jetty-proxy agents install`` fills it), or ``JETTY_PROXY_TEST_CLAUDE_BIN`` naming a ``claude``
command. Without either the test is skipped, except in CI, where a missing CLI is a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import anyio
import pytest
from starlette.types import Receive, Scope, Send

from proxy.agents import AgentSpec, StandbyAgent, get_adapter
from proxy.agents.install import AgentCache
from proxy.events import AgentError, Event, Finished, TextDelta, ToolCall, ToolResult, Usage
from proxy.relay.app import create_relay_app
from proxy.relay.tokens import RunTokens, new_token
from proxy.settings import Settings
from tests.relay.conftest import REAL_KEY
from tests.support.ci import unavailable
from tests.support.live import serve, serve_unix
from tests.support.scripted_anthropic import ScriptedAnthropic

pytestmark = pytest.mark.agents


@pytest.fixture
def claude_bin() -> str:
    path = os.environ.get("JETTY_PROXY_TEST_CLAUDE_BIN")
    cache = os.environ.get("JETTY_PROXY_AGENT_CACHE_DIR")
    if not path and cache:
        adapter = get_adapter("claude-code")
        if AgentCache(Path(cache)).status(adapter).installed:
            path = str(anyio.run(AgentCache(Path(cache)).ensure, adapter).host_argv[0])
    if not path:
        unavailable(
            "no claude CLI (JETTY_PROXY_TEST_CLAUDE_BIN, or the agent cache)",
            "scripts/ci/agent-clis.sh fills the cache",
        )
    return path


def test_claude_code_completes_a_tool_call_through_the_relay(
    claude_bin: str, tmp_path: Path
) -> None:
    app_dir, home = tmp_path / "app", tmp_path / "home"
    app_dir.mkdir()
    home.mkdir()
    hello = app_dir / "results" / "hello.txt"
    upstream = ScriptedAnthropic(
        command=f"mkdir -p {hello.parent} && echo 'hello from the agent' > {hello}"
    )
    tokens = RunTokens()
    token = tokens.issue("run-cli", "coll")
    keys_at_relay: list[str | None] = []

    with serve(upstream.app()) as upstream_url:
        settings = Settings(
            data_dir=tmp_path / "data", anthropic_base_url=upstream_url, anthropic_api_key=REAL_KEY
        )
        relay = create_relay_app(tokens, settings)

        async def recording(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                headers = dict(scope["headers"])
                key = headers.get(b"x-api-key")
                keys_at_relay.append(key.decode() if key else None)
            await relay(scope, receive, send)

        with serve_unix(recording) as socket_path:
            spec = host_spec(claude_bin, tmp_path, socket_path, token)
            spec = replace(spec, prompt="Write hello.txt into the results directory.")
            invocation = get_adapter("claude-code").build(spec)
            # Sandboxes provide PATH; on the host the Bash tool needs ours.
            env = {**invocation.env, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
            process = subprocess.run(
                invocation.argv,
                env=env,
                cwd=invocation.cwd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=120,
            )

    assert process.returncode == 0, process.stderr[-2000:]
    assert hello.read_text() == "hello from the agent\n"
    assert keys_at_relay == [token, token]
    assert upstream.calls == 2
    assert all(s.headers["x-api-key"] == REAL_KEY for s in upstream.seen)
    assert all(token not in str(s.headers) and token.encode() not in s.body for s in upstream.seen)

    translator = get_adapter("claude-code").new_translator()
    events: list[Event] = []
    for line in process.stdout.splitlines():
        events += translator.feed(line)
    events += translator.finish(process.returncode)
    kinds = {type(event) for event in events}
    assert {TextDelta, ToolCall, ToolResult, Usage, Finished} <= kinds
    assert not any(isinstance(e, ToolResult) and e.is_error for e in events)
    assert events[-1] == Finished(True, "success", "Done: wrote hello.txt", 2)


def host_spec(claude_bin: str, tmp_path: Path, socket_path: Path, token: str) -> AgentSpec:
    """Claude Code in ``tmp_path``'s app/ and home/, through the relay on ``socket_path``."""
    app_dir, home = tmp_path / "app", tmp_path / "home"
    app_dir.mkdir(exist_ok=True)
    home.mkdir(exist_ok=True)
    return AgentSpec(
        prompt="",
        model="claude-sonnet-4-5",
        # Any http:// URL: the socket carries the connection, the host is only a header.
        relay_base_url="http://relay",
        relay_token=token,
        workdir=str(app_dir),
        home=str(home),
        executable=claude_bin,
        relay_socket=str(socket_path),
    )


def _standby(
    claude_bin: str, tmp_path: Path, socket_path: Path, token: str
) -> tuple[AgentSpec, subprocess.Popen[bytes]]:
    """Claude Code started ahead of its run (``--await-claim``), waiting on its stdin."""
    spec = host_spec(claude_bin, tmp_path, socket_path, token)
    adapter = get_adapter("claude-code")
    assert isinstance(adapter, StandbyAgent)
    invocation = adapter.standby(spec)
    assert invocation is not None
    env = {**invocation.env, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    process = subprocess.Popen(
        invocation.argv,
        env=env,
        cwd=invocation.cwd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    return spec, process


def test_claude_code_started_ahead_takes_its_run_at_the_claim(
    claude_bin: str, tmp_path: Path
) -> None:
    hello = tmp_path / "app" / "results" / "hello.txt"
    upstream = ScriptedAnthropic(
        command=f"mkdir -p {hello.parent} && echo 'hello from the agent' > {hello}"
    )
    tokens = RunTokens()
    run_token = tokens.issue("run-cli", "coll")
    agent_token = new_token()
    with serve(upstream.app()) as upstream_url:
        settings = Settings(
            data_dir=tmp_path / "data", anthropic_base_url=upstream_url, anthropic_api_key=REAL_KEY
        )
        with serve_unix(create_relay_app(tokens, settings)) as socket_path:
            spec, process = _standby(claude_bin, tmp_path, socket_path, agent_token)
            adapter = get_adapter("claude-code")
            assert isinstance(adapter, StandbyAgent)
            # The claim: the token becomes the run's, then the run reaches the agent.
            tokens.admit(agent_token, like=run_token)
            run = replace(spec, prompt="Write hello.txt.", system_prompt="RUNBOOK: write hello.txt")
            stdout, stderr = process.communicate(adapter.handover(run).stdin, timeout=120)

    assert process.returncode == 0, stderr.decode()[-2000:]
    assert hello.read_text() == "hello from the agent\n"
    assert upstream.calls == 2
    # The runbook reached the model as the appended system prompt, the instruction as the
    # user's message.
    first = upstream.seen[0].json
    assert "RUNBOOK: write hello.txt" in json.dumps(first["system"])
    assert "Write hello.txt." in json.dumps(first["messages"][0])
    translator = adapter.new_translator()
    events: list[Event] = []
    for line in stdout.decode().splitlines():
        events += translator.feed(line)
    events += translator.finish(process.returncode)
    assert not any(isinstance(e, AgentError) for e in events)
    assert events[-1] == Finished(True, "success", "Done: wrote hello.txt", 2)


def test_a_refused_claim_is_the_runs_error(claude_bin: str, tmp_path: Path) -> None:
    tokens = RunTokens()
    with serve_unix(create_relay_app(tokens, Settings(data_dir=tmp_path / "data"))) as socket:
        spec, process = _standby(claude_bin, tmp_path, socket, new_token())
        adapter = get_adapter("claude-code")
        assert isinstance(adapter, StandbyAgent)
        gone = replace(spec, prompt="Go", workdir=str(tmp_path / "missing"))
        stdout, _ = process.communicate(adapter.handover(gone).stdin, timeout=60)
    translator = adapter.new_translator()
    events: list[Event] = []
    for line in stdout.decode().splitlines():
        events += translator.feed(line)
    events += translator.finish(process.returncode)
    # First the refusal, with the CLI's reason; then the CLI's own failure of the turn.
    error = next(e for e in events if isinstance(e, AgentError))
    assert "refused the run's claim" in error.message and "cwd_not_found" in error.message
    finished = events[-1]
    assert isinstance(finished, Finished) and not finished.ok
