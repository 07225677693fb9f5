"""Telling a chat UI's housekeeping calls (titles, tags, follow-ups…) from a person's turn.

Chat UIs ask the model selected in a chat for small chores: a title, tags, follow-up
suggestions, search queries, autocompletion, an emoji. For a preset those must not start a
sandbox; they go to the preset's ``background_model``. Getting it wrong the other way is
worse: a real turn taken for a chore is answered by the wrong model, and no run happens.

So a request counts as housekeeping only on positive evidence:

* Open WebUI's ``X-OpenWebUI-Task`` header (older releases send it; a reverse proxy may
  drop it, and 0.12 sends none), or
* a short, fresh message list (one or two messages: chores never carry a conversation)
  whose prompt has the shape of one of the chat UIs' chore templates:

  - Open WebUI's task prompts start with ``### Task:`` and quote the conversation in a
    ``<chat_history>`` block (title, tags, follow-ups, search queries, autocompletion, image
    prompts); its emoji prompt and its tool-selection system prompt have fixed openings;
  - LibreChat's title prompts (the agents framework's ``completion`` and structured ones,
    and the legacy ``||>Title:`` form, sent as a system message).

Open WebUI's retrieval template also starts with ``### Task:``, but it wraps a person's turn
(a question about an attached file): a message carrying retrieval context is never a chore.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from proxy.chatui.retrieval import has_retrieval_context, message_text

BACKGROUND_HEADER = "x-openwebui-task"
# Chores are single prompts (Open WebUI's tool selection adds a system message to one).
_MAX_MESSAGES = 2

_OPEN_WEBUI_TASK = re.compile(
    r"\A\s*###\s*Task:.*?<chat_history>.*?</chat_history>", re.IGNORECASE | re.DOTALL
)
_OPENINGS = (
    # Open WebUI: DEFAULT_EMOJI_GENERATION_PROMPT_TEMPLATE.
    "Your task is to reflect the speaker's likely facial expression through a fitting emoji.",
    # LibreChat (agents framework): the default `completion` title prompt.
    "Provide a concise, 5-word-or-less title for the conversation,",
    # LibreChat (agents framework): the structured title prompt.
    "Analyze this conversation and provide:\n1. The detected language of the conversation\n"
    "2. A concise title in the detected language",
)
# Open WebUI: DEFAULT_TOOLS_FUNCTION_CALLING_PROMPT_TEMPLATE (a system message).
_TOOL_SELECTION = re.compile(
    r"\A\s*Available Tools:.*Your task is to choose and return the correct tool\(s\)", re.DOTALL
)
# LibreChat's legacy title request: "Please generate a concise, 5-word-or-less title … ||>Title:".
_LEGACY_TITLE = re.compile(
    r"\A\s*Please generate a concise, 5-word-or-less title for the conversation\b"
    r".*\|\|>Title:\s*\Z",
    re.DOTALL,
)


def is_background_request(headers: Mapping[str, str], messages: Sequence[Any]) -> bool:
    """True for a chat UI's housekeeping call; False for anything that may be a person's turn.

    ``headers`` are the request's (lower-case names, as Starlette gives them).
    """
    if headers.get(BACKGROUND_HEADER):
        return True
    if not messages or len(messages) > _MAX_MESSAGES:
        return False
    texts = [
        (message.get("role"), message_text(message.get("content")))
        for message in messages
        if isinstance(message, Mapping)
    ]
    if any(has_retrieval_context(text) for _, text in texts):
        return False
    return any(_is_chore_prompt(role, text) for role, text in texts)


def _is_chore_prompt(role: object, text: str) -> bool:
    if role == "user" and (_OPEN_WEBUI_TASK.match(text) or text.lstrip().startswith(_OPENINGS)):
        return True
    if role == "system" and _TOOL_SELECTION.match(text):
        return True
    return role in ("system", "user") and bool(_LEGACY_TITLE.match(text))
