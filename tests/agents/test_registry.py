from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest

from proxy.agents import (
    AgentAdapter,
    AgentSpec,
    UnknownAgentError,
    agent_names,
    get_adapter,
    infer_agent,
)
from proxy.agents.claude_code import ClaudeCodeAdapter
from proxy.agents.codex import CodexAdapter
from proxy.agents.gemini_cli import GeminiCliAdapter
from proxy.events import Finished, SessionStarted, ToolCall, ToolResult, from_dict
from tests.agents.replay import STREAMS, all_fixtures, replay

SPEC = AgentSpec(
    prompt="Execute the runbook.",
    model="any-model",
    relay_base_url="http://relay.internal/r/abc",
    relay_token="tok-123",
)


@pytest.mark.parametrize(
    ("model", "agent"),
    [
        ("claude-sonnet-4-6", "claude-code"),
        ("claude-opus-5-5", "claude-code"),
        ("gpt-5.2-codex", "codex"),
        ("o3-mini", "codex"),
        ("o3", "codex"),
        ("o4-mini", "codex"),
        ("codex-mini-latest", "codex"),
        ("gemini-2.5-pro", "gemini-cli"),
        ("GEMINI-2.5-FLASH", "gemini-cli"),
        ("openai/gpt-5", "codex"),
        ("anthropic/claude-sonnet-4-6", "claude-code"),
        ("llama-3.3-70b", "claude-code"),
        ("", "claude-code"),
        ("o30-something", "claude-code"),
    ],
)
def test_infer_agent(model: str, agent: str) -> None:
    assert infer_agent(model) == agent


def test_registry_names_and_types() -> None:
    assert agent_names() == ("claude-code", "codex", "gemini-cli")
    assert isinstance(get_adapter("claude-code"), ClaudeCodeAdapter)
    assert isinstance(get_adapter("codex"), CodexAdapter)
    assert isinstance(get_adapter("gemini-cli"), GeminiCliAdapter)


def test_unknown_agent() -> None:
    with pytest.raises(UnknownAgentError, match="known agents: claude-code, codex, gemini-cli"):
        get_adapter("opencode")


@pytest.mark.parametrize("name", agent_names())
def test_adapter_describes_itself(name: str) -> None:
    adapter: AgentAdapter = get_adapter(name)
    assert adapter.name == name
    command = adapter.binary.command
    assert command.startswith("node_modules/.bin/")
    assert adapter.build(SPEC).argv[0] == command.rsplit("/", 1)[-1]


def test_binaries_are_pinned() -> None:
    pins = {name: (a.binary.npm_package, a.binary.version) for name in agent_names()
            for a in [get_adapter(name)]}  # fmt: skip
    assert pins == {
        "claude-code": ("@anthropic-ai/claude-code", "2.1.328"),
        "codex": ("@openai/codex", "0.169.0"),
        "gemini-cli": ("@google/gemini-cli", "0.61.0"),
    }
    assert get_adapter("gemini-cli").binary.requires_node


@pytest.mark.parametrize("name", agent_names())
def test_generated_files_are_absolute_paths_under_home(name: str) -> None:
    spec = dataclasses.replace(SPEC, system_prompt="runbook", home="/home/agent")
    invocation = get_adapter(name).build(spec)
    assert all(path.startswith("/home/agent/.") for path in invocation.files)
    assert "tok-123" in invocation.env.values()
    assert all(isinstance(v, str) for v in invocation.env.values())


@pytest.mark.parametrize(("agent", "name"), all_fixtures())
def test_every_recording_ends_with_exactly_one_finished(agent: str, name: str) -> None:
    for exit_code in (0, 1):
        events = replay(agent, name, exit_code)
        kinds = Counter(type(e) for e in events)
        assert kinds[Finished] == 1
        assert isinstance(events[-1], Finished)
        assert kinds[SessionStarted] <= 1


@pytest.mark.parametrize(("agent", "name"), all_fixtures())
def test_every_tool_result_answers_an_earlier_call(agent: str, name: str) -> None:
    called: set[str] = set()
    for event in replay(agent, name):
        if isinstance(event, ToolCall):
            assert event.id not in called
            called.add(event.id)
        elif isinstance(event, ToolResult):
            assert event.id in called


@pytest.mark.parametrize(("agent", "name"), all_fixtures())
def test_every_recording_survives_the_event_log(agent: str, name: str) -> None:
    events = replay(agent, name)
    stored = [json.loads(json.dumps(e.to_dict())) for e in events]
    assert [from_dict(d) for d in stored] == events


@pytest.mark.parametrize(("agent", "name"), all_fixtures())
def test_line_endings_do_not_matter(agent: str, name: str) -> None:
    lines = (STREAMS / agent / name).read_text(encoding="utf-8").splitlines()
    for ending in ("", "\r\n"):
        translator = get_adapter(agent).new_translator()
        events = [e for line in lines for e in translator.feed(line + ending)]
        events += translator.finish(0)
        assert events == replay(agent, name)


@pytest.mark.parametrize("name", agent_names())
def test_translators_are_independent(name: str) -> None:
    adapter = get_adapter(name)
    first, second = adapter.new_translator(), adapter.new_translator()
    assert first is not second
    first.finish(1)
    assert isinstance(second.finish(1)[-1], Finished)
