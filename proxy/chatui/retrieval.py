"""The user's request and its sources, out of a message wrapped in Open WebUI's retrieval template.

With a file attached (or a knowledge base, or web search), Open WebUI does not send the
file: it retrieves passages and puts its retrieval template in front of the user's message::

    ### Task:
    Respond to the user query using the provided context, …
    <context>
    <source id="1" name="sales.csv">…passage…</source>
    <source id="1" name="sales.csv">…another passage…</source>
    </context>
    <the user's own message>

(Older releases ended the template with ``<user_query>…</user_query>`` instead, and 0.5
wrapped passages as ``<source><source_id>…</source_id><source_context>…</source_context>``;
both are read too.) With ``RAG_SYSTEM_CONTEXT`` set, the same template goes into the
system message instead (appended to the one there is, else a new one), and the user's message
stays as it was. For an agent that is a wall of pasted text in front of its instruction.
:func:`split_retrieval` takes one text apart: the request, which becomes the agent's
instruction, and the sources by name, which become files the agent can open;
:func:`unwrap_retrieval` does it for a whole conversation.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_CONTEXT = re.compile(r"<context>\s*(.*?)\s*</context>", re.DOTALL)
_SOURCE = re.compile(r"<source\b([^>]*)>(.*?)</source>", re.DOTALL)
_ATTRIBUTE = re.compile(r'([A-Za-z_][\w-]*)="([^"]*)"')
_OLD_SOURCE_ID = re.compile(r"<source_id>(.*?)</source_id>", re.DOTALL)
_OLD_SOURCE_TEXT = re.compile(r"<source_context>(.*?)</source_context>", re.DOTALL)
_USER_QUERY = re.compile(r"<user_query>\s*(.*?)\s*</user_query>", re.DOTALL)
_CHAT_HISTORY = re.compile(r"<chat_history>.*?</chat_history>", re.DOTALL)
# The opening of Open WebUI's default retrieval template, where a system message's copy begins.
_TEMPLATE_OPENING = "### Task:"
_SYSTEM_ROLES = ("system", "developer")


@dataclass(frozen=True)
class Source:
    """One retrieved source: its name as the UI gave it (a file name, a URL, or ``source-N``)
    and the text retrieved from it (its passages, in order, separated by blank lines)."""

    name: str
    text: str


@dataclass(frozen=True)
class Retrieval:
    """A message taken apart: what the user asked, and what was retrieved for it."""

    request: str
    sources: tuple[Source, ...]


@dataclass(frozen=True)
class Unwrapped:
    """A conversation with the retrieval template taken out, and the sources it carried."""

    messages: list[Any]
    sources: tuple[Source, ...]


def message_text(content: object) -> str:
    """The text of a message's ``content``: a string, or its text parts joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [part.get("text") for part in content if isinstance(part, Mapping)]
        return "\n".join(part for part in parts if isinstance(part, str))
    return ""


def has_retrieval_context(text: str) -> bool:
    """True when ``text`` carries retrieved sources (a ``<context>`` block of ``<source>`` tags).

    A ``<chat_history>`` block (a housekeeping prompt quoting the conversation) does not count.
    """
    context = _CONTEXT.search(_CHAT_HISTORY.sub("", text))
    return context is not None and _SOURCE.search(context.group(1)) is not None


def split_retrieval(text: str) -> Retrieval | None:
    """The request and the sources of a retrieval-wrapped message; None for any other text.

    The request is the ``<user_query>`` of older templates, else what follows the context
    (the user's message, which Open WebUI appends after the template). It is empty when the
    template went into a system message (Open WebUI's ``RAG_SYSTEM_CONTEXT``): the user's
    message is then the request. Passages from the same source are joined into one source
    (a passage sent twice is kept once); sources keep the order in which they first appear.
    """
    if not has_retrieval_context(text):
        return None
    passages: dict[str, list[str]] = {}
    request = _take_apart(text, passages)
    return Retrieval(request=request, sources=_sources(passages))


