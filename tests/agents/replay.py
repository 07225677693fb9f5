"""Replaying recorded CLI output through a translator, and reading the resulting events."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from proxy.agents import get_adapter
from proxy.events import Event, ReasoningDelta, TextDelta

STREAMS = Path(__file__).resolve().parents[1] / "fixtures" / "agent-streams"
AGENTS = ("claude-code", "codex", "gemini-cli")

E = TypeVar("E")


def fixture_names(agent: str) -> list[str]:
    """File names of every recording for ``agent``."""
    return sorted(p.name for p in (STREAMS / agent).iterdir() if p.is_file())


def all_fixtures() -> list[tuple[str, str]]:
    """(agent, file name) for every recording."""
    return [(agent, name) for agent in AGENTS for name in fixture_names(agent)]


def replay(agent: str, name: str, exit_code: int = 0) -> list[Event]:
    """Events from feeding a recording line by line, then ending the process with exit_code."""
    translator = get_adapter(agent).new_translator()
    events: list[Event] = []
    with (STREAMS / agent / name).open(encoding="utf-8") as lines:
        for line in lines:
            events += translator.feed(line)
    events += translator.finish(exit_code)
    return events


def of_type(events: list[Event], cls: type[E]) -> list[E]:
    """The events of one type, in order."""
    return [e for e in events if isinstance(e, cls)]


def text(events: list[Event]) -> str:
    """The answer text: all TextDeltas joined."""
    return "".join(e.text for e in of_type(events, TextDelta))


def reasoning(events: list[Event]) -> str:
    """All ReasoningDeltas joined."""
    return "".join(e.text for e in of_type(events, ReasoningDelta))
