"""The real Codex CLI, on this host, through the forwarder and the relay on a unix socket.

Codex takes only a URL, so it talks to the forwarder on 127.0.0.1, which relays to the
relay's socket, which relays to a scripted Responses API upstream with the real key. See
:mod:`tests.support.host_cli` for where the CLI comes from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
from tests.support.scripted_responses import USAGE, ScriptedResponses

pytestmark = pytest.mark.agents


@pytest.fixture(scope="module")
def codex() -> InstalledAgent:
    return installed_agent("codex")


def run_codex(
    codex: InstalledAgent, tmp_path: Path, upstream: ScriptedResponses, **more: Any
) -> HostRun:
    return run_through_relay(
        codex,
        upstream.app(),
        tmp_path,
        model="gpt-5.5",  # a model Codex 0.169 has metadata for
        key_header=b"authorization",
        settings=lambda url: Settings(
            data_dir=tmp_path / "data", openai_base_url=url + "/v1", openai_api_key=REAL_KEY
        ),
        **more,
    )


def test_codex_completes_a_tool_call_through_the_forwarder(
    codex: InstalledAgent, tmp_path: Path
) -> None:
    hello = tmp_path / "app" / "results" / "hello.txt"
    hello.parent.parent.mkdir()
    upstream = ScriptedResponses(
        command=f"mkdir -p {hello.parent} && echo 'hello from the agent' > {hello}"
    )
    recorder, token, usage, process = run_codex(codex, tmp_path, upstream)

    assert process.returncode == 0, process.stderr[-2000:]
    assert hello.read_text() == "hello from the agent\n"
    assert recorder.seen == [("/v1/responses", f"Bearer {token}")] * 2
    assert upstream.calls == 2
    assert all(s.headers["authorization"] == f"Bearer {REAL_KEY}" for s in upstream.seen)
    assert all(token not in str(s.headers) and token.encode() not in s.body for s in upstream.seen)
    cached = USAGE["input_tokens_details"]["cached_tokens"]
    assert [(u.input_tokens, u.cache_read_input_tokens, u.output_tokens) for u in usage] == [
        (USAGE["input_tokens"] - cached, cached, USAGE["output_tokens"])
    ] * 2

    events = translate("codex", process)
    assert {TextDelta, ToolCall, ToolResult, Usage, Finished} <= {type(e) for e in events}
    assert not any(isinstance(e, ToolResult) and e.is_error for e in events)
    assert events[-1] == Finished(True, "success", "Done: wrote hello.txt", 1)


def test_codex_reports_an_upstream_error_and_fails(codex: InstalledAgent, tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    upstream = ScriptedResponses(mode="error", error_status=401)
    _, _, usage, process = run_codex(codex, tmp_path, upstream)

    assert process.returncode != 0
    assert upstream.calls == 1  # the provider config turns Codex's own retries off
    assert usage == []
    events = translate("codex", process)
    errors = [e for e in events if isinstance(e, AgentError)]
    assert errors and "scripted 401" in errors[0].message
    assert isinstance(events[-1], Finished) and not events[-1].ok


def test_codex_started_ahead_takes_its_run_from_stdin(
    codex: InstalledAgent, tmp_path: Path
) -> None:
    """As a warm sandbox starts it: ``codex exec … -``, its prompt on stdin and the runbook
    in ``AGENTS.md``, written after it started."""
    hello = tmp_path / "app" / "results" / "hello.txt"
    hello.parent.parent.mkdir()
    upstream = ScriptedResponses(
        command=f"mkdir -p {hello.parent} && echo 'hello from the agent' > {hello}"
    )
    recorder, token, _, process = run_codex(
        codex, tmp_path, upstream, system_prompt="RUNBOOK: write hello.txt", standby=True
    )

    assert process.returncode == 0, process.stderr[-2000:]
    assert hello.read_text() == "hello from the agent\n"
    assert recorder.seen == [("/v1/responses", f"Bearer {token}")] * 2
    first = upstream.seen[0].body.decode()
    assert "RUNBOOK: write hello.txt" in first
    assert "Write hello.txt into the results directory." in first
    events = translate("codex", process)
    assert events[-1] == Finished(True, "success", "Done: wrote hello.txt", 1)
