"""The real prompt templates of Open WebUI and LibreChat (``tests/fixtures/chat-ui-prompts``),
filled in the way those UIs fill them before they send a request."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "chat-ui-prompts"
OPEN_WEBUI_TASKS = (
    "title",
    "tags",
    "follow-ups",
    "query-generation",
    "autocomplete",
    "image-prompt",
    "emoji",
)
LIBRECHAT_TITLES = ("title-completion", "title-structured", "title-legacy")

Turn = tuple[str, str]


def template(ui: str, name: str) -> str:
    return (FIXTURES / ui / f"{name}.txt").read_text(encoding="utf-8")


def open_webui_task(name: str, history: Sequence[Turn], prompt: str = "") -> str:
    """A task prompt as Open WebUI's ``routers/tasks.py`` builds it from the chat's messages
    (``{{MESSAGES:END:N}}`` is the last N messages as ``ROLE: text`` lines)."""

    def messages(match: re.Match[str]) -> str:
        count = int(match.group(1))
        return "\n".join(f"{role.upper()}: {text}" for role, text in history[-count:])

    text = re.sub(r"\{\{MESSAGES:END:(\d+)\}\}", messages, template("open-webui", name))
    last_user = next((text for role, text in reversed(history) if role == "user"), "")
    return (
        text.replace("{{CURRENT_DATE}}", "2026-12-05")
        .replace("{{TYPE}}", "General")
        .replace("{{PROMPT}}", prompt)
        .replace("{{prompt}}", prompt or last_user)
    )


def open_webui_tool_selection(tools_json: str) -> str:
    return template("open-webui", "tools-function-calling").replace("{{TOOLS}}", tools_json)


def open_webui_rag(question: str, sources: Sequence[tuple[str, str]]) -> str:
    """A user turn with an attached file, as Open WebUI's middleware sends it: the retrieval
    template with the passages as ``<source>`` tags, then a newline, then the question."""
    ids: dict[str, int] = {}
    context = ""
    for name, passage in sources:
        number = ids.setdefault(name, len(ids) + 1)
        context += f'<source id="{number}" name="{name}">{passage}</source>\n'
    rag = template("open-webui", "rag").replace("{{CONTEXT}}", context.strip())
    return f"{rag}\n{question}"


def librechat_title(name: str, user: str, answer: str) -> str:
    """A LibreChat title prompt for one exchange, with its ``{convo}`` filled the way the
    agents framework (``User: …\\nAI: …``) or the legacy client (``||>User: …``) does."""
    if name == "title-legacy":
        convo = f'||>User:\n"{user}"\n||>Response:\n"{answer}"'
    else:
        convo = f"User: {user}\nAI: {answer}"
    return template("librechat", name).replace("{convo}", convo)
