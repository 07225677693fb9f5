"""The real Gemini CLI, on this host, through the forwarder and the relay on a unix socket.

Gemini CLI takes only a URL, so it talks to the forwarder on 127.0.0.1, which relays to the
relay's socket, which relays to a scripted Gemini API upstream with the real key. See
:mod:`tests.support.host_cli` for where the CLI comes from.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.agents.layout import InstalledAgent
from proxy.events import AgentError, Finished, TextDelta, ToolCall, ToolResult, Usage
from proxy.settings import Settings
from tests.relay.conftest import REAL_KEY
from tests.support.host_cli import (
    HostRun,
    installed_agent,
    run_through_relay,
    translate,
)
from tests.support.scripted_gemini import USAGE, ScriptedGemini

pytestmark = pytest.mark.agents


@pytest.fixture(scope="module")
def gemini() -> InstalledAgent:
    return installed_agent("gemini-cli")


def run_gemini(gemini: InstalledAgent, tmp_path: Path, upstream: ScriptedGemini) -> HostRun:
    return run_through_relay(
        gemini,
        upstream.app(),
        tmp_path,
        model="gemini-2.5-pro",
        key_header=b"x-goog-api-key",
        settings=lambda url: Settings(
            data_dir=tmp_path / "data", google_base_url=url, google_api_key=REAL_KEY
        ),
    )


def test_gemini_completes_a_tool_call_through_the_forwarder(
    gemini: InstalledAgent, tmp_path: Path
) -> None:
    hello = tmp_path / "app" / "results" / "hello.txt"
    hello.parent.parent.mkdir()
    upstream = ScriptedGemini(
        command=f"mkdir -p {hello.parent} && echo 'hello from the agent' > {hello}"
    )
    recorder, token, usage, process = run_gemini(gemini, tmp_path, upstream)

    assert process.returncode == 0, process.stderr[-2000:]
    assert hello.read_text() == "hello from the agent\n"
    path = "/v1beta/models/gemini-2.5-pro:streamGenerateContent"
    assert recorder.seen == [(path, token)] * 2
    assert upstream.calls == 2
    assert all(s.headers["x-goog-api-key"] == REAL_KEY for s in upstream.seen)
    assert all(s.query == "alt=sse" for s in upstream.seen)
    assert all(token not in str(s.headers) and token.encode() not in s.body for s in upstream.seen)
    cached, thoughts = USAGE["cachedContentTokenCount"], USAGE["thoughtsTokenCount"]
    expected = (
        USAGE["promptTokenCount"] - cached,
        cached,
        USAGE["candidatesTokenCount"] + thoughts,
        thoughts,
    )
    numbers = [
        (u.input_tokens, u.cache_read_input_tokens, u.output_tokens, u.reasoning_tokens)
        for u in usage
    ]
    assert numbers == [expected] * 2

    events = translate("gemini-cli", process)
    assert {TextDelta, ToolCall, ToolResult, Usage, Finished} <= {type(e) for e in events}
    assert not any(isinstance(e, ToolResult) and e.is_error for e in events)
    assert events[-1] == Finished(True, "success", "Done: wrote hello.txt")


def test_gemini_reports_an_upstream_error_and_fails(gemini: InstalledAgent, tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    upstream = ScriptedGemini(mode="error", error_status=500)
    _, _, usage, process = run_gemini(gemini, tmp_path, upstream)

    assert process.returncode != 0
    assert upstream.calls == 1  # settings.json turns the CLI's own retries (minutes) off
    assert usage == []
    events = translate("gemini-cli", process)
    errors = [e for e in events if isinstance(e, AgentError)]
    assert errors and "scripted 500" in errors[0].message
    assert isinstance(events[-1], Finished) and not events[-1].ok
