"""The project's own events: what an agent run reports, independent of any CLI or wire format.

Agent translators (``proxy.agents``) turn CLI output lines into these events; the renderer
(``proxy.runs.render``) turns them into OpenAI chunks; the run store keeps them in an append-only
log. Events are frozen, carry only JSON-safe values, and round-trip through ``to_dict()`` and
``from_dict()``::

    >>> from_dict(TextDelta("hi").to_dict())
    TextDelta(text='hi')

A run's events follow a loose grammar: at most one ``SessionStarted`` per agent process, any
number of deltas, tool activity, ``Usage``, ``Notice`` and ``AgentError`` events, then exactly one
``Finished``. ``AgentError`` reports an error; whether the run failed is decided by ``Finished.ok``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, TypeAlias

__all__ = [
    "AgentError",
    "Event",
    "Finished",
    "Notice",
    "Progress",
    "ReasoningDelta",
    "SessionStarted",
    "TextDelta",
    "ToolCall",
    "ToolResult",
    "Usage",
    "from_dict",
]


class _Serializable:
    """Mixin giving every event a ``type`` discriminator and ``to_dict()``."""

    __slots__ = ()
    type: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict with a ``type`` key; ``from_dict`` reverses it."""
        data: dict[str, Any] = {"type": self.type}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            data[f.name] = dict(value) if isinstance(value, Mapping) else value
        return data


@dataclass(frozen=True, slots=True)
class SessionStarted(_Serializable):
    """The CLI announced its session (Claude/Gemini session id, Codex thread id).

    The id is what a later run passes back to resume the conversation.
    """

    type: ClassVar[str] = "session_started"
    session_id: str
    model: str | None = None


@dataclass(frozen=True, slots=True)
class TextDelta(_Serializable):
    """A piece of the agent's answer text. Concatenate all of them for the full answer."""

    type: ClassVar[str] = "text_delta"
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta(_Serializable):
    """A piece of the agent's visible thinking (or of a sub-agent's working text)."""

    type: ClassVar[str] = "reasoning_delta"
    text: str


@dataclass(frozen=True, slots=True)
class ToolCall(_Serializable):
    """The agent started using a tool.

    ``summary`` is a short human-readable description (usually the command or path);
    ``input`` is the tool's full argument object. ``parent_id`` is set for calls made inside a
    sub-agent and names the tool call that started the sub-agent.
    """

    type: ClassVar[str] = "tool_call"
    id: str
    name: str
    input: Mapping[str, Any] = field(default_factory=dict)
    summary: str = ""
    parent_id: str | None = None


@dataclass(frozen=True, slots=True)
class ToolResult(_Serializable):
    """A tool finished. ``id`` matches the ``ToolCall`` it answers.

    ``output`` may have been shortened by the translator (very large outputs are clipped).
    """

    type: ClassVar[str] = "tool_result"
    id: str
    output: str
    is_error: bool = False
    exit_code: int | None = None
    parent_id: str | None = None


@dataclass(frozen=True, slots=True)
class Usage(_Serializable):
    """Token usage for part of a run; a run's total is the sum (``+``) of its Usage events.

    ``input_tokens`` counts all prompt tokens, cache reads and writes included (OpenAI's
    ``prompt_tokens`` convention); the cache fields say how many of them were cached.
    ``reasoning_tokens`` is the part of ``output_tokens`` spent on reasoning, when reported.
    """

    type: ClassVar[str] = "usage"
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float | None = None
    reasoning_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        if self.cost_usd is None and other.cost_usd is None:
            cost = None
        else:
            cost = (self.cost_usd or 0.0) + (other.cost_usd or 0.0)
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            cost_usd=cost,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
        )


@dataclass(frozen=True, slots=True)
class Progress(_Serializable):
    """A status line from the proxy itself, e.g. "starting sandbox"."""

    type: ClassVar[str] = "progress"
    text: str


@dataclass(frozen=True, slots=True)
class Notice(_Serializable):
    """A warning worth showing that does not stop the run (a retry, a denied permission).

    Stored and sent as type ``warning``.
    """

    type: ClassVar[str] = "warning"
    text: str


@dataclass(frozen=True, slots=True)
class AgentError(_Serializable):
    """An error reported by the agent or about it (API error, crash, exhausted turns).

    ``code`` is a short snake_case tag such as ``api_error``, ``max_turns``, ``turn_failed``,
    ``crash``; ``http_status`` is the upstream HTTP status when the CLI reported one.
    """

    type: ClassVar[str] = "agent_error"
    message: str
    code: str = "agent_error"
    http_status: int | None = None


@dataclass(frozen=True, slots=True)
class Finished(_Serializable):
    """The run's verdict; always the last event of a run.

    ``reason`` is ``"success"`` when ``ok``, otherwise the same tag as the ``AgentError.code``
    that explains the failure. ``result_text`` is the agent's final message on success.
    """

    type: ClassVar[str] = "finished"
    ok: bool
    reason: str
    result_text: str | None = None
    num_turns: int | None = None


Event: TypeAlias = (
    SessionStarted
    | TextDelta
    | ReasoningDelta
    | ToolCall
    | ToolResult
    | Usage
    | Progress
    | Notice
    | AgentError
    | Finished
)

_EVENT_TYPES: Mapping[str, type[Event]] = MappingProxyType(
    {
        cls.type: cls
        for cls in (
            SessionStarted,
            TextDelta,
            ReasoningDelta,
            ToolCall,
            ToolResult,
            Usage,
            Progress,
            Notice,
            AgentError,
            Finished,
        )
    }
)


def from_dict(data: Mapping[str, Any]) -> Event:
    """Rebuild an event from ``to_dict()`` output.

    Keys the event does not know are ignored and missing optional fields take their defaults,
    so logs written by older or newer versions still load. Raises ``ValueError`` for an unknown
    ``type`` or a missing required field.
    """
    kind = data.get("type")
    cls = _EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown event type: {kind!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in data.items() if k in names}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"invalid {kind} event: {exc}") from exc
