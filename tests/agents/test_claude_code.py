from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.agents import AgentSpec
from proxy.agents.claude_code import (
    RETRY_DIFFERS_WARNING,
    STREAM_CUT_WARNING,
    ClaudeCodeAdapter,
    ClaudeCodeTranslator,
)
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
from tests.agents.replay import fixture_names, reasoning, replay, text

AGENT = "claude-code"
BASH_INPUT = {"command": "echo hi > probe.txt", "description": "Create probe.txt"}
NO_OUTPUT = "(Bash completed with no output)"
DONE = "Done: probe.txt now contains hi."
THOUGHT = "I should create the file with a shell command."
# The claude_cut_* recordings: Claude Code 2.1.328 on the host, through the relay on a unix
# socket, against tests/support/scripted_anthropic.py with cut_calls=1 (the relay turns the cut
# upstream into an in-band error event), CLAUDE_CODE_MAX_RETRIES=0 as the adapter sets it; the
# temporary directory was renamed /app afterwards.
CUT_COMMAND = "mkdir -p /app/results && echo 'hello from the agent' > /app/results/hello.txt"
CUT_INPUT = {"command": CUT_COMMAND, "description": "Write hello.txt"}


def feed(*lines: dict[str, Any] | str, exit_code: int | None = None) -> list[Event]:
    translator = ClaudeCodeTranslator()
    events: list[Event] = []
    for line in lines:
        events += translator.feed(line if isinstance(line, str) else json.dumps(line))
    if exit_code is not None:
        events += translator.finish(exit_code)
    return events


def spec(**overrides: Any) -> AgentSpec:
    values: dict[str, Any] = {
        "prompt": "Execute the runbook.",
        "model": "claude-sonnet-4-6",
        "relay_base_url": "http://relay.internal/r/abc",
        "relay_token": "tok-123",
    }
    return AgentSpec(**(values | overrides))


# Golden files


def test_every_recording_has_a_golden_test() -> None:
    assert fixture_names(AGENT) == [
        "claude1.jsonl",
        "claude2.jsonl",
        "claude_cut_resume.jsonl",
        "claude_cut_retry.jsonl",
        "claude_cut_retry_differs.jsonl",
        "claude_default.jsonl",
        "claude_err401.jsonl",
        "claude_err500.jsonl",
        "claude_maxturns.jsonl",
        "claude_resume_output_format_json.json",
    ]


def test_claude1_whole_blocks() -> None:
    assert replay(AGENT, "claude1.jsonl") == [
        SessionStarted("be2fab52-8198-4e59-a560-dad4374c749d", "claude-sonnet-4-6"),
        ReasoningDelta(THOUGHT),
        TextDelta("I'll create the file now."),
        ToolCall("toolu_01Fake", "Bash", BASH_INPUT, "echo hi > probe.txt"),
        ToolResult("toolu_01Fake", NO_OUTPUT, is_error=False),
        TextDelta("\n\n" + DONE),
        Usage(200, 24, 0, 0, cost_usd=0.0009600000000000001),
        Finished(ok=True, reason="success", result_text=DONE, num_turns=2),
    ]


def test_claude2_partial_messages_use_deltas_once() -> None:
    events = replay(AGENT, "claude2.jsonl")
    assert events == [
        SessionStarted("82f394b2-f9db-4ddf-8420-8f4cf162529d", "claude-sonnet-4-6"),
        ReasoningDelta(THOUGHT),
        TextDelta("I'll "),
        TextDelta("create "),
        TextDelta("the "),
        TextDelta("file "),
        TextDelta("now."),
        ToolCall("toolu_01Fake", "Bash", BASH_INPUT, "echo hi > probe.txt"),
        ToolResult("toolu_01Fake", NO_OUTPUT, is_error=False),
        TextDelta("\n\nDone: "),
        TextDelta("probe.txt "),
        TextDelta("now "),
        TextDelta("contains "),
        TextDelta("hi."),
        Usage(200, 24, 0, 0, cost_usd=0.0009600000000000001),
        Finished(ok=True, reason="success", result_text=DONE, num_turns=2),
    ]


def test_partial_and_whole_recordings_give_the_same_answer() -> None:
    whole, partial = replay(AGENT, "claude1.jsonl"), replay(AGENT, "claude2.jsonl")
    assert text(whole) == text(partial) == "I'll create the file now.\n\n" + DONE
    assert reasoning(whole) == reasoning(partial) == THOUGHT


