"""Gemini CLI (``gemini --prompt=... -o stream-json``).

The CLI exits at startup unless ``~/.gemini/settings.json`` selects API-key auth (exit 41) and the
workspace is trusted (exit 55). The runbook goes in ``~/.gemini/GEMINI.md``, the global context
file Gemini adds to its own system prompt (``GEMINI_SYSTEM_MD`` would replace that prompt).
``AgentSpec.max_turns`` becomes the ``model.maxSessionTurns`` setting; there is no flag for it.

Stream quirks: thinking is not emitted; assistant text arrives in ``delta`` pieces, and a message
after a tool call is a new block. ``result`` carries usage stats and, on failure, the error; a
mid-stream ``error`` line does not by itself end the run.

At start the CLI runs Node a second time, as its own child, to give it a heap of half the
machine's memory (``os.totalmem``, which in a container is the host's, not the container's
limit); that second Node start is half a second. ``GEMINI_CLI_NO_RELAUNCH`` skips it, and the
heap is sized here instead: half the sandbox's memory limit, given to the one Node.

A follow-up turn resumes with ``--resume SESSION_UUID`` (exit 42 when that chat is not under
``~/.gemini/tmp/<project>/chats``). 0.61.0 replays every tool result of a resumed chat twice
(google-gemini/gemini-cli#29365), which the Gemini API rejects (the function responses outnumber
the calls); the repeats must be dropped before a request reaches the API.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from proxy.agents.base import (
    AgentSpec,
    BinaryInfo,
    BlockJoiner,
    Invocation,
    RelayApi,
    RelayTransport,
    TranslatorBase,
    as_int,
    as_str,
    clip,
    http_status_in,
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

_SUMMARY_KEYS = (
    "command",
    "file_path",
    "absolute_path",
    "path",
    "pattern",
    "url",
    "query",
    "description",
)

_MIB = 1024 * 1024

# Exit codes the CLI documents for startup failures, as hints in the crash message.
_EXIT_HINTS: Mapping[int, str] = MappingProxyType(
    {
        41: "authentication is not configured",
        42: "invalid input, e.g. the session to resume was not found",
        53: "maximum session turns reached",
        55: "workspace is not trusted",
    }
)


class GeminiCliAdapter:
    """Adapter for Google's Gemini CLI."""

    name = "gemini-cli"
    relay_api: RelayApi = "google"
    model_prefixes = ("gemini-",)
    relay_transport: RelayTransport = "tcp"
    binary = BinaryInfo(
        npm_package="@google/gemini-cli",
        version="0.61.0",
        command="node_modules/.bin/gemini",
        requires_node=True,
    )

    def build(self, spec: AgentSpec) -> Invocation:
        argv = [
            spec.executable or "gemini",
            # One word: as "-p PROMPT", a prompt starting with "-" is taken for options.
            f"--prompt={spec.prompt}",
            "-o",
            "stream-json",
            "--yolo",
            "--skip-trust",
            "-m",
            spec.model,
        ]
        if spec.resume_session_id:
            # The session UUID (from `init`); the chat is looked up under
            # ~/.gemini/tmp/<project>/chats for the cwd, so HOME and cwd must be the same.
            argv += ["--resume", spec.resume_session_id]
        env = {
            **spec.extra_env,
            "HOME": spec.home,
            "GOOGLE_GEMINI_BASE_URL": spec.relay_base_url,
            "GEMINI_API_KEY": spec.relay_token,
            "GEMINI_CLI_TRUST_WORKSPACE": "true",
            # One Node, not two (see the module docstring).
            "GEMINI_CLI_NO_RELAUNCH": "true",
        }
        gemini_dir = f"{spec.home.rstrip('/')}/.gemini"
        files = {f"{gemini_dir}/settings.json": settings_json(spec).encode()}
        if spec.system_prompt:
            files[f"{gemini_dir}/GEMINI.md"] = spec.system_prompt.encode()
        node_options: tuple[str, ...] = ()
        if spec.memory_bytes:
            node_options = (f"--max-old-space-size={max(spec.memory_bytes // 2 // _MIB, 64)}",)
        return Invocation(
            argv=argv, env=env, cwd=spec.workdir, files=files, node_options=node_options
        )

    def new_translator(self) -> GeminiCliTranslator:
        return GeminiCliTranslator()


