"""Events → OpenAI ``chat.completion.chunk`` dicts, and the same events folded into one
``chat.completion``. The only module that knows the OpenAI wire shape of an agent run.

A stream is ``role_chunk()``, then ``render(event)`` for each event, then ``final_chunk(...)`` and,
when the client asked for usage, ``usage_chunk(...)``. All chunks share ``id``, ``created`` and
``model`` and carry ``usage: null`` except the usage chunk.

The answer goes to ``delta.content``; thinking, proxy progress, warnings and errors go to
``delta.reasoning_content``, which chat UIs show as a collapsible "thinking" section. Tool
activity becomes short human-readable lines (``→ Bash: ls``, ``← Bash ok: ...``) in reasoning by
default. It is never sent as ``tool_calls``: clients would try to execute those themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, TypeAlias

from proxy.events import (
    AgentError,
    Event,
    Finished,
    Notice,
    Progress,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolResult,
    Usage,
)

ToolActivity: TypeAlias = Literal["reasoning", "content", "none"]
FinishReason: TypeAlias = Literal["stop", "length"]
Channel: TypeAlias = Literal["content", "reasoning_content"]

# Tool output shown in a chat is a preview; the full output stays in the event log.
TOOL_OUTPUT_PREVIEW_CHARS = 400
TOOL_SUMMARY_CHARS = 200


def finish_reason_for(finished: Finished | None) -> FinishReason:
    """OpenAI ``finish_reason`` for a run's verdict: ``length`` when it ran out of turns.

    Failures are otherwise ``stop``: OpenAI has no failure reason, so errors travel in-band.
    """
    if finished is not None and finished.reason == "max_turns":
        return "length"
    return "stop"


def usage_dict(usage: Usage) -> dict[str, Any]:
    """``usage`` in OpenAI's shape (``prompt_tokens`` counts cached tokens too)."""
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {
            "cached_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def with_jetty(chunk: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``chunk`` (or completion) with a top-level ``jetty`` object.

    The OpenAI SDKs keep unknown top-level fields, so clients that know about Jetty can read it
    and others ignore it.
    """
    return {**chunk, "jetty": meta}


class ChunkRenderer:
    """Renders one completion's events as chunk dicts.

    Keeps a little state per stream (tool names by id, whether each channel is at the start of
    a line), so use one renderer per completion.
    """

    def __init__(
        self,
        completion_id: str,
        model: str,
        created: int,
        tool_activity: ToolActivity = "reasoning",
    ) -> None:
        self.completion_id = completion_id
        self.model = model
        self.created = created
        self.tool_activity = tool_activity
        self._tool_names: dict[str, str] = {}
        self._last_char: dict[Channel, str] = {"content": "", "reasoning_content": ""}

    def role_chunk(self) -> dict[str, Any]:
        """The first chunk: ``{"role": "assistant", "content": ""}``."""
        return self._chunk({"role": "assistant", "content": ""})

    def render(self, event: Event) -> list[dict[str, Any]]:
        """Zero or one chunk for ``event``.

        Session, usage and finish events render nothing here: the caller turns them into the
        final and usage chunks and the ``jetty`` metadata.
        """
        match event:
            case TextDelta(text=text):
                return self._emit("content", text)
            case ReasoningDelta(text=text):
                return self._emit("reasoning_content", text)
            case Progress(text=text):
                return self._line("reasoning_content", text)
            case Notice(text=text):
                return self._line("reasoning_content", f"warning: {text}")
            case AgentError(message=message):
                return self._line("reasoning_content", f"error: {message}")
            case ToolCall():
                self._tool_names[event.id] = event.name
                return self._tool_line(_call_line(event))
            case ToolResult():
                name = self._tool_names.get(event.id, "tool")
                return self._tool_line(_result_line(event, name))
        return []

    def final_chunk(
        self, finish_reason: FinishReason, jetty_meta: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The last choice chunk: an empty delta with ``finish_reason``, optionally ``jetty``."""
        chunk = self._chunk({}, finish_reason)
        return with_jetty(chunk, jetty_meta) if jetty_meta is not None else chunk

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        """The ``stream_options.include_usage`` chunk: no choices, usage filled in."""
        chunk = self._base()
        chunk["choices"] = []
        chunk["usage"] = usage_dict(usage)
        return chunk

    def _base(self) -> dict[str, Any]:
        return {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
        }

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        chunk = self._base()
        chunk["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
        chunk["usage"] = None
        return chunk

    def _emit(self, channel: Channel, text: str) -> list[dict[str, Any]]:
        if self._last_char[channel] == "\n" and text.startswith("\n\n"):
            # A new paragraph right after a status line needs one more newline, not two.
            text = text[1:]
        if not text:
            return []
        self._last_char[channel] = text[-1]
        return [self._chunk({channel: text})]

    def _line(self, channel: Channel, text: str) -> list[dict[str, Any]]:
        """``text`` as a line of its own, even when the channel is mid-sentence."""
        prefix = "" if self._last_char[channel] in ("", "\n") else "\n"
        return self._emit(channel, f"{prefix}{text}\n")

    def _tool_line(self, text: str) -> list[dict[str, Any]]:
        if self.tool_activity == "none":
            return []
        channel: Channel = "content" if self.tool_activity == "content" else "reasoning_content"
        return self._line(channel, text)


class Aggregator:
    """Folds a run's events into one non-streaming ``chat.completion`` dict.

    Uses a ``ChunkRenderer`` underneath, so the text is exactly what a streaming client would
    have assembled. Usage events are summed.
    """

    def __init__(
        self,
        completion_id: str,
        model: str,
        created: int,
        tool_activity: ToolActivity = "reasoning",
    ) -> None:
        self._renderer = ChunkRenderer(completion_id, model, created, tool_activity)
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self.usage: Usage | None = None
        self.finished: Finished | None = None

    def add(self, event: Event) -> None:
        """Fold in one event."""
        if isinstance(event, Usage):
            self.usage = event if self.usage is None else self.usage + event
        elif isinstance(event, Finished):
            self.finished = event
        for chunk in self._renderer.render(event):
            delta = chunk["choices"][0]["delta"]
            self._content.append(delta.get("content", ""))
            self._reasoning.append(delta.get("reasoning_content", ""))

    def extend(self, events: Iterable[Event]) -> None:
        """Fold in several events, in order."""
        for event in events:
            self.add(event)

    def completion(
        self,
        finish_reason: FinishReason | None = None,
        jetty_meta: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The ``chat.completion`` dict; ``finish_reason`` defaults to the run's verdict."""
        renderer = self._renderer
        reasoning = "".join(self._reasoning)
        completion = {
            "id": renderer.completion_id,
            "object": "chat.completion",
            "created": renderer.created,
            "model": renderer.model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "".join(self._content),
                        "reasoning_content": reasoning or None,
                    },
                    "finish_reason": finish_reason or finish_reason_for(self.finished),
                    "logprobs": None,
                }
            ],
            # Some clients read usage unconditionally on non-streaming responses.
            "usage": usage_dict(self.usage or Usage(0, 0)),
        }
        return with_jetty(completion, jetty_meta) if jetty_meta is not None else completion


def _preview(text: str, limit: int) -> str:
    text = text.strip()
    if len(text) > limit:
        text = text[:limit].rstrip() + "…"
    return text


def _call_line(call: ToolCall) -> str:
    indent = "  " if call.parent_id else ""
    summary = _preview(call.summary, TOOL_SUMMARY_CHARS).replace("\n", " ")
    return f"{indent}→ {call.name}: {summary}" if summary else f"{indent}→ {call.name}"


def _result_line(result: ToolResult, name: str) -> str:
    indent = "  " if result.parent_id else ""
    if result.exit_code:
        status = f"failed (exit {result.exit_code})"
    else:
        status = "failed" if result.is_error else "ok"
    head = f"{indent}← {name} {status}"
    output = _preview(result.output, TOOL_OUTPUT_PREVIEW_CHARS)
    if not output:
        return head
    # Continuation lines are indented so multi-line output reads as part of this entry.
    body = output.replace("\n", f"\n{indent}  ")
    return f"{head}: {body}"
