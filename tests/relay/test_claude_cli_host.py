"""The real Claude Code CLI, on this host, through the relay on a unix socket.

Needs the pinned CLI: from the agent cache named by ``JETTY_PROXY_AGENT_CACHE_DIR`` (as
``jetty-proxy agents install`` fills it), or ``JETTY_PROXY_TEST_CLAUDE_BIN`` naming a ``claude``
command. Without either the test is skipped, except in CI, where a missing CLI is a failure.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path

import anyio
import pytest
from starlette.types import Receive, Scope, Send

from proxy.agents import AgentSpec, get_adapter
from proxy.agents.install import AgentCache
from proxy.events import Event, Finished, TextDelta, ToolCall, ToolResult, Usage
from proxy.relay.app import create_relay_app
from proxy.relay.tokens import RunTokens
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
            spec = AgentSpec(
                prompt="Write hello.txt into the results directory.",
                model="claude-sonnet-4-5",
                # Any http:// URL: the socket carries the connection, the host is only a header.
                relay_base_url="http://relay",
                relay_token=token,
                workdir=str(app_dir),
                home=str(home),
                executable=claude_bin,
            )
            spec = replace(spec, extra_env={"ANTHROPIC_UNIX_SOCKET": str(socket_path)})
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
