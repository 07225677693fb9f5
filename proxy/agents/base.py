"""What every agent adapter provides, and the small helpers their translators share.

An adapter knows one coding-agent CLI: how to start it headless (``build``) and how to read what
it prints (``new_translator``). It performs no I/O; the run lifecycle launches the
``Invocation`` in a sandbox and feeds each stdout line to the translator::

    adapter = get_adapter("codex")
    invocation = adapter.build(spec)        # argv, env, config files to write first
    translator = adapter.new_translator()
    for line in stdout_lines:
        events.extend(translator.feed(line))
    events.extend(translator.finish(exit_code))

Translators are lenient: blank lines, non-JSON lines and event types they do not know are
skipped, never raised. ``finish`` always leaves the run with exactly one ``Finished`` event.
"""

from __future__ import annotations

import json
import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeAlias, runtime_checkable

from proxy.events import AgentError, Event, Finished, ReasoningDelta, TextDelta

RelayTransport: TypeAlias = Literal["unix", "tcp"]
# The model API an agent speaks, named after the relay route that serves it: Anthropic
# Messages, OpenAI's Responses API, the Gemini API.
RelayApi: TypeAlias = Literal["anthropic", "openai", "google"]

# Tool outputs are kept in the event log; past this size they are clipped there (the renderer
# shortens them much further for display).
MAX_TOOL_OUTPUT_CHARS = 16_000


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """What to run: the instruction, the model, and where the CLI finds its model endpoint.

    ``relay_base_url`` is the root URL of the model relay for this run. Each CLI appends its own
    API path to it (``/v1/messages``, ``/v1/responses``, ``/v1beta/models/...``).
    ``relay_token`` is the per-run credential; adapters put it wherever their CLI expects an API
    key. ``home`` is the CLI's home directory (its config and session files live there; resuming
    a session needs the same ``home`` and ``workdir``). ``executable`` overrides the command
    name in ``argv[0]``, e.g. with a path inside an npm install prefix (see ``BinaryInfo``).
    ``extra_env`` is added to the environment but cannot override what the adapter sets.
    ``relay_socket`` is a unix socket path inside the sandbox that carries the relay traffic
    (the base URL's host is then only a header), for CLIs that can dial one. ``memory_bytes``
    is the sandbox's memory limit (None: none), for CLIs that size their heap by it.
    """

    prompt: str
    model: str
    relay_base_url: str
    relay_token: str
    system_prompt: str = ""
    workdir: str = "/app"
    home: str = "/app/.agent-home"
    resume_session_id: str | None = None
    max_turns: int | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)
    executable: str | None = None
    relay_socket: str | None = None
    memory_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class Invocation:
    """How to start the CLI: run ``argv`` in ``cwd`` with exactly ``env``, stdin closed.

    ``files`` maps absolute paths inside the sandbox to contents that must be written (parent
    directories created) before the process starts. Stdin must be closed or empty: Codex reads
    it when it is open and can hang. ``node_options`` go to the Node runtime of a CLI that is a
    Node script (before the script on its command line).
    """

    argv: list[str]
    env: dict[str, str]
    cwd: str
    files: dict[str, bytes] = field(default_factory=dict)
    node_options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BinaryInfo:
    """Where an installer gets the CLI: an npm package and the command it installs.

    ``command`` is relative to the npm install prefix (``npm install --prefix PREFIX``).
    ``version`` is the release the translators were checked against; pin it, because npm
    resolves different versions from day to day. ``requires_node`` says whether the command is a
    Node script (it then needs Node >= 20 on PATH) rather than a bundled native binary.
    """

    npm_package: str
    version: str
    command: str
    requires_node: bool = False


class Translator(Protocol):
    """Turns one CLI process's stdout, line by line, into events. Pure; one per process."""

    def feed(self, line: str) -> list[Event]:
        """Translate one output line (with or without its newline)."""
        ...

    def finish(self, exit_code: int) -> list[Event]:
        """Close the stream after the process exited; emits ``Finished`` if none was seen."""
        ...


class AgentAdapter(Protocol):
    """One coding-agent CLI."""

    @property
    def name(self) -> str:
        """The agent name used in requests, e.g. ``claude-code``."""
        ...

    @property
    def relay_api(self) -> RelayApi:
        """The model API the CLI speaks; it decides which providers can serve its runs
        (`proxy.jetty.plan.API_PROVIDERS`) and the relay route its calls take."""
        ...

    @property
    def model_prefixes(self) -> tuple[str, ...]:
        """Model id prefixes (``claude-``) that choose this agent when a request names none."""
        ...

    @property
    def relay_transport(self) -> RelayTransport:
        """How the CLI can reach the relay: ``unix`` (it dials ``AgentSpec.relay_socket``
        itself) or ``tcp`` (it only takes a URL, so the sandbox needs a loopback forwarder)."""
        ...

    @property
    def binary(self) -> BinaryInfo:
        """The npm package that provides the CLI."""
        ...

    def build(self, spec: AgentSpec) -> Invocation:
        """Command line, environment and config files for one headless run."""
        ...

    def new_translator(self) -> Translator:
        """A fresh translator for one process's output."""
        ...


