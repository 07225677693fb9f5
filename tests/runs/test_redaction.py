"""A live run's followers never see a collection secret, in a delta or in a whole event."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.events import (
    AgentError,
    Event,
    Finished,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolResult,
    Usage,
)
from proxy.runs.live import LiveRun
from proxy.runs.redaction import LiveRedactor

SECRET = "s3cret-value-9f8e7d"
SECRETS = {"DB_PASSWORD": SECRET, "SHORT": "ab"}


def _live() -> LiveRun:
    return LiveRun("r1", "acme", "t", "claude-code", "m", redactor=LiveRedactor.of(SECRETS))


def _text(events: list[Event], kind: type[TextDelta] | type[ReasoningDelta]) -> str:
    return "".join(e.text for e in events if isinstance(e, kind))


def test_no_redactor_without_a_secret_long_enough() -> None:
    assert LiveRedactor.of({}) is None
    assert LiveRedactor.of({"SHORT": "ab"}) is None


@given(st.lists(st.integers(0, 40), max_size=6))
def test_a_secret_split_across_text_deltas_never_reaches_a_follower(cuts: list[int]) -> None:
    answer = f"The password is {SECRET}, use it well."
    points = sorted(set(cuts))
    live = _live()
    for start, end in zip([0, *points], [*points, len(answer)], strict=True):
        live.publish(TextDelta(answer[start:end]))
    live.close("completed")
    shown = _text(live.events, TextDelta)
    assert shown == "The password is [redacted:DB_PASSWORD], use it well."
    assert all(SECRET[:6] not in e.text for e in live.events if isinstance(e, TextDelta))


def test_held_back_text_goes_out_before_the_next_whole_event_in_order() -> None:
    live = _live()
    live.publish(ReasoningDelta("thinking about s3cret-"))
    live.publish(TextDelta("answer: s3c"))  # the reasoning's held-back end comes out first
    live.publish(ToolCall("t1", "Bash", {"command": f"echo {SECRET}"}, f"echo {SECRET}"))
    live.publish(ToolResult("t1", f"{SECRET}\n"))
    live.publish(Usage(3, 4))
    live.publish(AgentError(f"failed with {SECRET}"))
    live.publish(Finished(ok=False, reason="agent_error", result_text=SECRET))
    live.artifacts = [{"path": f"{SECRET}.txt", "url": f"/a/{SECRET}.txt", "bytes": 1}]
    live.close("failed", f"The agent said {SECRET}", "agent_error")
    kinds = [type(e).__name__ for e in live.events]
    assert kinds == [
        "ReasoningDelta",
        "ReasoningDelta",
        "TextDelta",
        "TextDelta",
        "ToolCall",
        "ToolResult",
        "Usage",
        "AgentError",
        "Finished",
    ]
    assert _text(live.events, ReasoningDelta) == "thinking about s3cret-"
    assert _text(live.events, TextDelta) == "answer: s3c"
    assert SECRET not in repr(live.events)
    assert "[redacted:DB_PASSWORD]" in repr(live.events[4])
    assert live.error == "The agent said [redacted:DB_PASSWORD]"
    assert live.artifacts == [
        {"path": "[redacted:DB_PASSWORD].txt", "url": "/a/[redacted:DB_PASSWORD].txt", "bytes": 1}
    ]
    assert live.usage == Usage(3, 4)
    assert live.finished is not None and live.finished.result_text == "[redacted:DB_PASSWORD]"


@pytest.mark.anyio
async def test_a_follower_gets_the_held_back_end_when_the_run_closes() -> None:
    live = _live()
    seen: list[Event] = []

    async def follow() -> None:
        async for event in live.follow():
            seen.append(event)

    async with anyio.create_task_group() as tg:
        tg.start_soon(follow)
        live.publish(TextDelta("Result: s3cret"))
        live.publish(TextDelta("-value-9f8e7d and the end s3c"))
        live.close("completed")
    assert _text(seen, TextDelta) == "Result: [redacted:DB_PASSWORD] and the end s3c"