def test_default_permission_mode_denial() -> None:
    denial = (
        "Output redirection to '/app/probe.txt' needs approval. The path is inside the working "
        "directories for this session ('/app'), and Claude Code asks before a shell command "
        "creates, changes or removes files there."
    )
    assert replay(AGENT, "claude_default.jsonl") == [
        SessionStarted("dba9d80a-c505-4375-9284-1505fade010e", "claude-opus-5-5"),
        ReasoningDelta(THOUGHT),
        TextDelta("I'll create the file now."),
        ToolCall("toolu_01Fake", "Bash", BASH_INPUT, "echo hi > probe.txt"),
        Notice("permission denied for Bash"),
        ToolResult("toolu_01Fake", denial, is_error=True),
        TextDelta("\n\n" + DONE),
        Usage(200, 24, 0, 0, cost_usd=0.00128),
        Finished(ok=True, reason="success", result_text=DONE, num_turns=2),
    ]


def test_err401_is_an_api_error_not_an_answer() -> None:
    events = replay(AGENT, "claude_err401.jsonl", exit_code=1)
    assert events == [
        SessionStarted("ab610184-b6da-4e7f-b2a2-7d1f97653903", "claude-opus-5-5"),
        Usage(0, 0, 0, 0, cost_usd=0.0),
        AgentError(
            "API error (HTTP 401): Invalid API key · Fix external API key", "api_error", 401
        ),
        Finished(ok=False, reason="api_error", result_text=None, num_turns=1),
    ]
    assert text(events) == ""


def test_err500_keeps_the_cli_message_which_names_the_status() -> None:
    events = replay(AGENT, "claude_err500.jsonl", exit_code=1)
    message = (
        "API Error: 500 fake internal error. This is a server-side issue, usually temporary — "
        "try again in a moment. If it persists, check your inference gateway (127.0.0.1:8765)."
    )
    assert events[1:] == [
        Usage(0, 0, 0, 0, cost_usd=0.0),
        AgentError(message, "api_error", 500),
        Finished(ok=False, reason="api_error", result_text=None, num_turns=1),
    ]


def test_maxturns_is_a_failure_with_the_cli_reason() -> None:
    tool_id = "toolu_b7783515e39041349399"
    assert replay(AGENT, "claude_maxturns.jsonl", exit_code=1) == [
        SessionStarted("011577e2-e22d-4452-85f8-9dc74e4ade3f", "claude-opus-5-5"),
        ReasoningDelta(THOUGHT),
        TextDelta("I'll create the file now."),
        ToolCall(tool_id, "Bash", BASH_INPUT, "echo hi > probe.txt"),
        ToolResult(tool_id, NO_OUTPUT, is_error=False),
        Usage(100, 12, 0, 0, cost_usd=0.00064),
        AgentError("Reached maximum number of turns (1)", "max_turns"),
        Finished(ok=False, reason="max_turns", result_text=None, num_turns=2),
    ]


def _cut_tail(tool_id: str, cost: float, turns: int) -> list[Event]:
    return [
        ToolCall(tool_id, "Bash", CUT_INPUT, CUT_COMMAND),
        ToolResult(tool_id, NO_OUTPUT, is_error=False),
        TextDelta("\n\nDone: wrot"),
        TextDelta("e hello.txt"),
        Usage(69, 27, 15, 21, cost_usd=cost, reasoning_tokens=0),
        Finished(ok=True, reason="success", result_text="Done: wrote hello.txt", num_turns=turns),
    ]


def test_cut_stream_retried_whole_sends_only_the_continuation() -> None:
    # Cut after the first text delta: the CLI marks block 0 abandoned and asks again without
    # streaming; the new message's text starts with what was shown, so only the rest follows.
    events = replay(AGENT, "claude_cut_retry.jsonl")
    assert events == [
        SessionStarted("b045cd7f-347c-4c14-9c53-a8da036f89cd", "claude-sonnet-4-5"),
        TextDelta("I will write "),
        Notice(STREAM_CUT_WARNING),
        TextDelta("the file now."),
        *_cut_tail("toolu_fc5f1772740b4a0980bd5f57", 0.0005115, 2),
    ]
    assert text(events) == "I will write the file now.\n\nDone: wrote hello.txt"