@dataclass(frozen=True, slots=True)
class Handover:
    """What a run hands a CLI that was started ahead of it (`StandbyAgent.standby`): ``files``
    (absolute paths) written first, then ``stdin``, after which its input ends."""

    stdin: bytes
    files: dict[str, bytes] = field(default_factory=dict)


@runtime_checkable
class StandbyAgent(Protocol):
    """An adapter whose CLI can start before its run: it loads, then waits on its stdin for the
    run's instruction. A warm sandbox starts it with nothing of any run (``standby``), and the
    run that claims the sandbox hands it the rest (``handover``)::

        invocation = adapter.standby(spec)     # spec without its prompt: started ahead
        ...
        if adapter.standby(run_spec) == invocation:   # the run asks for what was started
            handover = adapter.handover(run_spec)     # its instruction, system prompt
    """

    def standby(self, spec: AgentSpec) -> Invocation | None:
        """How to start the CLI for the runs of ``spec`` before one asks: like `build`, but
        from the parts of ``spec`` that are not the run's own (never its ``prompt`` or
        ``system_prompt``), reading the rest from stdin. None where ``spec`` asks for what a
        CLI started ahead cannot take (a session to resume, say): such runs start it anew."""
        ...

    def handover(self, spec: AgentSpec) -> Handover:
        """What the run of ``spec`` gives the CLI started by ``standby(spec)``."""
        ...


def parse_json_line(line: str) -> dict[str, Any] | None:
    """The JSON object on ``line``, or None for blank, non-JSON or non-object lines."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def as_str(value: object) -> str:
    """``value`` if it is a string, else ""; CLI fields are not always what they claim."""
    return value if isinstance(value, str) else ""


def as_int(value: object) -> int:
    """``value`` as a non-negative token count; anything else counts as 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return max(int(value), 0)


def clip(text: str, limit: int = MAX_TOOL_OUTPUT_CHARS) -> str:
    """``text`` shortened to about ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n… [{len(text) - limit} more characters]"


def summarize_input(tool_input: Mapping[str, Any], keys: tuple[str, ...]) -> str:
    """A one-line summary of a tool's arguments: the first of ``keys`` that holds a string.

    Falls back to compact JSON of the whole input, cut at 200 characters.
    """
    for key in keys:
        value = tool_input.get(key)
        if isinstance(value, str) and value:
            return value.splitlines()[0] if "\n" in value else value
    if not tool_input:
        return ""
    text = json.dumps(tool_input, ensure_ascii=False, separators=(",", ":"), default=str)
    return text if len(text) <= 200 else text[:199] + "…"


_STATUS_PATTERNS = (
    re.compile(r"\bstatus:? (\d{3})\b"),
    re.compile(r'"code"\s*:\s*(\d{3})\b'),
    re.compile(r"\bAPI Error:? (\d{3})\b"),
)


def http_status_in(message: str) -> int | None:
    """The HTTP status an error message mentions (``unexpected status 401``, ``"code":400``)."""
    for pattern in _STATUS_PATTERNS:
        match = pattern.search(message)
        if match:
            status = int(match.group(1))
            if 400 <= status <= 599:
                return status
    return None


class BlockJoiner:
    """Separates consecutive blocks of text with a blank line.

    CLIs report an answer as several blocks (one per message, or split by tool calls); plain
    concatenation would glue "...the file now.Done: ..." together. Pass the same ``block`` key
    for every piece of one block; the first piece of each later block gets a ``"\\n\\n"`` prefix.
    Text and reasoning are tracked separately.
    """

    def __init__(self) -> None:
        self._last_text: Hashable | None = None
        self._last_reasoning: Hashable | None = None

    def text(self, block: Hashable, text: str) -> TextDelta:
        prefix = "\n\n" if self._last_text is not None and self._last_text != block else ""
        self._last_text = block
        return TextDelta(prefix + text)

    def reasoning(self, block: Hashable, text: str) -> ReasoningDelta:
        last = self._last_reasoning
        prefix = "\n\n" if last is not None and last != block else ""
        self._last_reasoning = block
        return ReasoningDelta(prefix + text)


class TranslatorBase:
    """Shared ``finish`` logic: a process that never reported a result did not succeed."""

    cli_name = "agent"

    def __init__(self) -> None:
        self.finished: Finished | None = None
        self.last_error: str | None = None

    def finish(self, exit_code: int) -> list[Event]:
        if self.finished is not None:
            # The CLI's own verdict stands; a late non-zero exit is the run lifecycle's to log.
            return []
        if exit_code == 0:
            code, message = "incomplete", f"{self.cli_name} exited without reporting a result"
        elif exit_code < 0:
            code, message = "crash", f"{self.cli_name} was killed by signal {-exit_code}"
        else:
            code, message = "crash", f"{self.cli_name} exited with code {exit_code}"
            hint = self.exit_hint(exit_code)
            if hint:
                message += f" ({hint})"
        if self.last_error:
            message += f": {self.last_error}"
        self.finished = Finished(ok=False, reason=code)
        return [AgentError(message, code, http_status_in(self.last_error or "")), self.finished]

    def exit_hint(self, exit_code: int) -> str:
        """A known meaning of a CLI exit code, or ""."""
        return ""
