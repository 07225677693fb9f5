"""Codex (``codex exec --json``).

Codex ignores ``OPENAI_BASE_URL``; the relay is configured as a custom model provider in
``$CODEX_HOME/config.toml`` speaking the Responses API, with Codex's own retries turned off (the
relay and the run lifecycle own retries). The runbook goes in ``$CODEX_HOME/AGENTS.md``, which
Codex reads as global instructions ahead of any project ``AGENTS.md``. Codex has no turn limit
flag, so ``AgentSpec.max_turns`` is not applied. A follow-up turn runs ``codex exec [options]
resume -- THREAD_ID PROMPT``; the thread's rollout lives under ``$CODEX_HOME/sessions`` (an
unknown id fails with "no rollout found").

Stream quirks the translator handles:

* Messages and reasoning arrive whole (no token deltas), one item each.
* A top-level ``error`` line is not always fatal: ``Reconnecting... n/m`` lines are transport
  retries after which the turn may still succeed, so they become warnings. Any other ``error`` is
  held back one line: it is usually repeated verbatim by the ``turn.failed`` that follows, and is
  reported once.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from typing import Any

from proxy.agents.base import (
    AgentSpec,
    BinaryInfo,
    BlockJoiner,
    Handover,
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

# Environment variable the generated provider config reads the relay token from.
TOKEN_ENV = "JETTY_RELAY_API_KEY"
PROVIDER_ID = "jetty"


class CodexAdapter:
    """Adapter for OpenAI's Codex CLI."""

    name = "codex"
    relay_api: RelayApi = "openai"
    model_prefixes = ("gpt-", "o3-", "o4-", "codex-")
    relay_transport: RelayTransport = "tcp"
    binary = BinaryInfo(
        npm_package="@openai/codex",
        version="0.169.0",
        command="node_modules/.bin/codex",
    )

    def build(self, spec: AgentSpec) -> Invocation:
        argv = self._argv(spec)
        # Options go before the subcommand; "--" ends them, so a prompt starting with "-"
        # ("- first item…") is still a prompt.
        if spec.resume_session_id:
            argv += ["resume", "--", spec.resume_session_id, spec.prompt]
        else:
            argv += ["--", spec.prompt]
        files = {self._config_path(spec): config_toml(spec).encode()}
        files.update(self.handover(spec).files)
        return Invocation(argv=argv, env=self._env(spec), cwd=spec.workdir, files=files)

    def standby(self, spec: AgentSpec) -> Invocation | None:
        """``codex exec … -``: the prompt comes from stdin, read to its end before Codex sets
        up its session (and reads ``AGENTS.md``); its configuration is read at start."""
        if spec.resume_session_id:
            return None
        files = {self._config_path(spec): config_toml(spec).encode()}
        argv = [*self._argv(spec), "-"]
        return Invocation(argv=argv, env=self._env(spec), cwd=spec.workdir, files=files)

    def handover(self, spec: AgentSpec) -> Handover:
        files = {}
        if spec.system_prompt:
            files[f"{_codex_home(spec)}/AGENTS.md"] = spec.system_prompt.encode()
        return Handover(spec.prompt.encode(), files)

    def _argv(self, spec: AgentSpec) -> list[str]:
        return [
            spec.executable or "codex",
            "exec",
            "--json",
            "--skip-git-repo-check",
            # The sandbox is the container; Codex's own sandbox cannot work inside one.
            "--dangerously-bypass-approvals-and-sandbox",
            "-m",
            spec.model,
        ]

    def _env(self, spec: AgentSpec) -> dict[str, str]:
        return {
            **spec.extra_env,
            "HOME": spec.home,
            "CODEX_HOME": _codex_home(spec),
            TOKEN_ENV: spec.relay_token,
        }

    def _config_path(self, spec: AgentSpec) -> str:
        return f"{_codex_home(spec)}/config.toml"

    def new_translator(self) -> CodexTranslator:
        return CodexTranslator()


def _codex_home(spec: AgentSpec) -> str:
    return f"{spec.home.rstrip('/')}/.codex"