def test_cut_stream_whose_retry_says_something_else_is_set_apart() -> None:
    events = replay(AGENT, "claude_cut_retry_differs.jsonl")
    assert events == [
        SessionStarted("4b844d93-c9ee-431d-923e-215655396664", "claude-sonnet-4-5"),
        TextDelta("Let me look at the re"),
        Notice(STREAM_CUT_WARNING),
        Notice(RETRY_DIFFERS_WARNING),
        TextDelta("\n\nI will write the file now."),
        *_cut_tail("toolu_300e75743bc9417aafae0fb2", 0.0005115, 2),
    ]


def test_cut_tool_call_continuation_does_not_recap_the_kept_text() -> None:
    # Cut inside the tool call's JSON: the text block survives, the CLI asks the model to resume
    # and the (scripted) model says the whole text again before the call.
    events = replay(AGENT, "claude_cut_resume.jsonl")
    assert events == [
        SessionStarted("956e87f7-ab14-40a0-b687-6385b81dbe22", "claude-sonnet-4-5"),
        TextDelta("I will write "),
        TextDelta("the file now."),
        Notice(STREAM_CUT_WARNING),
        *_cut_tail("toolu_27a837eb3eba4e5cbb4b7a36", 0.00058725, 3),
    ]


def test_plain_json_output_still_names_the_session() -> None:
    assert replay(AGENT, "claude_resume_output_format_json.json") == [
        SessionStarted("b7df3da9-58e9-4d43-ae9f-89368d2a0d12"),
        Usage(200, 24, 0, 0, cost_usd=0.00128),
        Finished(ok=True, reason="success", result_text=DONE, num_turns=2),
    ]


# Translation details


def _stream(event: dict[str, Any], parent: str | None = None) -> dict[str, Any]:
    return {"type": "stream_event", "event": event, "parent_tool_use_id": parent}


def _assistant(
    message_id: str, blocks: list[dict[str, Any]], parent: str | None = None
) -> dict[str, Any]:
    message = {"id": message_id, "role": "assistant", "content": blocks}
    return {"type": "assistant", "message": message, "parent_tool_use_id": parent}


def _text_delta(index: int, piece: str) -> dict[str, Any]:
    delta = {"type": "text_delta", "text": piece}
    return _stream({"type": "content_block_delta", "index": index, "delta": delta})