def settings_json(spec: AgentSpec) -> str:
    """``~/.gemini/settings.json``: API-key auth, no telemetry, no retries, optional turn limit.

    The CLI retries a failed model call up to 10 times with backoff by default (minutes on a
    500); the relay and the run lifecycle own retries, so it makes one attempt.
    """
    settings: dict[str, Any] = {
        "security": {"auth": {"selectedType": "gemini-api-key"}},
        "telemetry": {"enabled": False},
        "privacy": {"usageStatisticsEnabled": False},
        "general": {"maxAttempts": 1},
    }
    if spec.max_turns is not None:
        settings["model"] = {"maxSessionTurns": spec.max_turns}
    return json.dumps(settings, indent=2) + "\n"


class GeminiCliTranslator(TranslatorBase):
    """Translates Gemini CLI stream-json lines."""

    cli_name = "Gemini CLI"

    def __init__(self) -> None:
        super().__init__()
        self._blocks = BlockJoiner()
        # Text between two tool events forms one block; the counter names the block.
        self._segment = 0
        self._segment_text: list[str] = []
        self._last_segment: str | None = None
        self._errors: list[str] = []

    def feed(self, line: str) -> list[Event]:
        data = parse_json_line(line)
        if data is None:
            return []
        kind = data.get("type")
        if kind == "init":
            session_id = as_str(data.get("session_id"))
            model = as_str(data.get("model")) or None
            return [SessionStarted(session_id, model)] if session_id else []
        if kind == "message":
            content = as_str(data.get("content"))
            if data.get("role") != "assistant" or not content:
                return []
            self._segment_text.append(content)
            return [self._blocks.text(self._segment, content)]
        if kind == "tool_use":
            self._next_segment()
            parameters = data.get("parameters")
            args = parameters if isinstance(parameters, dict) else {}
            tool_id = as_str(data.get("tool_id"))
            name = as_str(data.get("tool_name"))
            return [ToolCall(tool_id, name, args, summarize_input(args, _SUMMARY_KEYS))]
        if kind == "tool_result":
            self._next_segment()
            return [self._tool_result(data)]
        if kind == "error":
            message = as_str(data.get("message")) or "unknown error"
            if data.get("severity") == "warning":
                return [Notice(message)]
            self.last_error = message
            self._errors.append(message)
            return [_error(message)]
        if kind == "result":
            return self._result(data)
        return []

    def exit_hint(self, exit_code: int) -> str:
        return _EXIT_HINTS.get(exit_code, "")

    def _next_segment(self) -> None:
        if self._segment_text:
            self._last_segment = "".join(self._segment_text)
            self._segment_text = []
        self._segment += 1

    def _tool_result(self, data: Mapping[str, Any]) -> ToolResult:
        tool_id = as_str(data.get("tool_id"))
        output = as_str(data.get("output"))
        error = data.get("error")
        if isinstance(error, dict) and not output:
            output = as_str(error.get("message"))
        is_error = data.get("status") != "success"
        return ToolResult(tool_id, clip(output), is_error)

    def _result(self, data: Mapping[str, Any]) -> list[Event]:
        self._next_segment()
        events: list[Event] = []
        stats = data.get("stats")
        if isinstance(stats, dict):
            events.append(
                Usage(
                    input_tokens=as_int(stats.get("input_tokens")),
                    output_tokens=as_int(stats.get("output_tokens")),
                    cache_read_tokens=as_int(stats.get("cached")),
                )
            )
        if data.get("status") == "success":
            self.finished = Finished(True, "success", self._last_segment)
            return [*events, self.finished]
        error = data.get("error")
        message = as_str(error.get("message")) if isinstance(error, dict) else ""
        error_event = _error(message or self.last_error or "Gemini CLI reported an error")
        if error_event.message not in self._errors:
            events.append(error_event)
        self.finished = Finished(False, error_event.code)
        return [*events, self.finished]


def _error(message: str) -> AgentError:
    status = http_status_in(message)
    return AgentError(message, "api_error" if status is not None else "agent_error", status)
