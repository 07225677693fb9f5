from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.events import (
    AgentError,
    Event,
    Finished,
    Notice,
    Progress,
    ReasoningDelta,
    SessionStarted,
    TextDelta,
    ToolCall,
    ToolResult,
    Usage,
    from_dict,
)

ONE_OF_EACH: list[Event] = [
    SessionStarted("s1", "claude-sonnet-4-6"),
    TextDelta("hé ☃"),
    ReasoningDelta("thinking"),
    ToolCall("t1", "Bash", {"command": "ls", "nested": {"a": [1, None]}}, "ls", parent_id="p"),
    ToolResult("t1", "out", is_error=True, exit_code=2, parent_id="p"),
    Usage(10, 5, 3, 2, cost_usd=0.25, reasoning_tokens=1),
    Progress("starting sandbox"),
    Notice("retrying"),
    AgentError("boom", "api_error", 502),
    Finished(ok=False, reason="api_error", result_text=None, num_turns=3),
]


@pytest.mark.parametrize("event", ONE_OF_EACH, ids=lambda e: type(e).__name__)
def test_round_trip_through_json(event: Event) -> None:
    assert from_dict(json.loads(json.dumps(event.to_dict()))) == event


def test_type_discriminators_are_distinct_snake_case() -> None:
    kinds = [e.to_dict()["type"] for e in ONE_OF_EACH]
    assert kinds == [
        "session_started",
        "text_delta",
        "reasoning_delta",
        "tool_call",
        "tool_result",
        "usage",
        "progress",
        "warning",
        "agent_error",
        "finished",
    ]


def test_to_dict_shape() -> None:
    assert Finished(ok=True, reason="success", result_text="done").to_dict() == {
        "type": "finished",
        "ok": True,
        "reason": "success",
        "result_text": "done",
        "num_turns": None,
    }


def test_unknown_keys_are_ignored_and_missing_optionals_defaulted() -> None:
    data = {"type": "tool_result", "id": "t1", "output": "x", "added_later": 1}
    assert from_dict(data) == ToolResult("t1", "x")


@pytest.mark.parametrize(
    "data",
    [{"type": "nope"}, {}, {"type": 3}, {"type": "text_delta"}, {"type": "usage", "output": 1}],
)
def test_invalid_dicts_raise_value_error(data: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="event"):
        from_dict(data)


def test_usage_adds_up() -> None:
    total = Usage(10, 2, 1, 0, cost_usd=None) + Usage(5, 3, 0, 4, cost_usd=0.5, reasoning_tokens=2)
    assert total == Usage(15, 5, 1, 4, cost_usd=0.5, reasoning_tokens=2)
    assert (Usage(1, 1) + Usage(1, 1)).cost_usd is None


def test_events_are_immutable() -> None:
    with pytest.raises(AttributeError):
        TextDelta("a").text = "b"  # type: ignore[misc]
