from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.agents import AgentSpec
from proxy.agents.gemini_cli import GeminiCliAdapter, GeminiCliTranslator
from proxy.events import (
    AgentError,
    Event,
    Finished,
    Notice,
    SessionStarted,
    TextDelta,
    ToolCall,
    ToolResult,
    Usage,
)
from tests.agents.replay import fixture_names, replay, text

AGENT = "gemini-cli"
DONE = "Done: probe.txt now contains hi."
SHELL_INPUT = {"command": "echo hi > probe.txt", "description": "Create probe.txt"}


def feed(*lines: dict[str, Any], exit_code: int | None = None) -> list[Event]:
    translator = GeminiCliTranslator()
    events: list[Event] = []
    for line in lines:
        events += translator.feed(json.dumps(line))
    if exit_code is not None:
        events += translator.finish(exit_code)
    return events


def spec(**overrides: Any) -> AgentSpec:
    values: dict[str, Any] = {
        "prompt": "Execute the runbook.",
        "model": "gemini-2.5-pro",
        "relay_base_url": "http://relay.internal/r/abc",
        "relay_token": "tok-123",
    }
    return AgentSpec(**(values | overrides))


# Golden files


def test_every_recording_has_a_golden_test() -> None:
    assert fixture_names(AGENT) == [
        "gem1.jsonl",
        "gem_err400.jsonl",
        "gem_json.jsonl",
        "gem_resume.jsonl",
    ]


@pytest.mark.parametrize(
    ("name", "session_id", "tool_id"),
    [
        (
            "gem1.jsonl",
            "d306fbb2-1cca-4b35-a6cc-f065064ae08e",
            "run_shell_command__run_shell_command_1795775908698_0",
        ),
        (
            "gem_resume.jsonl",
            "93451738-7792-459e-9cab-8adbc056ef48",
            "run_shell_command__run_shell_command_1795775932988_0",
        ),
    ],
)
def test_shell_tool_run(name: str, session_id: str, tool_id: str) -> None:
    events = replay(AGENT, name)
    assert events == [
        SessionStarted(session_id, "gemini-2.5-pro"),
        TextDelta("I'll create the file now."),
        ToolCall(tool_id, "run_shell_command", SHELL_INPUT, "echo hi > probe.txt"),
        ToolResult(tool_id, "", is_error=False),
        TextDelta("\n\nDone: probe.txt "),
        TextDelta("now contains hi."),
        Usage(200, 24, cache_read_tokens=0),
        Finished(ok=True, reason="success", result_text=DONE),
    ]
    # The user's prompt echo ("Create probe.txt containing hi", "second") is not answer text.
    assert text(events) == "I'll create the file now.\n\n" + DONE


def test_err400_result_is_an_api_error() -> None:
    message = (
        '[API Error: {"error":{"code":400,"message":"fake error 400","status":"INVALID_ARGUMENT"}}]'
    )
    assert replay(AGENT, "gem_err400.jsonl", exit_code=144) == [
        SessionStarted("6d393bdb-434c-49ed-96c0-1275d924c343", "gemini-2.5-pro"),
        Usage(0, 0),
        AgentError(message, "api_error", 400),
        Finished(ok=False, reason="api_error"),
    ]


def test_json_output_format_is_not_a_stream_and_never_a_success() -> None:
    # `-o json` prints one pretty-printed document; line by line none of it is an event.
    assert replay(AGENT, "gem_json.jsonl", exit_code=0) == [
        AgentError("Gemini CLI exited without reporting a result", "incomplete"),
        Finished(ok=False, reason="incomplete"),
    ]


# Translation details


def test_error_severities() -> None:
    events = feed(
        {"type": "error", "severity": "warning", "message": "Loop detected, stopping"},
        {"type": "error", "severity": "error", "message": "quota exceeded (status 429)"},
        {"type": "result", "status": "error", "error": {"message": "quota exceeded (status 429)"}},
    )
    assert events == [
        Notice("Loop detected, stopping"),
        AgentError("quota exceeded (status 429)", "api_error", 429),
        Finished(ok=False, reason="api_error"),
    ]


def test_failed_tool_reports_its_error_message() -> None:
    events = feed(
        {"type": "tool_use", "tool_name": "read_file", "tool_id": "r1",
         "parameters": {"absolute_path": "/app/missing.txt"}},
        {"type": "tool_result", "tool_id": "r1", "status": "error",
         "error": {"type": "file_not_found", "message": "File not found: /app/missing.txt"}},
    )  # fmt: skip
    assert events == [
        ToolCall("r1", "read_file", {"absolute_path": "/app/missing.txt"}, "/app/missing.txt"),
        ToolResult("r1", "File not found: /app/missing.txt", is_error=True),
    ]