def test_whole_block_adds_only_what_the_deltas_missed() -> None:
    events = feed(
        _stream({"type": "message_start", "message": {"id": "m1"}}),
        _stream({"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}),
        _text_delta(0, "Hello "),
        _assistant("m1", [{"type": "text", "text": "Hello world"}]),
    )
    assert events == [TextDelta("Hello "), TextDelta("world")]


def test_deltas_after_a_whole_block_are_dropped() -> None:
    events = feed(
        _stream({"type": "message_start", "message": {"id": "m1"}}),
        _assistant("m1", [{"type": "text", "text": "Hello"}]),
        _text_delta(0, "Hello"),
    )
    assert events == [TextDelta("Hello")]


def _start(message_id: str, parent: str | None = None) -> dict[str, Any]:
    return _stream({"type": "message_start", "message": {"id": message_id}}, parent)


def _cut(message_id: str, from_index: int, parent: str | None = None) -> dict[str, Any]:
    line = _stream({"type": "message_stop"}, parent)
    return {
        **line,
        "abandoned_blocks": {"api_message_id": message_id, "from_block_index": from_index},
    }


def _thinking_delta(index: int, piece: str) -> dict[str, Any]:
    delta = {"type": "thinking_delta", "thinking": piece}
    return _stream({"type": "content_block_delta", "index": index, "delta": delta})


def test_streamed_retry_is_held_while_it_repeats_the_cut_text() -> None:
    events = feed(
        _start("m1"),
        _text_delta(0, "Hello "),
        _text_delta(0, "wor"),
        _cut("m1", 0),
        _start("m2"),
        _text_delta(0, "Hel"),
        _text_delta(0, "lo w"),
        _text_delta(0, "orld"),
        _text_delta(0, "!"),
        _assistant("m2", [{"type": "text", "text": "Hello world!"}]),
        _text_delta(0, " Bye."),
    )
    assert events == [
        TextDelta("Hello "),
        TextDelta("wor"),
        Notice(STREAM_CUT_WARNING),
        TextDelta("ld"),
        TextDelta("!"),
        TextDelta(" Bye."),
    ]


def test_streamed_retry_that_diverges_late_shows_all_it_held() -> None:
    events = feed(
        _start("m1"),
        _text_delta(0, "Hello world"),
        _cut("m1", 0),
        _start("m2"),
        _text_delta(0, "Hello "),
        _text_delta(0, "there"),
    )
    assert events == [
        TextDelta("Hello world"),
        Notice(STREAM_CUT_WARNING),
        Notice(RETRY_DIFFERS_WARNING),
        TextDelta("\n\nHello there"),
    ]


def test_cut_thinking_is_not_repeated_either() -> None:
    events = feed(
        _start("m1"),
        _thinking_delta(0, "Let me"),
        _cut("m1", 0),
        _assistant(
            "m2",
            [{"type": "thinking", "thinking": "Let me check."}, {"type": "text", "text": "Hi"}],
        ),
    )
    assert events == [
        ReasoningDelta("Let me"),
        Notice(STREAM_CUT_WARNING),
        ReasoningDelta(" check."),
        TextDelta("Hi"),
    ]


def test_a_cut_only_concerns_the_next_message() -> None:
    # The retry goes straight to a tool call; the answer after it is not compared with the
    # cut text (no warning, no suppression).
    call = {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}}
    events = feed(
        _start("m1"),
        _text_delta(0, "I will"),
        _cut("m1", 0),
        _assistant("m2", [call]),
        _start("m3"),
        _text_delta(0, "I will not."),
    )
    assert events == [
        TextDelta("I will"),
        Notice(STREAM_CUT_WARNING),
        ToolCall("toolu_1", "Bash", {"command": "ls"}, "ls"),
        TextDelta("\n\nI will not."),
    ]


def test_a_second_cut_compares_with_what_the_screen_shows() -> None:
    events = feed(
        _start("m1"),
        _text_delta(0, "Hello wor"),
        _cut("m1", 0),
        _start("m2"),
        _text_delta(0, "Hello"),  # held: the screen still shows "Hello wor"
        _cut("m2", 0),
        _start("m3"),
        _text_delta(0, "Hello world"),
    )
    assert events == [
        TextDelta("Hello wor"),
        Notice(STREAM_CUT_WARNING),
        Notice(STREAM_CUT_WARNING),
        TextDelta("ld"),
    ]


def test_a_cut_in_a_sub_agent_does_not_touch_the_main_answer() -> None:
    parent = "toolu_task"
    events = feed(
        _start("m1"),
        _text_delta(0, "Main text"),
        _start("s1", parent),
        _stream(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Sub wor"},
            },
            parent,
        ),
        _cut("s1", 0, parent),
        _assistant("s2", [{"type": "text", "text": "Sub work done."}], parent=parent),
        _assistant("m1", [{"type": "text", "text": "Main text"}]),
    )
    assert events == [
        TextDelta("Main text"),
        ReasoningDelta("Sub wor"),
        Notice(STREAM_CUT_WARNING),
        ReasoningDelta("k done."),
    ]


def test_abandoned_tool_call_is_never_reported() -> None:
    block = {"type": "tool_use", "id": "toolu_9", "name": "Read", "input": {}}
    half = {"type": "input_json_delta", "partial_json": '{"file_path": "/a'}
    events = feed(
        _start("m1"),
        _stream({"type": "content_block_start", "index": 0, "content_block": block}),
        _stream({"type": "content_block_delta", "index": 0, "delta": half}),
        _cut("m1", 0),
        _stream({"type": "content_block_stop", "index": 0}),
    )
    assert events == [Notice(STREAM_CUT_WARNING)]


def test_tool_call_streamed_only_as_json_deltas() -> None:
    block = {"type": "tool_use", "id": "toolu_9", "name": "Read", "input": {}}
    events = feed(
        _stream({"type": "message_start", "message": {"id": "m1"}}),
        _stream({"type": "content_block_start", "index": 0, "content_block": block}),
        _stream(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": '{"file_path": "/app/a'},
            }
        ),
        _stream(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": '.txt"}'},
            }
        ),
        _stream({"type": "content_block_stop", "index": 0}),
        _assistant("m1", [{**block, "input": {"file_path": "/app/a.txt"}}]),
    )
    assert events == [ToolCall("toolu_9", "Read", {"file_path": "/app/a.txt"}, "/app/a.txt")]


