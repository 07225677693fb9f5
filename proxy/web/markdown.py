"""Markdown from a run (its answer, a result file) as HTML that cannot run anything.

markdown-it-py with raw HTML off, so ``<script>`` or ``<img onerror>`` in the text come out as
text. Links keep only ``http``, ``https`` and ``mailto`` targets and relative ones (the
run's own result links), and never send a referrer. Images become plain links: an agent's
answer must not make the reader's browser fetch from anywhere (the pages' CSP would refuse it
anyway), and inline ``data:`` images stay out too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict
from markupsafe import Markup, escape

_SAFE_SCHEME = re.compile(r"^(?:https?:|mailto:)", re.IGNORECASE)
_ANY_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def safe_link(url: str) -> bool:
    """Whether ``url`` may be a link target: a safe scheme, or no scheme (a relative URL)."""
    url = url.strip()
    if url.startswith("//"):
        return False
    return bool(_SAFE_SCHEME.match(url)) or not _ANY_SCHEME.match(url)


class SafeMarkdown:
    """Renders untrusted Markdown (CommonMark with tables and strikethrough)."""

    def __init__(self) -> None:
        md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
        md.enable(["table", "strikethrough"])
        md.validateLink = safe_link  # type: ignore[method-assign]
        md.add_render_rule("link_open", _link_open)
        md.add_render_rule("image", _image_as_link)
        self._md = md

    def render(self, text: str) -> Markup:
        return Markup(self._md.render(text))  # noqa: S704 - markdown-it escaped it: html is off


def _link_open(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    tokens[idx].attrSet("rel", "noopener noreferrer nofollow")
    return self.renderToken(tokens, idx, options, env)


def _image_as_link(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: Any
) -> str:
    token = tokens[idx]
    src = str(token.attrGet("src") or "")
    alt = self.renderInlineAsText(token.children or [], options, env) or src
    if not safe_link(src) or src.lower().startswith("data:"):
        return str(escape(f"[image: {alt}]"))
    return (
        f'<a href="{escape(src)}" rel="noopener noreferrer nofollow">'
        f"{escape(f'[image: {alt}]')}</a>"
    )
