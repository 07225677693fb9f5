"""Presets: named runbook configurations that chat UIs pick as models (``jetty/NAME``).

A chat UI cannot send a nested ``jetty`` block with each message, so the server's config
names them instead::

    [presets.data-science]
    description = "Analyses a CSV in Python"
    model = "claude-sonnet-4-6"
    runbook_file = "runbooks/data-science.md"   # or: runbook = "…markdown…"
    jetty = { collection = "acme", task = "chat", image = "…", timeout_sec = 1200 }
    warm = 2                                     # sandboxes started ahead (default 0)

Choosing ``jetty/data-science`` runs the preset with the conversation as the instruction; a
request's own ``jetty`` fields override the preset's. A preset belongs to its collection
(``default`` when it names none): keys only see presets of their collections.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from proxy.chatui.retrieval import message_text, without_retrieval
from proxy.errors import ProxyError
from proxy.jetty import parse_jetty_block

PRESET_PREFIX = "jetty/"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Preset(BaseModel):
    """One preset from the config file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    model: str
    runbook: str | None = None
    runbook_file: Path | None = None
    background_model: str | None = Field(
        default=None,
        description="model for chat-UI housekeeping requests (titles, tags); default: model",
    )
    jetty: dict[str, Any] = Field(default_factory=dict)
    warm: int = Field(
        default=0,
        ge=0,
        le=64,
        description="sandboxes kept started for this preset's runs (where the backend can)",
    )

    @model_validator(mode="after")
    def _check(self) -> Preset:
        if self.runbook is not None and self.runbook_file is not None:
            raise ValueError("give runbook or runbook_file, not both")
        block = {**self.jetty, "runbook": True}
        try:
            parse_jetty_block(block)
        except ProxyError as exc:
            raise ValueError(f"invalid jetty block: {exc.message}") from exc
        return self

    @property
    def collection(self) -> str:
        return str(self.jetty.get("collection") or "default")

    def runbook_text(self) -> str:
        """The runbook (read from ``runbook_file`` each time, so edits need no restart)."""
        if self.runbook_file is not None:
            return self.runbook_file.read_text(encoding="utf-8")
        return self.runbook or ""


def check_preset_names(presets: dict[str, Preset]) -> dict[str, Preset]:
    for name in presets:
        if not _NAME.match(name):
            raise ValueError(f"invalid preset name {name!r} (letters, digits, '.', '_', '-')")
    return presets


def preset_name(model: str) -> str | None:
    """``data-science`` for the model id ``jetty/data-science``; None for other models."""
    return model[len(PRESET_PREFIX) :] if model.startswith(PRESET_PREFIX) else None


def preset_request(
    preset: Preset, messages: list[Any], jetty: dict[str, Any] | None
) -> tuple[list[Any], dict[str, Any]]:
    """The messages and jetty block a preset turns a chat UI request into.

    The preset's runbook becomes the system message unless the conversation brings its own
    (a system message that holds only Open WebUI's retrieval context, as ``RAG_SYSTEM_CONTEXT``
    sends it, is not one); the request's ``jetty`` fields win over the preset's.
    """
    block = {**preset.jetty, **(jetty or {}), "runbook": True}
    has_system = any(
        isinstance(m, dict)
        and m.get("role") in ("system", "developer")
        and without_retrieval(message_text(m.get("content"))).strip()
        for m in messages
    )
    runbook = preset.runbook_text()
    if has_system or not runbook:
        return messages, block
    return [{"role": "system", "content": runbook}, *messages], block


def model_entries(presets: dict[str, Preset], visible: Any) -> list[dict[str, Any]]:
    """``/v1/models`` entries for the presets ``visible(collection)`` allows."""
    return [
        {
            "id": f"{PRESET_PREFIX}{name}",
            "object": "model",
            "created": 0,
            "owned_by": "jetty-proxy",
        }
        for name, preset in sorted(presets.items())
        if visible(preset.collection)
    ]
