from __future__ import annotations

import json
import tomllib
from typing import Any

import pytest

from proxy.agents import AgentSpec
from proxy.agents.codex import CodexAdapter, CodexTranslator, config_toml
from proxy.events import (
    AgentError,
    Event,
    Finished,
    Notice,
    ReasoningDelta,
    SessionStarted,
    TextDelta,
    ToolCall,
    ToolResult,
    Usage,
)
from tests.agents.replay import fixture_names, replay

AGENT = "codex"
DONE = "Done: probe.txt now contains hi."
THOUGHT = "I should create the file with a shell command."
USAGE = Usage(200, 24, cache_read_tokens=0, cache_write_tokens=0, reasoning_tokens=10)
PATCH_CALL = ToolCall(
    "item_1", "file_change", {"changes": ["add /app/probe2.txt"]}, "add /app/probe2.txt"
)


def feed(*lines: dict[str, Any], exit_code: int | None = None) -> list[Event]:
    translator = CodexTranslator()
    events: list[Event] = []
    for line in lines:
        events += translator.feed(json.dumps(line))
    if exit_code is not None:
        events += translator.finish(exit_code)
    return events


def spec(**overrides: Any) -> AgentSpec:
    values: dict[str, Any] = {
        "prompt": "Execute the runbook.",
        "model": "gpt-5.2-codex",
        "relay_base_url": "http://relay.internal/r/abc/",
        "relay_token": "tok-123",
    }
    return AgentSpec(**(values | overrides))


# Golden files


def test_every_recording_has_a_golden_test() -> None:
    assert fixture_names(AGENT) == [
        "codex1.jsonl",
        "codex_cfgurl.jsonl",
        "codex_err401.jsonl",
        "codex_err500.jsonl",
        "codex_patch.jsonl",
        "codex_resume.jsonl",
        "codex_ws.jsonl",
    ]


def test_codex1_shell_command() -> None:
    assert replay(AGENT, "codex1.jsonl") == [
        SessionStarted("01a21c93-9e2a-74d1-9ba7-794d2c5714b8"),
        ReasoningDelta(THOUGHT),
        ToolCall(
            "item_1",
            "shell",
            {"command": "/bin/bash -lc 'echo hi > probe.txt'"},
            "echo hi > probe.txt",
        ),
        ToolResult("item_1", "", is_error=False, exit_code=0),
        TextDelta(DONE),
        USAGE,
        Finished(ok=True, reason="success", result_text=DONE, num_turns=1),
    ]


def test_cfgurl_websocket_retries_are_warnings_not_failure() -> None:
    url = "url: ws://127.0.0.1:8765/v1/responses"
    assert replay(AGENT, "codex_cfgurl.jsonl") == [
        SessionStarted("01a21c94-ed34-7de3-8622-4c6560454034"),
        *[
            Notice(f"Reconnecting... {n}/5 (unexpected status 404 Not Found: not here, {url})")
            for n in (2, 3, 4, 5)
        ],
        Notice(
            "Falling back from WebSockets to HTTPS transport. "
            f"unexpected status 404 Not Found: not here, {url}"
        ),
        ReasoningDelta(THOUGHT),
        ToolCall(
            "item_2", "file_change", {"changes": ["add /app/probe2.txt"]}, "add /app/probe2.txt"
        ),
        ToolResult("item_2", "add /app/probe2.txt", is_error=False),
        TextDelta(DONE),
        USAGE,
        Finished(ok=True, reason="success", result_text=DONE, num_turns=1),
    ]


def test_err401_reports_the_error_once_with_its_status() -> None:
    message = "unexpected status 401 Unauthorized: fake error 401, url: http://127.0.0.1:8765/v1/responses"
    assert replay(AGENT, "codex_err401.jsonl", exit_code=1) == [
        SessionStarted("01a21c93-e684-74b0-ae13-b8b2484f3652"),
        AgentError(message, "api_error", 401),
        Finished(ok=False, reason="api_error", num_turns=1),
    ]


def test_err500_without_a_status_is_a_failed_turn() -> None:
    message = "We\u2019re currently experiencing high demand, which may cause temporary errors."
    assert replay(AGENT, "codex_err500.jsonl", exit_code=1) == [
        SessionStarted("01a21c93-e7d7-71e0-a76f-9b3cf1cbbb86"),
        AgentError(message, "turn_failed"),
        Finished(ok=False, reason="turn_failed", num_turns=1),
    ]


def test_patch_file_change() -> None:
    assert replay(AGENT, "codex_patch.jsonl") == [
        SessionStarted("01a21c93-d897-7a13-89c6-529bb99fbc3e"),
        ReasoningDelta(THOUGHT),
        PATCH_CALL,
        ToolResult("item_1", "add /app/probe2.txt", is_error=False),
        TextDelta(DONE),
        USAGE,
        Finished(ok=True, reason="success", result_text=DONE, num_turns=1),
    ]


