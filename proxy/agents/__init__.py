"""Agent adapters: one per coding-agent CLI, chosen by name.

``get_adapter(name)`` returns the adapter for ``claude-code``, ``codex`` or ``gemini-cli``;
``infer_agent(model)`` picks the name from a model id when a request does not say.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from proxy.agents.base import AgentAdapter, AgentSpec, BinaryInfo, Invocation, Translator
from proxy.agents.claude_code import ClaudeCodeAdapter
from proxy.agents.codex import CodexAdapter
from proxy.agents.gemini_cli import GeminiCliAdapter

__all__ = [
    "DEFAULT_AGENT",
    "AgentAdapter",
    "AgentSpec",
    "BinaryInfo",
    "Invocation",
    "Translator",
    "UnknownAgentError",
    "agent_names",
    "get_adapter",
    "infer_agent",
]

DEFAULT_AGENT = "claude-code"

_ADAPTERS: Mapping[str, Callable[[], AgentAdapter]] = MappingProxyType(
    {
        "claude-code": ClaudeCodeAdapter,
        "codex": CodexAdapter,
        "gemini-cli": GeminiCliAdapter,
    }
)

# Model id prefixes -> agent, checked in order.
_MODEL_PREFIXES = (
    ("claude-", "claude-code"),
    ("gpt-", "codex"),
    ("o3-", "codex"),
    ("o4-", "codex"),
    ("codex-", "codex"),
    ("gemini-", "gemini-cli"),
)


class UnknownAgentError(LookupError):
    """No adapter has this name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown agent {name!r}; known agents: {', '.join(agent_names())}")
        self.name = name


def agent_names() -> tuple[str, ...]:
    """Names ``get_adapter`` accepts."""
    return tuple(_ADAPTERS)


def get_adapter(name: str) -> AgentAdapter:
    """The adapter for ``name``; raises ``UnknownAgentError`` for any other name."""
    factory = _ADAPTERS.get(name)
    if factory is None:
        raise UnknownAgentError(name)
    return factory()


def infer_agent(model: str) -> str:
    """The agent that runs ``model``: ``claude-*`` → claude-code, ``gpt-*``/``o3*``/``o4*``/
    ``codex-*`` → codex, ``gemini-*`` → gemini-cli, anything else → claude-code.

    A provider prefix such as ``openai/`` is ignored, and case does not matter.
    """
    bare = model.strip().lower().rsplit("/", 1)[-1]
    for prefix, agent in _MODEL_PREFIXES:
        if bare.startswith(prefix) or bare == prefix.rstrip("-"):
            return agent
    return DEFAULT_AGENT