def test_sub_agent_text_is_reasoning_and_its_tools_name_their_parent() -> None:
    parent = "toolu_task"
    events = feed(
        _assistant("m1", [{"type": "tool_use", "id": parent, "name": "Task", "input": {}}]),
        _assistant("m2", [{"type": "text", "text": "Looking around."}], parent=parent),
        _assistant(
            "m2",
            [{"type": "tool_use", "id": "toolu_ls", "name": "Bash", "input": {"command": "ls"}}],
            parent=parent,
        ),
        {
            "type": "user",
            "parent_tool_use_id": parent,
            "message": {
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_ls",
                        "content": [{"type": "text", "text": "a.txt"}, {"type": "image"}],
                    }
                ]
            },
        },
    )
    assert events == [
        ToolCall(parent, "Task", {}, ""),
        ReasoningDelta("Looking around."),
        ToolCall("toolu_ls", "Bash", {"command": "ls"}, "ls", parent_id=parent),
        ToolResult("toolu_ls", "a.txt\n[image]", is_error=False, parent_id=parent),
    ]


def test_usage_counts_cache_reads_and_writes_as_input() -> None:
    events = feed(
        {
            "type": "result",
            "subtype": "success",
            "is_error": False,
            "result": "ok",
            "usage": {
                "input_tokens": 10,
                "cache_read_input_tokens": 1000,
                "cache_creation_input_tokens": 200,
                "output_tokens": 5,
            },
        }
    )
    assert events[0] == Usage(1210, 5, cache_read_tokens=1000, cache_write_tokens=200)


def test_other_error_subtypes_keep_their_name() -> None:
    events = feed(
        {
            "type": "result",
            "subtype": "error_during_execution",
            "is_error": True,
            "errors": ["tool crashed", "giving up"],
        }
    )
    assert events == [
        AgentError("tool crashed; giving up", "during_execution"),
        Finished(ok=False, reason="during_execution"),
    ]


@pytest.mark.parametrize(
    ("exit_code", "error"),
    [
        (1, AgentError("Claude Code exited with code 1", "crash")),
        (-9, AgentError("Claude Code was killed by signal 9", "crash")),
        (0, AgentError("Claude Code exited without reporting a result", "incomplete")),
    ],
)
def test_exit_without_result_is_never_a_success(exit_code: int, error: AgentError) -> None:
    events = feed(_assistant("m1", [{"type": "text", "text": "partial"}]), exit_code=exit_code)
    assert events == [TextDelta("partial"), error, Finished(ok=False, reason=error.code)]


def test_crash_after_an_api_error_message_names_it() -> None:
    line = _assistant("u1", [{"type": "text", "text": "API Error: 529 overloaded"}])
    events = feed({**line, "error": "server_error"}, exit_code=1)
    assert events == [
        AgentError("Claude Code exited with code 1: API Error: 529 overloaded", "crash", 529),
        Finished(ok=False, reason="crash"),
    ]


def test_finish_after_result_adds_nothing() -> None:
    translator = ClaudeCodeTranslator()
    translator.feed(json.dumps({"type": "result", "subtype": "success", "is_error": False}))
    assert translator.finish(1) == []


@pytest.mark.parametrize(
    "line",
    [
        "",
        "   \n",
        "not json",
        "[1, 2]",
        "{broken",
        '{"type": "something_new", "x": 1}',
        '{"type": "assistant", "message": "not an object"}',
        '{"type": "stream_event", "event": {"type": "content_block_delta", "index": 0}}',
        '{"type": "user", "message": {"content": "a plain prompt echo"}}',
        '{"type": "system", "subtype": "status", "status": "requesting"}',
    ],
)
def test_lines_it_does_not_understand_are_skipped(line: str) -> None:
    assert ClaudeCodeTranslator().feed(line) == []


# Command line


def test_build_uses_the_headless_stream_json_flags() -> None:
    invocation = ClaudeCodeAdapter().build(spec())
    assert invocation.argv == [
        "claude",
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--include-partial-messages",
        "--dangerously-skip-permissions",
        "--model",
        "claude-sonnet-4-6",
        "--",
        "Execute the runbook.",
    ]
    assert invocation.cwd == "/app"
    assert invocation.files == {}
    assert invocation.env == {
        "HOME": "/app/.agent-home",
        "IS_SANDBOX": "1",
        "ANTHROPIC_BASE_URL": "http://relay.internal/r/abc",
        "ANTHROPIC_API_KEY": "tok-123",
        "DISABLE_TELEMETRY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_MAX_RETRIES": "0",
    }