def test_result_text_is_the_last_block_only() -> None:
    events = feed(
        {"type": "message", "role": "assistant", "content": "First.", "delta": True},
        {"type": "tool_use", "tool_name": "ls", "tool_id": "t1", "parameters": {}},
        {"type": "message", "role": "assistant", "content": "Second ", "delta": True},
        {"type": "message", "role": "assistant", "content": "part.", "delta": True},
        {"type": "result", "status": "success"},
    )
    assert events[-1] == Finished(ok=True, reason="success", result_text="Second part.")


@pytest.mark.parametrize(
    ("exit_code", "message"),
    [
        (41, "Gemini CLI exited with code 41 (authentication is not configured)"),
        (
            42,
            "Gemini CLI exited with code 42"
            " (invalid input, e.g. the session to resume was not found)",
        ),
        (55, "Gemini CLI exited with code 55 (workspace is not trusted)"),
        (1, "Gemini CLI exited with code 1"),
    ],
)
def test_exit_codes_without_result(exit_code: int, message: str) -> None:
    events = feed({"type": "init", "session_id": "s1", "model": "m"}, exit_code=exit_code)
    assert events == [
        SessionStarted("s1", "m"),
        AgentError(message, "crash"),
        Finished(ok=False, reason="crash"),
    ]


@pytest.mark.parametrize(
    "line",
    [
        "",
        "Loaded cached credentials.",
        "{",
        '  "session_id": "988f5072",',
        '{"type": "message", "role": "user", "content": "hi"}',
        '{"type": "message", "role": "assistant", "content": ""}',
        '{"type": "retry", "attempt": 2}',
    ],
)
def test_lines_it_does_not_understand_are_skipped(line: str) -> None:
    assert GeminiCliTranslator().feed(line) == []


# Command line and settings


def test_build() -> None:
    invocation = GeminiCliAdapter().build(spec())
    assert invocation.argv == [
        "gemini",
        "--prompt=Execute the runbook.",
        "-o",
        "stream-json",
        "--yolo",
        "--skip-trust",
        "-m",
        "gemini-2.5-pro",
    ]
    assert invocation.env == {
        "HOME": "/app/.agent-home",
        "GOOGLE_GEMINI_BASE_URL": "http://relay.internal/r/abc",
        "GEMINI_API_KEY": "tok-123",
        "GEMINI_CLI_TRUST_WORKSPACE": "true",
        # One Node process: the CLI would start a second one to raise its heap.
        "GEMINI_CLI_NO_RELAUNCH": "true",
    }
    assert invocation.node_options == ()  # no memory limit: Node's own heap limit
    settings = json.loads(invocation.files["/app/.agent-home/.gemini/settings.json"])
    assert settings == {
        "security": {"auth": {"selectedType": "gemini-api-key"}},
        "telemetry": {"enabled": False},
        "privacy": {"usageStatisticsEnabled": False},
        "general": {"maxAttempts": 1},
    }
    assert set(invocation.files) == {"/app/.agent-home/.gemini/settings.json"}


def test_the_heap_is_half_the_sandboxs_memory() -> None:
    invocation = GeminiCliAdapter().build(spec(memory_bytes=4 * 1024**3))
    assert invocation.node_options == ("--max-old-space-size=2048",)


def test_a_prompt_starting_with_a_dash_is_one_word() -> None:
    # As "-p", "- first" the CLI takes the prompt for options and prints its usage.
    argv = GeminiCliAdapter().build(spec(prompt="- first\n--help")).argv
    assert argv[1] == "--prompt=- first\n--help"
    assert "-p" not in argv


def test_build_with_runbook_resume_and_turn_limit() -> None:
    invocation = GeminiCliAdapter().build(
        spec(system_prompt="# Runbook", resume_session_id="d306fbb2", max_turns=12, home="/root")
    )
    assert invocation.argv[-2:] == ["--resume", "d306fbb2"]
    assert invocation.files["/root/.gemini/GEMINI.md"] == b"# Runbook"
    settings = json.loads(invocation.files["/root/.gemini/settings.json"])
    assert settings["model"] == {"maxSessionTurns": 12}