def config_toml(spec: AgentSpec) -> str:
    """``config.toml`` pointing Codex at the relay (``{relay_base_url}/v1/responses``)."""
    base_url = spec.relay_base_url.rstrip("/") + "/v1"
    lines = [
        f"model = {_toml_string(spec.model)}",
        f"model_provider = {_toml_string(PROVIDER_ID)}",
        "",
        f"[model_providers.{PROVIDER_ID}]",
        'name = "Jetty relay"',
        f"base_url = {_toml_string(base_url)}",
        f"env_key = {_toml_string(TOKEN_ENV)}",
        'wire_api = "responses"',
        "request_max_retries = 0",
        "stream_max_retries = 0",
        "",
        # Off the network beyond the relay: a plugin sync, connectors and analytics would each
        # look up a host a sandbox cannot reach, holding the CLI's exit for about 5 s.
        "[analytics]",
        "enabled = false",
        "",
        "[features]",
        "plugins = false",
        "remote_plugin = false",
        "apps = false",
    ]
    return "\n".join(lines) + "\n"


def _toml_string(value: str) -> str:
    # A JSON string is a valid TOML basic string once DEL, which TOML requires escaped, is.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


class CodexTranslator(TranslatorBase):
    """Translates ``codex exec --json`` lines."""

    cli_name = "Codex"

    def __init__(self) -> None:
        super().__init__()
        self._blocks = BlockJoiner()
        self._turns = 0
        self._last_message: str | None = None
        self._pending_error: str | None = None
        self._tool_ids: set[str] = set()
        self._plans: dict[str, str] = {}

    def feed(self, line: str) -> list[Event]:
        data = parse_json_line(line)
        if data is None:
            return []
        kind = data.get("type")
        events: list[Event] = []
        pending, self._pending_error = self._pending_error, None
        if pending is not None and not _repeats(data, pending):
            events.append(AgentError(pending, _error_code(pending), http_status_in(pending)))
        if kind == "thread.started":
            thread_id = as_str(data.get("thread_id"))
            if thread_id:
                events.append(SessionStarted(thread_id))
        elif kind == "turn.started":
            self._turns += 1
        elif kind in ("item.started", "item.updated", "item.completed"):
            item = data.get("item")
            if isinstance(item, dict):
                events += self._item(kind.removeprefix("item."), item)
        elif kind == "turn.completed":
            events += self._turn_completed(data)
        elif kind == "turn.failed":
            error = data.get("error")
            message = as_str(error.get("message")) if isinstance(error, dict) else ""
            message = message or pending or "turn failed"
            code = _error_code(message)
            self.finished = Finished(False, code, None, self._turns or None)
            events += [AgentError(message, code, http_status_in(message)), self.finished]
        elif kind == "error":
            message = as_str(data.get("message"))
            if message.startswith("Reconnecting"):
                events.append(Notice(message))
            elif message:
                self._pending_error = self.last_error = message
        return events

    def finish(self, exit_code: int) -> list[Event]:
        # A held-back error with nothing after it is explained by finish() itself.
        self._pending_error = None
        return super().finish(exit_code)

    def _turn_completed(self, data: Mapping[str, Any]) -> list[Event]:
        events: list[Event] = []
        usage = data.get("usage")
        if isinstance(usage, dict):
            events.append(
                Usage(
                    input_tokens=as_int(usage.get("input_tokens")),
                    output_tokens=as_int(usage.get("output_tokens")),
                    cache_read_tokens=as_int(usage.get("cached_input_tokens")),
                    cache_write_tokens=as_int(usage.get("cache_write_input_tokens")),
                    reasoning_tokens=as_int(usage.get("reasoning_output_tokens")),
                )
            )
        self.finished = Finished(True, "success", self._last_message, self._turns or None)
        events.append(self.finished)
        return events

    def _item(self, phase: str, item: Mapping[str, Any]) -> list[Event]:
        item_id = as_str(item.get("id"))
        kind = item.get("type")
        if kind == "agent_message" and phase == "completed":
            text = as_str(item.get("text"))
            self._last_message = text
            return [self._blocks.text(item_id, text)] if text else []
        if kind == "reasoning" and phase == "completed":
            text = as_str(item.get("text"))
            return [self._blocks.reasoning(item_id, text)] if text else []
        if kind == "todo_list":
            return self._plan(item_id, item)
        if kind == "error":
            message = as_str(item.get("message"))
            return [Notice(message)] if message else []
        tool = _tool(item)
        if tool is None:
            return []
        events: list[Event] = []
        if item_id not in self._tool_ids:
            self._tool_ids.add(item_id)
            events.append(ToolCall(item_id, *tool))
        if phase == "completed":
            events.append(_tool_result(item_id, item))
        return events

    def _plan(self, item_id: str, item: Mapping[str, Any]) -> list[Event]:
        entries = item.get("items")
        if not isinstance(entries, list):
            return []
        lines = ["Plan:"]
        for entry in entries:
            if isinstance(entry, dict):
                mark = "x" if entry.get("completed") is True else " "
                lines.append(f"- [{mark}] {as_str(entry.get('text'))}")
        text = "\n".join(lines)
        if self._plans.get(item_id) == text:
            return []
        # Each revision is its own block, so it starts on a fresh paragraph.
        revision = len(self._plans)
        self._plans[item_id] = text
        return [self._blocks.reasoning((item_id, revision), text)]


