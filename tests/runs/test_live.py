"""Following a live run: while a tool runs silently, a follower is told it is still running.

A run on the scripted backend plays Claude Code's recorded stream with a pause inside its tool
call and another after it; the interval is tiny, so lines come during the first pause, and
none may come during the second.
"""

from __future__ import annotations

from contextlib import aclosing
from pathlib import Path

import pytest

from proxy.agents.install import AgentCache
from proxy.events import Event, Progress, ToolCall, ToolResult
from proxy.sandbox import Pause, Script, ScriptedBackend
from proxy.store import Store
from tests.support.runs import CLAUDE, request, runs_on

pytestmark = pytest.mark.anyio

INTERVAL = 0.02
# Claude Code's recorded run: its tool call is line 4, the tool's result line 5.
TOOL_CALL, TOOL_RESULT = 4, 5


def paused(*, thinking: float = 0, in_tool: float = 0, after: float = 0) -> list[str | Pause]:
    """Claude Code's recorded run, with pauses (in intervals) before its tool call (the model
    thinking), inside the call (the tool running) and after the tool's result."""
    return [
        *CLAUDE[:TOOL_CALL],
        Pause(thinking * INTERVAL),
        CLAUDE[TOOL_CALL],
        Pause(in_tool * INTERVAL),
        CLAUDE[TOOL_RESULT],
        Pause(after * INTERVAL),
        *CLAUDE[TOOL_RESULT + 1 :],
    ]


def is_line(event: Event) -> bool:
    return isinstance(event, Progress) and event.text.startswith("still running:")


def still_running(events: list[Event]) -> list[int]:
    """The positions of the "still running" lines in ``events``."""
    return [index for index, event in enumerate(events) if is_line(event)]


async def test_a_silent_tool_is_said_to_be_still_running_while_it_runs(
    store: Store, tmp_path: Path, agent_cache: AgentCache
) -> None:
    backend = ScriptedBackend(lambda _: Script(stdout=paused(in_tool=25, after=15)))
    async with runs_on(store, tmp_path, backend, agents=agent_cache) as runs:
        started = await runs.start(request())
        # What a chat stream follows (the setting is the server's: 20 s unless configured).
        assert started.still_running == 20.0
        followed = [event async for event in started.live.follow(still_running=INTERVAL)]
        replayed = [event async for event in started.live.follow()]
    assert started.live.outcome == "completed"
    lines = still_running(followed)
    assert lines, "no line while the tool ran"
    call = next(i for i, e in enumerate(followed) if isinstance(e, ToolCall))
    result = next(i for i, e in enumerate(followed) if isinstance(e, ToolResult))
    # Every line came while the tool ran, and names it.
    assert all(call < index < result for index in lines)
    texts = {str(getattr(followed[index], "text", "")) for index in lines}
    assert {text.rsplit(",", 1)[0] for text in texts} == {"still running: Bash"}
    assert all(text.endswith(" s") for text in texts)
    # The lines are the follower's own: not in the run's events, not seen by other followers.
    assert still_running(started.live.events) == still_running(replayed) == []
    assert [event for event in followed if not is_line(event)] == replayed


async def test_no_line_without_a_running_tool_or_with_the_setting_off(
    store: Store, tmp_path: Path, agent_cache: AgentCache
) -> None:
    backend = ScriptedBackend(lambda _: Script(stdout=paused(thinking=15, in_tool=15)))
    async with runs_on(
        store, tmp_path, backend, agents=agent_cache, settings={"still_running_seconds": 0}
    ) as runs:
        started = await runs.start(request())
        assert started.still_running == 0
        thinking = []
        async with aclosing(started.live.follow(still_running=INTERVAL)) as events:
            async for event in events:
                thinking.append(event)
                if isinstance(event, ToolCall):
                    break
        off = [event async for event in started.live.follow(still_running=started.still_running)]
    assert still_running(thinking) == []
    assert still_running(off) == []
