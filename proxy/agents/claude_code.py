"""Claude Code (``claude -p ... --output-format stream-json``).

The runbook goes in ``--append-system-prompt``: it keeps Claude Code's own system prompt (which
teaches the model its tools) and adds the runbook after it; ``--system-prompt`` would replace it.

A warm sandbox may start the CLI ahead of its run (``--await-claim``, see `standby`); the
run's claim then carries the runbook. Its output is read by the translator in
:mod:`proxy.agents.claude_code_stream`.
"""

from __future__ import annotations

import json
from typing import Any

from proxy.agents.base import (
    AgentSpec,
    BinaryInfo,
    Handover,
    Invocation,
    RelayApi,
    RelayTransport,
)
from proxy.agents.claude_code_stream import (
    CLAIM_REQUEST_ID,
    RETRY_DIFFERS_WARNING,
    STREAM_CUT_WARNING,
    ClaudeCodeTranslator,
)

__all__ = [
    "CLAIM_REQUEST_ID",
    "RETRY_DIFFERS_WARNING",
    "STREAM_CUT_WARNING",
    "ClaudeCodeAdapter",
    "ClaudeCodeTranslator",
]


class ClaudeCodeAdapter:
    """Adapter for Anthropic's Claude Code CLI."""

    name = "claude-code"
    relay_api: RelayApi = "anthropic"
    model_prefixes = ("claude-",)
    relay_transport: RelayTransport = "unix"
    binary = BinaryInfo(
        npm_package="@anthropic-ai/claude-code",
        version="2.1.328",
        command="node_modules/.bin/claude",
    )

    def build(self, spec: AgentSpec) -> Invocation:
        argv = self._argv(spec)
        if spec.system_prompt:
            argv += ["--append-system-prompt", spec.system_prompt]
        if spec.resume_session_id:
            argv += ["--resume", spec.resume_session_id]
        argv += self._turns(spec)
        # The prompt is a positional argument: after "--", one starting with "-" (a Markdown
        # list, say) is not taken for an option.
        argv += ["--", spec.prompt]
        return Invocation(argv=argv, env=self._env(spec), cwd=spec.workdir)

    def standby(self, spec: AgentSpec) -> Invocation | None:
        """``--await-claim``: the CLI boots (its modules, settings, tools) and waits for a
        ``claim_session`` control request on its stream-json stdin, which binds it to its
        session: working directory and system prompt (see `handover`)."""
        if spec.resume_session_id:
            return None  # a session is chosen at start; a spare starts a new one
        argv = [*self._argv(spec), "--await-claim", "--input-format", "stream-json"]
        argv += self._turns(spec)
        return Invocation(argv=argv, env=self._env(spec), cwd=spec.workdir)

    def handover(self, spec: AgentSpec) -> Handover:
        """The claim (the runbook as the appended system prompt, as ``build`` gives it) and
        the instruction as the one user message; the input then ends, so the CLI exits after
        this turn as it does with ``-p``. The claim's answer is one ``control_response``
        line on stdout, before ``system/init`` (the translator reports a refusal)."""
        claim: dict[str, Any] = {"subtype": "claim_session", "cwd": spec.workdir}
        if spec.system_prompt:
            claim["append_system_prompt"] = spec.system_prompt
        lines = [
            {"type": "control_request", "request_id": CLAIM_REQUEST_ID, "request": claim},
            {
                "type": "user",
                "message": {"role": "user", "content": spec.prompt},
                "parent_tool_use_id": None,
                "session_id": "",
            },
        ]
        return Handover(b"".join(json.dumps(line).encode() + b"\n" for line in lines))

    def _argv(self, spec: AgentSpec) -> list[str]:
        argv = [
            spec.executable or "claude",
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",  # stream-json refuses to run without it
            "--include-partial-messages",
            "--dangerously-skip-permissions",
            "--model",
            spec.model,
        ]
        return argv

    def _turns(self, spec: AgentSpec) -> list[str]:
        return [] if spec.max_turns is None else ["--max-turns", str(spec.max_turns)]

    def _env(self, spec: AgentSpec) -> dict[str, str]:
        env = {
            **spec.extra_env,
            "HOME": spec.home,
            # --dangerously-skip-permissions refuses to run as root outside a declared sandbox.
            "IS_SANDBOX": "1",
            "ANTHROPIC_BASE_URL": spec.relay_base_url,
            "ANTHROPIC_API_KEY": spec.relay_token,
            "DISABLE_TELEMETRY": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_ERROR_REPORTING": "1",
            # Fail fast on API errors; the default retries for minutes.
            "CLAUDE_CODE_MAX_RETRIES": "0",
        }
        if spec.relay_socket:
            # Claude Code dials this socket for every request; ANTHROPIC_BASE_URL must then be
            # a plain http:// URL (its host is only sent as a header).
            env["ANTHROPIC_UNIX_SOCKET"] = spec.relay_socket
        return env

    def new_translator(self) -> ClaudeCodeTranslator:
        return ClaudeCodeTranslator()
