from __future__ import annotations

from typing import Any

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

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
)
from proxy.runs.render import (
    Aggregator,
    ChunkRenderer,
    ToolActivity,
    finish_reason_for,
    usage_dict,
    with_jetty,
)
from tests.agents.replay import all_fixtures, replay, text

ID, MODEL, CREATED = "chatcmpl-run1", "claude-sonnet-4-6", 1_790_000_000
ACTIVITIES: tuple[ToolActivity, ...] = ("reasoning", "content", "none")


def stream(
    events: list[Event], tool_activity: ToolActivity = "reasoning", *, usage: bool = True
) -> list[dict[str, Any]]:
    """The chunks a streaming response would carry, in order."""
    renderer = ChunkRenderer(ID, MODEL, CREATED, tool_activity)
    chunks = [renderer.role_chunk()]
    for event in events:
        chunks += renderer.render(event)
    finished = next((e for e in events if isinstance(e, Finished)), None)
    chunks.append(renderer.final_chunk(finish_reason_for(finished), {"run_id": "run1"}))
    total = sum((e for e in events if isinstance(e, Usage)), Usage(0, 0))
    if usage:
        chunks.append(renderer.usage_chunk(total))
    return chunks


def joined(chunks: list[dict[str, Any]], field: str) -> str:
    return "".join(c["choices"][0]["delta"].get(field) or "" for c in chunks if c["choices"])


def aggregate(events: list[Event], tool_activity: ToolActivity = "reasoning") -> dict[str, Any]:
    aggregator = Aggregator(ID, MODEL, CREATED, tool_activity)
    aggregator.extend(events)
    return aggregator.completion()


# Every recording, every mode


@pytest.mark.parametrize("tool_activity", ACTIVITIES)
@pytest.mark.parametrize(("agent", "name"), all_fixtures())
def test_stream_chunks_follow_the_openai_contract(
    agent: str, name: str, tool_activity: ToolActivity
) -> None:
    events = replay(agent, name)
    chunks = stream(events, tool_activity)
    for chunk in chunks:
        parsed = ChatCompletionChunk.model_validate(chunk)
        assert (parsed.id, parsed.model, parsed.created) == (ID, MODEL, CREATED)
        assert parsed.object == "chat.completion.chunk"
        assert all(choice.delta.tool_calls is None for choice in parsed.choices)
        assert all("tool_calls" not in choice["delta"] for choice in chunk["choices"])
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["usage"] is None for c in chunks] == [True] * (len(chunks) - 1) + [False]
    final = chunks[-2]
    assert final["choices"][0]["delta"] == {}
    assert final["choices"][0]["finish_reason"] in ("stop", "length")
    assert final["jetty"] == {"run_id": "run1"}
    assert chunks[-1]["choices"] == []
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-2])
    if tool_activity != "content":
        assert joined(chunks, "content") == text(events)


@pytest.mark.parametrize("tool_activity", ACTIVITIES)
@pytest.mark.parametrize(("agent", "name"), all_fixtures())
def test_aggregate_equals_what_a_stream_assembles(
    agent: str, name: str, tool_activity: ToolActivity
) -> None:
    events = replay(agent, name)
    completion = aggregate(events, tool_activity)
    parsed = ChatCompletion.model_validate(completion)
    assert parsed.object == "chat.completion"
    assert parsed.choices[0].message.tool_calls is None
    chunks = stream(events, tool_activity)
    message = completion["choices"][0]["message"]
    assert message["content"] == joined(chunks, "content")
    assert (message["reasoning_content"] or "") == joined(chunks, "reasoning_content")
    assert completion["choices"][0]["finish_reason"] == chunks[-2]["choices"][0]["finish_reason"]
    assert completion["usage"] == chunks[-1]["usage"]


# Concrete renderings


def test_claude1_in_each_tool_activity_mode() -> None:
    events = replay("claude-code", "claude1.jsonl")
    thought = "I should create the file with a shell command."
    answer = "I'll create the file now.\n\nDone: probe.txt now contains hi."
    tool_lines = "→ Bash: echo hi > probe.txt\n← Bash ok: (Bash completed with no output)\n"

    by_reasoning = stream(events, "reasoning")
    assert joined(by_reasoning, "content") == answer
    assert joined(by_reasoning, "reasoning_content") == f"{thought}\n{tool_lines}"

    by_content = stream(events, "content")
    assert joined(by_content, "content") == (
        f"I'll create the file now.\n{tool_lines}\nDone: probe.txt now contains hi."
    )
    assert joined(by_content, "reasoning_content") == thought

    silent = stream(events, "none")
    assert joined(silent, "content") == answer
    assert joined(silent, "reasoning_content") == thought