def test_resume_answer_and_usage() -> None:
    assert replay(AGENT, "codex_resume.jsonl") == [
        SessionStarted("01a21c95-4bf7-7ab3-8bf5-7c7026c51b6c"),
        TextDelta(DONE),
        Usage(300, 36, reasoning_tokens=15),
        Finished(ok=True, reason="success", result_text=DONE, num_turns=1),
    ]


def test_ws_failed_file_change_is_a_tool_error() -> None:
    assert replay(AGENT, "codex_ws.jsonl") == [
        SessionStarted("01a21c97-91f9-7fc1-8afa-0b4d7239d470"),
        ReasoningDelta(THOUGHT),
        PATCH_CALL,
        ToolResult("item_1", "add /app/probe2.txt", is_error=True),
        TextDelta(DONE),
        USAGE,
        Finished(ok=True, reason="success", result_text=DONE, num_turns=1),
    ]


# Translation details


def _item(phase: str, **item: Any) -> dict[str, Any]:
    return {"type": f"item.{phase}", "item": item}


def test_failed_command_keeps_output_and_exit_code() -> None:
    command = {"id": "item_3", "type": "command_execution", "command": "bash -lc 'false && x'"}
    events = feed(
        _item("started", **command, aggregated_output="", exit_code=None, status="in_progress"),
        _item("updated", **command, aggregated_output="par", exit_code=None, status="in_progress"),
        _item("completed", **command, aggregated_output="nope\n", exit_code=1, status="failed"),
    )
    assert events == [
        ToolCall("item_3", "shell", {"command": "bash -lc 'false && x'"}, "false && x"),
        ToolResult("item_3", "nope\n", is_error=True, exit_code=1),
    ]


def test_completed_without_started_still_reports_the_call() -> None:
    events = feed(
        _item(
            "completed",
            id="item_0",
            type="command_execution",
            command="ls",
            aggregated_output="a\n",
            exit_code=0,
            status="completed",
        )
    )
    assert events == [
        ToolCall("item_0", "shell", {"command": "ls"}, "ls"),
        ToolResult("item_0", "a\n", is_error=False, exit_code=0),
    ]


def test_mcp_and_web_search_items() -> None:
    mcp = {"id": "item_5", "type": "mcp_tool_call", "server": "fs", "tool": "read_file"}
    events = feed(
        _item("started", **mcp, arguments={"path": "/a"}, result=None, status="in_progress"),
        _item(
            "completed",
            **mcp,
            arguments={"path": "/a"},
            result={"content": [{"type": "text", "text": "contents"}]},
            status="completed",
        ),
        _item("completed", id="item_6", type="mcp_tool_call", server="fs", tool="stat",
              arguments=None, error={"message": "no such file"}, status="failed"),
        _item("completed", id="item_7", type="web_search", query="python 3.11 tomllib"),
    )  # fmt: skip
    assert events == [
        ToolCall("item_5", "fs.read_file", {"path": "/a"}, "/a"),
        ToolResult("item_5", "contents", is_error=False),
        ToolCall("item_6", "fs.stat", {}, ""),
        ToolResult("item_6", "no such file", is_error=True),
        ToolCall("item_7", "web_search", {"query": "python 3.11 tomllib"}, "python 3.11 tomllib"),
        ToolResult("item_7", "", is_error=False),
    ]


def test_todo_list_revisions_show_as_reasoning_once_each() -> None:
    step = {"text": "Install", "completed": False}
    done = {"text": "Install", "completed": True}
    tests = {"text": "Test", "completed": False}
    events = feed(
        _item("started", id="item_0", type="todo_list", items=[step, tests]),
        _item("updated", id="item_0", type="todo_list", items=[done, tests]),
        _item("completed", id="item_0", type="todo_list", items=[done, tests]),
    )
    assert events == [
        ReasoningDelta("Plan:\n- [ ] Install\n- [ ] Test"),
        ReasoningDelta("\n\nPlan:\n- [x] Install\n- [ ] Test"),
    ]


def test_several_messages_are_separated_by_a_blank_line() -> None:
    events = feed(
        _item("completed", id="item_0", type="agent_message", text="Looking."),
        _item("completed", id="item_1", type="agent_message", text="Found it."),
        {"type": "turn.completed", "usage": {"input_tokens": 1, "output_tokens": 2}},
    )
    assert events == [
        TextDelta("Looking."),
        TextDelta("\n\nFound it."),
        Usage(1, 2),
        Finished(ok=True, reason="success", result_text="Found it."),
    ]


def test_an_error_the_run_survives_is_still_reported() -> None:
    events = feed(
        {"type": "error", "message": "stream disconnected"},
        _item("completed", id="item_0", type="agent_message", text="Recovered."),
    )
    assert events == [AgentError("stream disconnected", "turn_failed"), TextDelta("Recovered.")]