def test_build_with_runbook_resume_and_turn_limit() -> None:
    invocation = ClaudeCodeAdapter().build(
        spec(
            system_prompt="# Runbook\nDo things.",
            resume_session_id="be2fab52",
            max_turns=7,
            executable="/opt/agents/node_modules/.bin/claude",
            home="/root",
            workdir="/srv/project",
        )
    )
    assert invocation.argv[0] == "/opt/agents/node_modules/.bin/claude"
    assert invocation.argv[-8:] == [
        "--append-system-prompt",
        "# Runbook\nDo things.",
        "--resume",
        "be2fab52",
        "--max-turns",
        "7",
        "--",
        "Execute the runbook.",
    ]
    assert invocation.env["HOME"] == "/root"
    assert invocation.cwd == "/srv/project"


def test_extra_env_cannot_redirect_the_model_endpoint() -> None:
    extra = {"ANTHROPIC_BASE_URL": "https://elsewhere", "GITHUB_TOKEN": "gh"}
    env = ClaudeCodeAdapter().build(spec(extra_env=extra)).env
    assert env["ANTHROPIC_BASE_URL"] == "http://relay.internal/r/abc"
    assert env["GITHUB_TOKEN"] == "gh"


def test_relay_socket_is_dialled_when_given() -> None:
    plain = ClaudeCodeAdapter().build(spec())
    assert "ANTHROPIC_UNIX_SOCKET" not in plain.env
    over_socket = ClaudeCodeAdapter().build(
        spec(relay_socket="/run/jetty/relay.sock", relay_base_url="http://relay")
    )
    assert over_socket.env["ANTHROPIC_UNIX_SOCKET"] == "/run/jetty/relay.sock"
    assert over_socket.env["ANTHROPIC_BASE_URL"] == "http://relay"


# Started ahead of its run (warm sandboxes)


def test_standby_waits_for_its_claim_with_nothing_of_a_run() -> None:
    adapter = ClaudeCodeAdapter()
    run = spec(system_prompt="# Runbook", max_turns=7)
    started = adapter.standby(run)
    assert started is not None
    assert started.argv[-5:] == [
        "--await-claim",
        "--input-format",
        "stream-json",
        "--max-turns",
        "7",
    ]
    assert "Execute the runbook." not in started.argv and "# Runbook" not in started.argv
    # The same CLI settings as a run started at once: the model, and the environment.
    assert started.env == adapter.build(run).env
    assert started.argv[:-5] == adapter.build(run).argv[: len(started.argv) - 5]
    # The run's own parts do not change what is started; a session to resume cannot wait.
    assert adapter.standby(spec(prompt="other", system_prompt="other")) == adapter.standby(spec())
    assert adapter.standby(spec(resume_session_id="s-1")) is None


def test_handover_claims_the_session_then_sends_the_instruction() -> None:
    handover = ClaudeCodeAdapter().handover(spec(system_prompt="# Runbook", workdir="/app"))
    claim, message = (json.loads(line) for line in handover.stdin.decode().splitlines())
    assert claim == {
        "type": "control_request",
        "request_id": "jetty-claim",
        "request": {
            "subtype": "claim_session",
            "cwd": "/app",
            "append_system_prompt": "# Runbook",
        },
    }
    assert message["type"] == "user"
    assert message["message"] == {"role": "user", "content": "Execute the runbook."}
    assert handover.files == {}
    no_runbook = ClaudeCodeAdapter().handover(spec())
    assert "append_system_prompt" not in no_runbook.stdin.decode()


def test_a_refused_claim_is_an_agent_error_and_an_accepted_one_nothing() -> None:
    refused = {
        "type": "control_response",
        "response": {
            "subtype": "error",
            "request_id": "jetty-claim",
            "error": "cwd_not_found: the claim cwd does not exist",
        },
    }
    [error] = feed(refused)
    assert isinstance(error, AgentError) and "cwd_not_found" in error.message
    accepted = {
        "type": "control_response",
        "response": {"subtype": "success", "request_id": "jetty-claim", "response": {}},
    }
    other = {"type": "control_response", "response": {"subtype": "error", "request_id": "x"}}
    assert feed(accepted, other) == []