def test_codex_error_stream() -> None:
    chunks = stream(replay("codex", "codex_err401.jsonl", exit_code=1))
    assert joined(chunks, "content") == ""
    assert joined(chunks, "reasoning_content") == (
        "error: unexpected status 401 Unauthorized: fake error 401, "
        "url: http://127.0.0.1:8765/v1/responses\n"
    )
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


def test_max_turns_finishes_with_length() -> None:
    chunks = stream(replay("claude-code", "claude_maxturns.jsonl"))
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert finish_reason_for(Finished(ok=True, reason="success")) == "stop"
    assert finish_reason_for(None) == "stop"


def test_chunk_dicts_exactly() -> None:
    renderer = ChunkRenderer(ID, MODEL, CREATED)
    base = {"id": ID, "object": "chat.completion.chunk", "created": CREATED, "model": MODEL}
    assert renderer.render(TextDelta("hi")) == [
        {**base, "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}],
         "usage": None}
    ]  # fmt: skip
    assert renderer.final_chunk("stop") == {
        **base,
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": None,
    }
    assert renderer.usage_chunk(Usage(120, 30, cache_read_tokens=100, reasoning_tokens=7)) == {
        **base,
        "choices": [],
        "usage": {
            "prompt_tokens": 120,
            "completion_tokens": 30,
            "total_tokens": 150,
            "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 7},
        },
    }


def test_bookkeeping_events_render_nothing() -> None:
    renderer = ChunkRenderer(ID, MODEL, CREATED)
    for event in (SessionStarted("s"), Usage(1, 1), Finished(ok=True, reason="success")):
        assert renderer.render(event) == []
    assert renderer.render(TextDelta("")) == []


def test_status_lines_start_on_a_fresh_line() -> None:
    chunks = stream(
        [
            Progress("starting sandbox"),
            ReasoningDelta("Thinking about"),
            Notice("retrying"),
            ReasoningDelta("more."),
            AgentError("upstream 502", "api_error", 502),
        ]
    )
    assert joined(chunks, "reasoning_content") == (
        "starting sandbox\nThinking about\nwarning: retrying\nmore.\nerror: upstream 502\n"
    )


def test_long_tool_output_is_previewed() -> None:
    output = "x" * 1000 + "TAIL"
    events: list[Event] = [
        ToolCall("t1", "Bash", {"command": "cat big"}, "cat big"),
        ToolResult("t1", output, is_error=True, exit_code=3),
    ]
    reasoning = joined(stream(events), "reasoning_content")
    assert reasoning == f"→ Bash: cat big\n← Bash failed (exit 3): {'x' * 400}…\n"
    assert "TAIL" not in reasoning


def test_multiline_output_and_sub_agent_lines_are_indented() -> None:
    events: list[Event] = [
        ToolCall("t1", "Task", {}, "explore"),
        ToolCall("t2", "Bash", {"command": "ls"}, "ls", parent_id="t1"),
        ToolResult("t2", "a.txt\nb.txt\n", parent_id="t1"),
        ToolResult("t9", "orphan"),
    ]
    assert joined(stream(events), "reasoning_content") == (
        "→ Task: explore\n  → Bash: ls\n  ← Bash ok: a.txt\n    b.txt\n← tool ok: orphan\n"
    )


def test_aggregator_sums_usage_and_attaches_jetty() -> None:
    aggregator = Aggregator(ID, MODEL, CREATED)
    aggregator.extend(
        [
            TextDelta("answer"),
            Usage(100, 10, cost_usd=0.1),
            Usage(50, 5, cache_read_tokens=40, cost_usd=0.2),
            Finished(ok=True, reason="success", result_text="answer"),
        ]
    )
    completion = aggregator.completion(jetty_meta={"run_id": "run1"})
    ChatCompletion.model_validate(completion)
    assert aggregator.usage == Usage(150, 15, cache_read_tokens=40, cost_usd=0.1 + 0.2)
    assert completion["usage"] == usage_dict(Usage(150, 15, cache_read_tokens=40))
    assert completion["jetty"] == {"run_id": "run1"}
    assert completion["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": "answer", "reasoning_content": None},
        "finish_reason": "stop",
        "logprobs": None,
    }


def test_empty_run_still_validates() -> None:
    completion = Aggregator(ID, MODEL, CREATED).completion(finish_reason="length")
    ChatCompletion.model_validate(completion)
    assert completion["choices"][0]["finish_reason"] == "length"
    assert completion["usage"]["total_tokens"] == 0


def test_with_jetty_copies() -> None:
    chunk = ChunkRenderer(ID, MODEL, CREATED).role_chunk()
    tagged = with_jetty(chunk, {"status": "running"})
    assert tagged["jetty"] == {"status": "running"}
    assert "jetty" not in chunk
    ChatCompletionChunk.model_validate(tagged)
