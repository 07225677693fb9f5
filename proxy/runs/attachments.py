"""What a chat turn attaches, as the run's input files in /app/assets, named in its instruction.

Two kinds of attachment reach a run this way (`proxy.chatui` reads both, without I/O):

* OpenAI's attachment parts in the user's messages: ``file`` (``file_id`` from ``/v1/files``,
  or ``file_data`` with a ``filename``), ``image_url`` with a ``data:`` URL, ``input_audio``.
  A ``file_id`` must be a file of the run's collection (any other is unknown: 404).
* the sources of Open WebUI's retrieval context: one text file per source, holding the
  passages the chat retrieved from it.

A chat UI resends the whole conversation with every turn, and with it the files attached to
earlier messages: each file is written once per run and keeps its name from turn to turn. The
agent's instruction ends with a note naming the files and where they came from.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from proxy.chatui.attachments import Attachment, AttachmentLimits, parse_attachments, unique_name
from proxy.chatui.retrieval import Source
from proxy.errors import NotFound, PayloadTooLarge
from proxy.sandbox import FileContent
from proxy.store import Store
from proxy.store.blobs import BlobStore, file_source
from proxy.store.paths import sanitize_filename

__all__ = ["AttachedFiles", "attached_files"]

ASSETS = "/app/assets/"


@dataclass(frozen=True)
class AttachedFiles:
    """The files to write under /app/assets (by name), and the note that names them to the
    agent (empty when there are none)."""

    files: dict[str, FileContent]
    note: str


async def attached_files(
    messages: Sequence[Any],
    sources: Sequence[Source],
    *,
    collection: str,
    store: Store,
    blobs: BlobStore,
    limits: AttachmentLimits,
    taken: Iterable[str] = (),
) -> AttachedFiles:
    """The attachments of ``messages`` (as the client sent them, so that errors name its
    parts) and the retrieved ``sources``, under names that avoid ``taken``.

    Raises a 400 or 413 (`parse_attachments`), or a 404 for an unknown ``file_id``, naming the
    content part.
    """
    found = parse_attachments(messages, limits, taken=taken)
    names = {*taken, *(a.name for a in found if a.name is not None)}
    files: dict[str, FileContent] = {}
    attached: list[tuple[str, str]] = []  # (name, param)
    total = sum(len(a.data) for a in found if a.data is not None)
    for attachment in found:
        if attachment.data is not None and attachment.name is not None:
            files[attachment.name] = attachment.data
            attached.append((attachment.name, attachment.param))
            continue
        name, content, size = await _stored_file(attachment, collection, store, blobs, names)
        total += size
        if size > limits.max_file_bytes:
            raise PayloadTooLarge(
                f"An attached file is larger than the limit of {limits.max_file_bytes} bytes.",
                param=attachment.param,
                code="file_too_large",
            )
        if total > limits.max_total_bytes:
            raise PayloadTooLarge(
                f"The attached files add up to more than {limits.max_total_bytes} bytes.",
                param=attachment.param,
                code="attachments_too_large",
            )
        names.add(name)
        files[name] = content
        attached.append((name, attachment.param))
    retrieved: list[tuple[str, str]] = []  # (name, source)
    for source in sources:
        name = unique_name(_source_filename(source.name), names)
        names.add(name)
        files[name] = source.text.encode()
        retrieved.append((name, source.name))
    return AttachedFiles(files, _note(attached, retrieved, _last_user(messages)))


async def _stored_file(
    attachment: Attachment, collection: str, store: Store, blobs: BlobStore, names: set[str]
) -> tuple[str, FileContent, int]:
    """A ``file_id`` attachment's name, content and size; 404 when the collection has no such
    file."""
    file_id = attachment.file_id or ""
    record = await store.get_file(file_id)
    if record is None or record.collection != collection:
        raise NotFound(f"No file with id '{file_id}'.", param=f"{attachment.param}.file_id")
    name = unique_name(sanitize_filename(record.filename, default="attachment"), names)
    return name, await file_source(blobs, record.blob_key), record.bytes


def _source_filename(name: str) -> str:
    """A file name for a retrieved source: its document's name, with ``.txt`` added unless that
    already names text (passages of ``report.pdf`` are not a PDF); a URL by its host and path."""
    if "://" in name:
        url = urlsplit(name)
        name = f"{url.netloc}{url.path}".rstrip("/").replace("/", "_")
    name = sanitize_filename(name, default="source")
    media_type, _ = mimetypes.guess_type(name)
    return name if media_type is not None and media_type.startswith("text/") else f"{name}.txt"


def _last_user(messages: Sequence[Any]) -> int | None:
    return max(
        (i for i, m in enumerate(messages) if isinstance(m, Mapping) and m.get("role") == "user"),
        default=None,
    )


def _note(
    attached: Sequence[tuple[str, str]], retrieved: Sequence[tuple[str, str]], last_user: int | None
) -> str:
    """The paragraph that tells the agent which files it has, and where they came from."""
    current = f"messages[{last_user}]."
    now = [name for name, param in attached if param.startswith(current)]
    earlier = [name for name, param in attached if not param.startswith(current)]
    lines = []
    if now:
        lines.append(f"The user attached these files to this message, in {ASSETS}: {_names(now)}.")
    if retrieved:
        named = ", ".join(f"`{name}` (from {source})" for name, source in retrieved)
        lines.append(
            f"Passages the chat retrieved for this message from the user's documents, one file"
            f" per document, in {ASSETS}: {named}."
        )
    if earlier:
        lines.append(
            f"Files attached earlier in this conversation, in {ASSETS}: {_names(earlier)}."
        )
    return "\n\n" + "\n".join(lines) if lines else ""


def _names(names: Sequence[str]) -> str:
    return ", ".join(f"`{name}`" for name in names)
