"""The translator of Claude Code's ``--output-format stream-json`` lines.

Stream quirks the translator handles:

* With ``--include-partial-messages`` every text and thinking block arrives twice: as
  ``stream_event`` deltas and again as a whole ``assistant`` line (one line per block, printed
  before the block's ``content_block_stop``). Deltas are used when a block has them, the whole
  block otherwise.
* On an API error the CLI prints a synthetic assistant text (marked ``error``) and a ``result``
  whose ``subtype`` is still ``"success"`` but with ``is_error: true`` and ``api_error_status``.
  The synthetic text is not part of the answer; the result becomes an ``AgentError``.
* Lines with a non-null ``parent_tool_use_id`` come from a sub-agent: its text is shown as
  reasoning (it is working output, not the answer) and its tool activity carries ``parent_id``.
* When a model stream breaks off (dropped connection, or an in-band ``error`` event such as the
  relay's for a cut upstream), the CLI closes the open block and prints a ``message_stop`` whose
  line carries ``abandoned_blocks: {api_message_id, from_block_index}``; the blocks from that
  index on are dropped from the conversation, even with ``CLAUDE_CODE_MAX_RETRIES=0``, and the
  CLI asks again: if nothing of the message survived, the same request without streaming (whole
  ``assistant`` lines of a new message), otherwise a streamed continuation after a synthetic user
  message ("Your response above was cut off mid-stream. Resume directly from where it stops").
  Text already sent cannot be taken back, so the new message's first text (and thinking) block is
  compared with what the cut message showed last: while it repeats that text nothing is sent, and
  only what goes beyond it continues the old block. A retry that says something else follows
  after a blank line, with a warning. Each cut is reported as a warning too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from proxy.agents.base import (
    BlockJoiner,
    TranslatorBase,
    as_int,
    as_str,
    clip,
    parse_json_line,
    summarize_input,
)
from proxy.events import (
    AgentError,
    Event,
    Finished,
    Notice,
    SessionStarted,
    ToolCall,
    ToolResult,
    Usage,
)

__all__ = [
    "CLAIM_REQUEST_ID",
    "RETRY_DIFFERS_WARNING",
    "STREAM_CUT_WARNING",
    "ClaudeCodeTranslator",
]

# The id of the claim a run sends a CLI started ahead of it (`ClaudeCodeAdapter.handover`).
CLAIM_REQUEST_ID = "jetty-claim"

_SUMMARY_KEYS = (
    "command",
    "file_path",
    "notebook_path",
    "path",
    "pattern",
    "url",
    "query",
    "description",
    "prompt",
)


# (message id, block index): one content block of one model call.
_Key: TypeAlias = tuple[str, int]

STREAM_CUT_WARNING = "the model's reply was cut off mid-stream; Claude Code asked again"
RETRY_DIFFERS_WARNING = (
    "the model's new reply does not repeat the cut-off text above; it follows after a blank line"
)


@dataclass
class _Shown:
    """The text a cut message last showed in one block, and the block it was shown under."""

    text: str
    join_key: _Key
    # The block was abandoned (not kept by the CLI): a retry that differs gets a warning.
    abandoned: bool


@dataclass
class _Cut:
    """A cut message whose next attempt has not shown its first block of one kind yet."""

    message_id: str
    shown: _Shown
    # The message that answers the cut (the first one after it in the same context).
    retry_id: str | None = None


@dataclass
class _Resume:
    """A block of the retry, held back while it repeats what the cut message showed."""

    shown: _Shown
    got: str = ""
    repeating: bool = True


@dataclass
class _StreamedTool:
    id: str
    name: str
    json_parts: list[str] = field(default_factory=list)


class ClaudeCodeTranslator(TranslatorBase):
    """Translates Claude Code stream-json lines (with or without partial messages)."""

    cli_name = "Claude Code"

    def __init__(self) -> None:
        super().__init__()
        self._blocks = BlockJoiner()
        self._session_seen = False
        # Message currently streaming, per parent_tool_use_id (sub-agents stream interleaved).
        self._open_message: dict[str | None, str] = {}
        # (message id, block index) -> text already emitted for that block from deltas.
        self._streamed: dict[_Key, str] = {}
        # Blocks emitted whole from an assistant line; later deltas for them are dropped.
        self._whole: set[_Key] = set()
        # Every text or thinking block: its raw text and whether it is thinking.
        self._texts: dict[_Key, str] = {}
        self._thinking: dict[_Key, bool] = {}
        # Retries of cut-off text: pending per (context, thinking?), and the blocks checking.
        self._cuts: dict[tuple[str | None, bool], _Cut] = {}
        self._resumes: dict[_Key, _Resume] = {}
        # A retry block that continues a cut one is joined to the cut block (no blank line).
        self._join: dict[_Key, _Key] = {}
        # Number of blocks seen in assistant lines, per message id (gives each block its index).
        self._assistant_blocks: dict[str, int] = {}
        self._streamed_tools: dict[tuple[str, int], _StreamedTool] = {}
        self._tool_ids: set[str] = set()

    def feed(self, line: str) -> list[Event]:
        data = parse_json_line(line)
        if data is None:
            return []
        kind = data.get("type")
        parent = data.get("parent_tool_use_id")
        parent_id = parent if isinstance(parent, str) else None
        if kind == "system":
            return self._system(data)
        if kind == "stream_event":
            event = data.get("event")
            if not isinstance(event, dict):
                return []
            events = self._stream_event(event, parent_id)
            abandoned = data.get("abandoned_blocks")
            if isinstance(abandoned, dict):
                events += self._abandon(abandoned, parent_id)
            return events
        if kind == "assistant":
            return self._assistant(data, parent_id)
        if kind == "user":
            return self._user(data, parent_id)
        if kind == "result":
            return self._result(data)
        if kind == "control_response":
            return _claim_refused(data)
        return []

    def _system(self, data: Mapping[str, Any]) -> list[Event]:
        subtype = data.get("subtype")
        if subtype == "init":
            session_id = as_str(data.get("session_id"))
            if session_id and not self._session_seen:
                self._session_seen = True
                return [SessionStarted(session_id, as_str(data.get("model")) or None)]
        elif subtype == "permission_denied":
            # The tool's error result carries the CLI's explanation; this names the cause.
            tool = as_str(data.get("tool_name")) or "a tool"
            return [Notice(f"permission denied for {tool}")]
        return []

    def _stream_event(self, event: Mapping[str, Any], parent_id: str | None) -> list[Event]:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message")
            started = as_str(message.get("id")) if isinstance(message, dict) else ""
            self._open_message[parent_id] = started
            self._bind_retry(started, parent_id)
            return []
        message_id = self._open_message.get(parent_id)
        index = event.get("index")
        if message_id is None or not isinstance(index, int):
            return []
        key = (message_id, index)
        if kind == "content_block_start":
            block = event.get("content_block")
            if isinstance(block, dict) and block.get("type") == "tool_use":
                self._streamed_tools[key] = _StreamedTool(
                    as_str(block.get("id")), as_str(block.get("name"))
                )
            return []
        if kind == "content_block_delta":
            delta = event.get("delta")
            return self._delta(key, delta, parent_id) if isinstance(delta, dict) else []
        if kind == "content_block_stop":
            tool = self._streamed_tools.pop(key, None)
            if tool is None or not tool.id or tool.id in self._tool_ids:
                return []
            # The whole assistant line normally delivered this call already; this is the
            # fallback for a stream that carried the call only as deltas.
            try:
                parsed = json.loads("".join(tool.json_parts) or "{}")
            except ValueError:
                parsed = None
            tool_input = parsed if isinstance(parsed, dict) else {}
            return [self._tool_call(tool.id, tool.name, tool_input, parent_id)]
        return []

    def _delta(
        self, key: tuple[str, int], delta: Mapping[str, Any], parent_id: str | None
    ) -> list[Event]:
        kind = delta.get("type")
        if kind == "input_json_delta":
            tool = self._streamed_tools.get(key)
            if tool is not None:
                tool.json_parts.append(as_str(delta.get("partial_json")))
            return []
        if key in self._whole:
            return []
        if kind == "text_delta":
            text, thinking = as_str(delta.get("text")), False
        elif kind == "thinking_delta":
            text, thinking = as_str(delta.get("thinking")), True
        else:
            return []
        if not text:
            return []
        self._streamed[key] = self._streamed.get(key, "") + text
        return self._show(key, text, thinking=thinking, parent_id=parent_id)

    def _assistant(self, data: Mapping[str, Any], parent_id: str | None) -> list[Event]:
        message = data.get("message")
        if not isinstance(message, dict):
            return []
        content = message.get("content")
        if not isinstance(content, list):
            return []
        if data.get("error") or data.get("is_api_error_message"):
            # Synthetic API-error text, not part of the answer: the result line reports the
            # same error. Kept in case the process dies before printing that result.
            texts = [as_str(b.get("text")) for b in content if isinstance(b, dict)]
            self.last_error = " ".join(t for t in texts if t) or None
            return []
        message_id = as_str(message.get("id"))
        self._bind_retry(message_id, parent_id)
        first = self._assistant_blocks.get(message_id, 0)
        self._assistant_blocks[message_id] = first + len(content)
        events: list[Event] = []
        for offset, block in enumerate(content):
            if isinstance(block, dict):
                events += self._whole_block((message_id, first + offset), block, parent_id)
        return events

    def _whole_block(
        self, key: tuple[str, int], block: Mapping[str, Any], parent_id: str | None
    ) -> list[Event]:
        kind = block.get("type")
        if kind == "tool_use":
            tool_id = as_str(block.get("id"))
            tool_input = block.get("input")
            if not tool_id or tool_id in self._tool_ids:
                return []
            name = as_str(block.get("name"))
            args = tool_input if isinstance(tool_input, dict) else {}
            return [self._tool_call(tool_id, name, args, parent_id)]
        if kind == "text":
            text, thinking = as_str(block.get("text")), False
        elif kind == "thinking":
            text, thinking = as_str(block.get("thinking")), True
        else:
            return []
        streamed = self._streamed.get(key)
        if streamed is None:
            self._whole.add(key)
            return self._show(key, text, thinking=thinking, parent_id=parent_id) if text else []
        # Deltas already carried this block; emit only what they missed, if anything.
        rest = text[len(streamed) :] if text.startswith(streamed) else ""
        if not rest:
            return []
        self._streamed[key] = text
        return self._show(key, rest, thinking=thinking, parent_id=parent_id)

    def _show(self, key: _Key, text: str, *, thinking: bool, parent_id: str | None) -> list[Event]:
        """Events for the next piece of a block, minus what a cut attempt already showed."""
        if key not in self._texts:
            self._thinking[key] = thinking
            resume = self._claim_cut(key, thinking, parent_id)
            if resume is not None:
                self._resumes[key] = resume
        self._texts[key] = self._texts.get(key, "") + text
        resume = self._resumes.get(key)
        if resume is None or not resume.repeating:
            return [self._piece(self._join.get(key, key), text, thinking, parent_id)]
        resume.got += text
        shown = resume.shown
        if shown.text.startswith(resume.got):
            return []  # so far the retry repeats what is on screen
        resume.repeating = False
        if resume.got.startswith(shown.text):
            # It goes on from there: continue the cut block.
            self._join[key] = shown.join_key
            rest = resume.got[len(shown.text) :]
            return [self._piece(shown.join_key, rest, thinking, parent_id)]
        events: list[Event] = [Notice(RETRY_DIFFERS_WARNING)] if shown.abandoned else []
        return [*events, self._piece(key, resume.got, thinking, parent_id)]

    def _piece(self, key: _Key, text: str, thinking: bool, parent_id: str | None) -> Event:
        if thinking or parent_id is not None:
            return self._blocks.reasoning(key, text)
        return self._blocks.text(key, text)

    def _abandon(self, abandoned: Mapping[str, Any], parent_id: str | None) -> list[Event]:
        """A model call broke off: its blocks from ``from_block_index`` on are dropped."""
        message_id = as_str(abandoned.get("api_message_id"))
        start = abandoned.get("from_block_index")
        if not message_id or not isinstance(start, int):
            return []
        for tool in [k for k in self._streamed_tools if k[0] == message_id and k[1] >= start]:
            del self._streamed_tools[tool]  # a half-streamed call never ran
        for thinking in (False, True):
            blocks = sorted(
                k for k, t in self._thinking.items() if k[0] == message_id and t == thinking
            )
            cut = [k for k in blocks if k[1] >= start]
            # With no cut-off text, a retry may still recap the last kept text block.
            key = cut[-1] if cut else (blocks[-1] if blocks and not thinking else None)
            if key is None:
                self._cuts.pop((parent_id, thinking), None)
                continue
            resume = self._resumes.get(key)
            if resume is not None and resume.repeating:
                # It was repeating an earlier cut block: the screen still shows that one.
                shown = _Shown(resume.shown.text, resume.shown.join_key, abandoned=bool(cut))
            else:
                shown = _Shown(self._texts[key], self._join.get(key, key), abandoned=bool(cut))
            self._cuts[(parent_id, thinking)] = _Cut(message_id, shown)
        return [Notice(STREAM_CUT_WARNING)]

    def _bind_retry(self, message_id: str, parent_id: str | None) -> None:
        """The first message after a cut answers it; a later one finds the cut stale."""
        for thinking in (False, True):
            cut = self._cuts.get((parent_id, thinking))
            if cut is None or message_id == cut.message_id:
                continue
            if cut.retry_id is None:
                cut.retry_id = message_id
            elif cut.retry_id != message_id:
                del self._cuts[(parent_id, thinking)]

    def _claim_cut(self, key: _Key, thinking: bool, parent_id: str | None) -> _Resume | None:
        cut = self._cuts.get((parent_id, thinking))
        if cut is None or cut.retry_id != key[0]:
            return None
        del self._cuts[(parent_id, thinking)]
        return _Resume(cut.shown)

    def _tool_call(
        self, tool_id: str, name: str, tool_input: dict[str, Any], parent_id: str | None
    ) -> ToolCall:
        self._tool_ids.add(tool_id)
        summary = summarize_input(tool_input, _SUMMARY_KEYS)
        return ToolCall(tool_id, name, tool_input, summary, parent_id)

    def _user(self, data: Mapping[str, Any], parent_id: str | None) -> list[Event]:
        message = data.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            return []
        events: list[Event] = []
        for block in content:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                output = clip(_flatten(block.get("content")))
                is_error = block.get("is_error") is True
                tool_id = as_str(block.get("tool_use_id"))
                events.append(ToolResult(tool_id, output, is_error, parent_id=parent_id))
        return events

    def _result(self, data: Mapping[str, Any]) -> list[Event]:
        events: list[Event] = []
        session_id = as_str(data.get("session_id"))
        if session_id and not self._session_seen:
            # Output formats without an init line (e.g. plain json) still name the session.
            self._session_seen = True
            events.append(SessionStarted(session_id))
        usage = data.get("usage")
        cost = data.get("total_cost_usd")
        if isinstance(usage, dict):
            cache_read = as_int(usage.get("cache_read_input_tokens"))
            cache_write = as_int(usage.get("cache_creation_input_tokens"))
            events.append(
                Usage(
                    # Anthropic counts cache reads/writes apart from input_tokens.
                    input_tokens=as_int(usage.get("input_tokens")) + cache_read + cache_write,
                    output_tokens=as_int(usage.get("output_tokens")),
                    cache_read_tokens=cache_read,
                    cache_write_tokens=cache_write,
                    cost_usd=float(cost) if isinstance(cost, int | float) else None,
                )
            )
        subtype = as_str(data.get("subtype"))
        turns = data.get("num_turns")
        num_turns = turns if isinstance(turns, int) else None
        result = data.get("result")
        if data.get("is_error") is not True and subtype == "success":
            text = result if isinstance(result, str) else None
            self.finished = Finished(True, "success", text, num_turns)
            return [*events, self.finished]
        error = _result_error(data, subtype)
        self.finished = Finished(False, error.code, None, num_turns)
        return [*events, error, self.finished]


def _result_error(data: Mapping[str, Any], subtype: str) -> AgentError:
    status = data.get("api_error_status")
    result = as_str(data.get("result"))
    errors = data.get("errors")
    details = "; ".join(e for e in errors if isinstance(e, str)) if isinstance(errors, list) else ""
    if isinstance(status, int):
        if str(status) not in result:
            result = f"API error (HTTP {status}): {result or 'no details'}"
        return AgentError(result, "api_error", status)
    if subtype == "error_max_turns":
        return AgentError(details or "reached the maximum number of turns", "max_turns")
    code = subtype.removeprefix("error_") if subtype.startswith("error_") else "agent_error"
    return AgentError(details or result or f"Claude Code failed ({subtype or 'no subtype'})", code)


def _flatten(content: object) -> str:
    """Text of a tool_result's content: a string, or a list of blocks (non-text ones named)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts = []
    for block in content:
        if isinstance(block, dict):
            if block.get("type") == "text":
                parts.append(as_str(block.get("text")))
            else:
                parts.append(f"[{as_str(block.get('type')) or 'block'}]")
    return "\n".join(parts)


def _claim_refused(data: Mapping[str, Any]) -> list[Event]:
    """A refused claim of a CLI started ahead of its run: it takes no turn, so this is the
    run's error (an accepted claim says nothing; its session starts with ``system/init``)."""
    response = data.get("response")
    if not isinstance(response, dict) or response.get("request_id") != CLAIM_REQUEST_ID:
        return []
    if response.get("subtype") != "error":
        return []
    reason = clip(as_str(response.get("error")) or "no reason given", 500)
    return [AgentError(f"Claude Code refused the run's claim of its started process: {reason}")]