def test_crash_after_an_error_names_the_error() -> None:
    events = feed(
        {"type": "thread.started", "thread_id": "t1"},
        {"type": "error", "message": "unexpected status 503 Service Unavailable"},
        exit_code=1,
    )
    assert events == [
        SessionStarted("t1"),
        AgentError(
            "Codex exited with code 1: unexpected status 503 Service Unavailable", "crash", 503
        ),
        Finished(ok=False, reason="crash"),
    ]


@pytest.mark.parametrize(
    "line",
    ["", "\n", "Reading prompt from stdin...", "[]", '{"type": "plan.updated"}', '{"item": 3}'],
)
def test_lines_it_does_not_understand_are_skipped(line: str) -> None:
    assert CodexTranslator().feed(line) == []


# Command line and config


def test_build_new_thread() -> None:
    invocation = CodexAdapter().build(spec())
    assert invocation.argv == [
        "codex",
        "exec",
        "--json",
        "--skip-git-repo-check",
        "--dangerously-bypass-approvals-and-sandbox",
        "-m",
        "gpt-5.2-codex",
        "--",
        "Execute the runbook.",
    ]
    assert invocation.env == {
        "HOME": "/app/.agent-home",
        "CODEX_HOME": "/app/.agent-home/.codex",
        "JETTY_RELAY_API_KEY": "tok-123",
    }
    assert invocation.cwd == "/app"
    assert set(invocation.files) == {"/app/.agent-home/.codex/config.toml"}


def test_build_resume_puts_flags_before_the_subcommand() -> None:
    argv = CodexAdapter().build(spec(resume_session_id="01a21c93")).argv
    assert argv[-5:] == ["gpt-5.2-codex", "resume", "--", "01a21c93", "Execute the runbook."]


@pytest.mark.parametrize("resume", [None, "01a21c93"])
def test_a_prompt_starting_with_a_dash_is_not_an_option(resume: str | None) -> None:
    # codex exec rejects "- first" as an unknown argument unless "--" ends the options.
    argv = CodexAdapter().build(spec(prompt="- first\n- second", resume_session_id=resume)).argv
    assert argv[-1] == "- first\n- second"
    assert argv.index("--") == len(argv) - (3 if resume else 2)


def test_config_points_a_responses_provider_at_the_relay() -> None:
    files = CodexAdapter().build(spec()).files
    config = tomllib.loads(files["/app/.agent-home/.codex/config.toml"].decode())
    assert config == {
        "model": "gpt-5.2-codex",
        "model_provider": "jetty",
        "model_providers": {
            "jetty": {
                "name": "Jetty relay",
                "base_url": "http://relay.internal/r/abc/v1",
                "env_key": "JETTY_RELAY_API_KEY",
                "wire_api": "responses",
                "request_max_retries": 0,
                "stream_max_retries": 0,
            }
        },
        "analytics": {"enabled": False},
        "features": {"plugins": False, "remote_plugin": False, "apps": False},
    }


@pytest.mark.parametrize("model", ['we"ird\\model', "line\nbreak", "del\x7fchar", "ünï ☃ 😀"])
def test_config_strings_survive_toml_quoting(model: str) -> None:
    files = CodexAdapter().build(spec(model=model)).files
    config = tomllib.loads(files["/app/.agent-home/.codex/config.toml"].decode())
    assert config["model"] == model


def test_runbook_becomes_global_agents_md() -> None:
    files = CodexAdapter().build(spec(system_prompt="# Runbook ☃", home="/root")).files
    assert files["/root/.codex/AGENTS.md"] == "# Runbook ☃".encode()


# Started ahead of its run (warm sandboxes)


def test_standby_reads_its_prompt_from_stdin() -> None:
    adapter = CodexAdapter()
    run = spec(system_prompt="# Runbook", home="/h")
    started = adapter.standby(run)
    assert started is not None
    assert started.argv[-1] == "-" and "Execute the runbook." not in started.argv
    assert started.env == adapter.build(run).env
    # Its configuration (read at start) is the run's; the runbook is not in it.
    assert started.files == {"/h/.codex/config.toml": config_toml(run).encode()}
    assert adapter.standby(spec(prompt="x", system_prompt="y", home="/h")) == started
    assert adapter.standby(spec(resume_session_id="s-1")) is None


def test_handover_is_the_prompt_and_the_runbook_file() -> None:
    handover = CodexAdapter().handover(spec(system_prompt="# Runbook", home="/h"))
    assert handover.stdin == b"Execute the runbook."
    assert handover.files == {"/h/.codex/AGENTS.md": b"# Runbook"}
    assert CodexAdapter().handover(spec()).files == {}


def test_config_keeps_codex_off_the_network_beyond_the_relay() -> None:
    """Plugin syncs, connectors and analytics would each look up a host the sandbox cannot
    reach, and hold the CLI's exit for seconds."""
    config = tomllib.loads(config_toml(spec()))
    assert config["analytics"] == {"enabled": False}
    assert config["features"] == {"plugins": False, "remote_plugin": False, "apps": False}
