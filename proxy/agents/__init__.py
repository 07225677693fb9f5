"""Agent adapters: one per coding-agent CLI, chosen by name.

An agent is registered by one line of `ADAPTERS`: its name (``jetty.agent``) and where its
adapter class is, as ``"module:attr"``, imported when the agent is first used. Everything else
the proxy needs to know about an agent its adapter says itself (see `AgentAdapter`): the model
API it speaks, the model ids that choose it, its npm package.

``get_adapter(name)`` returns the adapter for ``claude-code``, ``codex`` or ``gemini-cli``;
``infer_agent(model)`` picks the name from a model id when a request does not say.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import MappingProxyType

from proxy.agents.base import (
    AgentAdapter,
    AgentSpec,
    BinaryInfo,
    Handover,
    Invocation,
    StandbyAgent,
    Translator,
)

__all__ = [
    "ADAPTERS",
    "DEFAULT_AGENT",
    "AgentAdapter",
    "AgentSpec",
    "BinaryInfo",
    "Handover",
    "Invocation",
    "StandbyAgent",
    "Translator",
    "UnknownAgentError",
    "agent_names",
    "get_adapter",
    "infer_agent",
]

DEFAULT_AGENT = "claude-code"

#: Every agent, by the name requests use.
ADAPTERS: Mapping[str, str] = MappingProxyType(
    {
        "claude-code": "proxy.agents.claude_code:ClaudeCodeAdapter",
        "codex": "proxy.agents.codex:CodexAdapter",
        "gemini-cli": "proxy.agents.gemini_cli:GeminiCliAdapter",
    }
)


class UnknownAgentError(LookupError):
    """No adapter has this name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown agent {name!r}; known agents: {', '.join(agent_names())}")
        self.name = name


def agent_names() -> tuple[str, ...]:
    """Names ``get_adapter`` accepts."""
    return tuple(ADAPTERS)


def get_adapter(name: str) -> AgentAdapter:
    """The adapter for ``name``; raises ``UnknownAgentError`` for any other name."""
    if name not in ADAPTERS:
        raise UnknownAgentError(name)
    module, _, attr = ADAPTERS[name].partition(":")
    adapter: AgentAdapter = getattr(importlib.import_module(module), attr)()
    return adapter


def infer_agent(model: str) -> str:
    """The agent one of whose ``model_prefixes`` starts ``model`` (``claude-*`` →
    claude-code, ``gpt-*``/``o3*``/``o4*``/``codex-*`` → codex, ``gemini-*`` → gemini-cli);
    anything else → claude-code.

    A provider prefix such as ``openai/`` is ignored, and case does not matter.
    """
    bare = model.strip().lower().rsplit("/", 1)[-1]
    for name in ADAPTERS:
        for prefix in get_adapter(name).model_prefixes:
            if bare.startswith(prefix) or bare == prefix.rstrip("-"):
                return name
    return DEFAULT_AGENT