def _repeats(data: Mapping[str, Any], message: str) -> bool:
    error = data.get("error")
    return (
        data.get("type") == "turn.failed"
        and isinstance(error, dict)
        and error.get("message") in (message, None, "")
    )


def _error_code(message: str) -> str:
    return "api_error" if http_status_in(message) is not None else "turn_failed"


def _tool(item: Mapping[str, Any]) -> tuple[str, dict[str, Any], str] | None:
    """(name, input, summary) for items that are tool activity, else None."""
    kind = item.get("type")
    if kind == "command_execution":
        command = as_str(item.get("command"))
        return "shell", {"command": command}, _unwrap_shell(command)
    if kind == "file_change":
        changes = _changes(item)
        return "file_change", {"changes": changes}, ", ".join(changes)
    if kind == "mcp_tool_call":
        arguments = item.get("arguments")
        args = arguments if isinstance(arguments, dict) else {}
        name = f"{as_str(item.get('server'))}.{as_str(item.get('tool'))}".strip(".")
        return name or "mcp", args, summarize_input(args, ("command", "path", "query", "url"))
    if kind == "web_search":
        query = as_str(item.get("query"))
        return "web_search", {"query": query}, query
    return None


def _tool_result(item_id: str, item: Mapping[str, Any]) -> ToolResult:
    kind = item.get("type")
    failed = item.get("status") in ("failed", "declined")
    if kind == "command_execution":
        code = item.get("exit_code")
        exit_code = code if isinstance(code, int) else None
        output = clip(as_str(item.get("aggregated_output")))
        return ToolResult(item_id, output, failed or bool(exit_code), exit_code)
    if kind == "file_change":
        return ToolResult(item_id, "\n".join(_changes(item)), failed)
    if kind == "mcp_tool_call":
        error = item.get("error")
        if isinstance(error, dict) and error.get("message"):
            return ToolResult(item_id, clip(as_str(error.get("message"))), True)
        return ToolResult(item_id, clip(_mcp_output(item.get("result"))), failed)
    return ToolResult(item_id, "", failed)


def _changes(item: Mapping[str, Any]) -> list[str]:
    changes = item.get("changes")
    if not isinstance(changes, list):
        return []
    return [
        f"{as_str(c.get('kind')) or 'change'} {as_str(c.get('path'))}"
        for c in changes
        if isinstance(c, dict)
    ]


def _mcp_output(result: object) -> str:
    if not isinstance(result, dict):
        return ""
    content = result.get("content")
    if isinstance(content, list):
        texts = [as_str(b.get("text")) for b in content if isinstance(b, dict)]
        return "\n".join(t for t in texts if t)
    structured = result.get("structured_content")
    return json.dumps(structured, ensure_ascii=False) if structured is not None else ""


def _unwrap_shell(command: str) -> str:
    """``echo hi`` for ``/bin/bash -lc 'echo hi'``: Codex wraps every command in a login shell."""
    try:
        words = shlex.split(command)
    except ValueError:
        return command
    shells = ("bash", "sh", "zsh")
    if len(words) == 3 and words[0].rsplit("/", 1)[-1] in shells and words[1] in ("-lc", "-c"):
        return words[2]
    return command