def _take_apart(text: str, passages: dict[str, list[str]]) -> str:
    """The request in a retrieval-wrapped ``text``; its passages are added to ``passages``."""
    contexts = list(_CONTEXT.finditer(text))
    query = _USER_QUERY.search(text)
    request = query.group(1) if query is not None else text[contexts[-1].end() :].strip()
    for context in contexts:
        for number, match in enumerate(_SOURCE.finditer(context.group(1)), start=1):
            name, body = _source(match.group(1), match.group(2), number)
            kept = passages.setdefault(name, [])
            if body not in kept:
                kept.append(body)
    return request


def _sources(passages: Mapping[str, Sequence[str]]) -> tuple[Source, ...]:
    return tuple(Source(name, "\n\n".join(parts)) for name, parts in passages.items())


def _source(attributes: str, body: str, number: int) -> tuple[str, str]:
    """A ``<source>`` tag's name and text, in the current or the 0.5 form."""
    attrs = dict(_ATTRIBUTE.findall(attributes))
    old_text = _OLD_SOURCE_TEXT.search(body)
    if old_text is not None:
        old_id = _OLD_SOURCE_ID.search(body)
        name = old_id.group(1).strip() if old_id else ""
        body = old_text.group(1)
    else:
        name = attrs.get("name", "")
    if not name:
        name = f"source-{attrs.get('id') or number}"
    # Open WebUI quotes attribute values as they are; undo entities a source name may carry.
    return html.unescape(name).strip(), body.strip()


def without_retrieval(text: str) -> str:
    """``text`` with the retrieval template cut out (from its ``### Task:`` opening, or its
    ``<context>``, to the end of the context or of an older template's ``<user_query>``): what
    a system message held besides the template that ``RAG_SYSTEM_CONTEXT`` added to it. Text
    without retrieval context comes back as it is."""
    if not has_retrieval_context(text):
        return text
    contexts = list(_CONTEXT.finditer(text))
    start = text.rfind(_TEMPLATE_OPENING, 0, contexts[0].start())
    if start < 0:
        start = contexts[0].start()
    end = contexts[-1].end()
    query = _USER_QUERY.search(text, end)
    if query is not None:
        end = query.end()
    return f"{text[:start].rstrip()}\n{text[end:].lstrip()}".strip()


def unwrap_retrieval(messages: Sequence[Any]) -> Unwrapped:
    """The conversation as its user wrote it, and the sources retrieved for its latest turn.

    In the last user message, each text that carries retrieval context becomes the request in
    it (Open WebUI prepends the template to every text part of a message; the other parts stay
    where they are, so that a part's index still names what the client sent). In a system
    message (``RAG_SYSTEM_CONTEXT``), the template is cut out and whatever else it held is kept:
    often nothing, an empty system message. Other messages are kept as they are. Passages of
    one source found in several places are joined into one source.
    """
    last_user = max(
        (i for i, m in enumerate(messages) if isinstance(m, Mapping) and m.get("role") == "user"),
        default=None,
    )
    passages: dict[str, list[str]] = {}

    def unwrap(text: str, role: object) -> str:
        if not has_retrieval_context(text):
            return text
        request = _take_apart(text, passages)
        return request if role == "user" else without_retrieval(text)

    unwrapped: list[Any] = []
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, Mapping) else None
        if index == last_user or role in _SYSTEM_ROLES:
            message = {**message, "content": _map_text(message.get("content"), role, unwrap)}
        unwrapped.append(message)
    return Unwrapped(unwrapped, _sources(passages))


def _map_text(content: object, role: object, change: Callable[[str, object], str]) -> object:
    """``content`` with ``change(text, role)`` applied to its text (or to each text part)."""
    if isinstance(content, str):
        return change(content, role)
    if not isinstance(content, list):
        return content
    return [
        {**part, "text": change(part["text"], role)}
        if isinstance(part, Mapping)
        and part.get("type") == "text"
        and isinstance(part.get("text"), str)
        else part
        for part in content
    ]
