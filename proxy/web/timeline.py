"""A run's event log folded into what its page shows: the answer, and the activity around it.

The page's script (``static/run.js``) folds live events the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from proxy.store.records import StoredEvent

#: Tool output shown on the page; the event log keeps all the translator kept.
OUTPUT_CHARS = 20_000

NoteKind = Literal["thinking", "progress", "warning", "error"]


@dataclass
class Note:
    """Thinking (a collapsible block), or a line of progress, a warning or an error."""

    kind: NoteKind
    text: str


@dataclass
class Tool:
    """One tool use: the call and, once it finished, its result."""

    id: str
    name: str
    summary: str
    input: str
    output: str | None = None
    is_error: bool = False
    exit_code: int | None = None
    kind: Literal["tool"] = "tool"


@dataclass
class Timeline:
    answer: str = ""
    activity: list[Note | Tool] = field(default_factory=list)
    last_seq: int = 0


def fold(events: Iterable[StoredEvent]) -> Timeline:
    """The answer (all text deltas) and the activity, in order, from a run's event log."""
    timeline = Timeline()
    tools: dict[str, Tool] = {}
    for event in events:
        timeline.last_seq = event.seq
        _add(timeline, tools, event.type, event.data)
    return timeline


def _add(timeline: Timeline, tools: dict[str, Tool], kind: str, data: Mapping[str, Any]) -> None:
    activity = timeline.activity
    if kind == "text_delta":
        timeline.answer += str(data.get("text", ""))
    elif kind == "reasoning_delta":
        text = str(data.get("text", ""))
        last = activity[-1] if activity else None
        if isinstance(last, Note) and last.kind == "thinking":
            last.text += text
        else:
            activity.append(Note("thinking", text))
    elif kind == "tool_call":
        tool = Tool(
            id=str(data.get("id", "")),
            name=str(data.get("name", "tool")),
            summary=str(data.get("summary", "")),
            input=json.dumps(data.get("input") or {}, indent=2, ensure_ascii=False),
        )
        tools[tool.id] = tool
        activity.append(tool)
    elif kind == "tool_result":
        found = tools.get(str(data.get("id", "")))
        if found is not None:
            output = str(data.get("output", ""))
            if len(output) > OUTPUT_CHARS:
                output = output[:OUTPUT_CHARS] + "\n… (shortened)"
            found.output = output
            found.is_error = bool(data.get("is_error"))
            exit_code = data.get("exit_code")
            found.exit_code = exit_code if isinstance(exit_code, int) else None
    elif kind == "progress":
        activity.append(Note("progress", str(data.get("text", ""))))
    elif kind == "warning":
        activity.append(Note("warning", str(data.get("text", ""))))
    elif kind == "agent_error":
        activity.append(Note("error", str(data.get("message", ""))))
