"""Previews of a run's result files for its page: text, Markdown, CSV as a table, images.

Only what is safe to show inline is previewed. Text (HTML and SVG sources included) is
escaped by the template; Markdown goes through :class:`SafeMarkdown`; images are shown with
``<img>`` only for raster types (an SVG is active content and is previewed as its source).
Files are read up to a cap, and only so many are previewed per page.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Literal

from markupsafe import Markup

from proxy.store.blobs import BlobStore
from proxy.store.content import TEXT_APPLICATIONS
from proxy.store.records import Artifact
from proxy.web.markdown import SafeMarkdown

PREVIEW_BYTES = 256 * 1024
PREVIEW_FILES = 20
TABLE_ROWS = 200
TABLE_COLUMNS = 50
INLINE_IMAGES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
# Shown as source text: never rendered.
_TEXT_APPLICATIONS = TEXT_APPLICATIONS | {"application/xml", "image/svg+xml"}

PreviewKind = Literal["markdown", "table", "text", "image"]


@dataclass(frozen=True)
class Preview:
    kind: PreviewKind
    html: Markup | None = None
    text: str = ""
    rows: tuple[tuple[str, ...], ...] = ()
    # The file was longer than what is shown.
    shortened: bool = False


def base_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def previewable(artifact: Artifact) -> PreviewKind | None:
    kind = base_type(artifact.content_type)
    if kind in INLINE_IMAGES:
        return "image"
    if kind == "text/markdown":
        return "markdown"
    if kind == "text/csv":
        return "table"
    if kind.startswith("text/") or kind in _TEXT_APPLICATIONS:
        return "text"
    return None


async def preview(blobs: BlobStore, artifact: Artifact, markdown: SafeMarkdown) -> Preview | None:
    """The preview of one result file, or None when it has none."""
    kind = previewable(artifact)
    if kind is None:
        return None
    if kind == "image":
        return Preview("image")
    head = await _read_head(blobs, artifact.blob_key)
    shortened = artifact.bytes > len(head)
    if b"\x00" in head:
        return None
    text = head.decode("utf-8", "replace")
    if kind == "markdown":
        return Preview("markdown", html=markdown.render(text), shortened=shortened)
    if kind == "table":
        rows, more = _table(text)
        return Preview("table", rows=rows, shortened=shortened or more)
    return Preview("text", text=text, shortened=shortened)


async def _read_head(blobs: BlobStore, key: str) -> bytes:
    """Up to :data:`PREVIEW_BYTES` of a blob (one read of a local file)."""
    chunks = await blobs.open(key, chunk_size=PREVIEW_BYTES)
    try:
        return await anext(chunks, b"")
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()


def _table(text: str) -> tuple[tuple[tuple[str, ...], ...], bool]:
    rows: list[tuple[str, ...]] = []
    reader = csv.reader(io.StringIO(text))
    try:
        for row in reader:
            if len(rows) == TABLE_ROWS:
                return tuple(rows), True
            rows.append(tuple(row[:TABLE_COLUMNS]))
    except csv.Error:
        pass
    return tuple(rows), False
