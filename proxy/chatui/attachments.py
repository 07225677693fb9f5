"""Files attached to chat messages the OpenAI way, parsed into named inputs for ``/app/assets``.

OpenAI's chat API carries files inside a user message's content parts::

    {"type": "file", "file": {"file_id": "file-abc"}}                       # from /v1/files
    {"type": "file", "file": {"filename": "q3.pdf", "file_data": "data:application/pdf;base64,…"}}
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,…"}}
    {"type": "input_audio", "input_audio": {"data": "…base64…", "format": "wav"}}

:func:`parse_attachments` turns the user messages' parts into :class:`Attachment` values: the
bytes (or the file id, which the caller resolves in its store), and a name that is safe and
unique under ``/app/assets``. Everything that cannot become a file is refused with an
OpenAI-shaped error naming the part (``messages[2].content[1]``): data over the limits (413),
bad base64, a file name that tries to leave the directory, media that is not a file (an image
by ``https://`` URL: the server fetches nothing on a client's behalf), an unknown part type
(400). A part repeated in a later message (chat UIs resend the whole conversation) counts once,
and keeps its name: the names given to unnamed parts (``image-1.png``) are numbered in order of
first appearance, so a conversation's files keep their names from one turn to the next.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import mimetypes
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote_to_bytes

from proxy.errors import BadRequest, PayloadTooLarge
from proxy.store.paths import sanitize_filename

#: Image types OpenAI accepts as ``image_url`` input, and the extension each is saved with.
IMAGE_TYPES = MappingProxyType(
    {"image/png": ".png", "image/jpeg": ".jpg", "image/gif": ".gif", "image/webp": ".webp"}
)
AUDIO_FORMATS = frozenset({"wav", "mp3"})
#: The content part types that carry a file.
ATTACHMENT_PARTS = frozenset({"file", "image_url", "input_audio"})
_TEXT_PARTS = frozenset({"text", "refusal"})


@dataclass(frozen=True)
class AttachmentLimits:
    """Caps on what a request may attach: files, bytes per file, bytes in all."""

    max_files: int
    max_file_bytes: int
    max_total_bytes: int


@dataclass(frozen=True)
class Attachment:
    """One attached file.

    Exactly one of ``data`` (the bytes, sent inline) and ``file_id`` (a ``/v1/files`` id the
    caller looks up) is set. ``name`` is the file's safe name under ``/app/assets``; for a file
    id it is None until the caller knows the stored file's name (see :func:`unique_name`).
    ``param`` names the content part, for errors about it.
    """

    param: str
    name: str | None = None
    data: bytes | None = None
    file_id: str | None = None
    media_type: str | None = None


def parse_attachments(
    messages: Sequence[Any], limits: AttachmentLimits, *, taken: Iterable[str] = ()
) -> list[Attachment]:
    """The attachments of every user message, in order; names avoid those in ``taken``.

    Raises :class:`BadRequest` (400) or :class:`PayloadTooLarge` (413) naming the part.
    """
    names = set(taken)
    found: list[Attachment] = []
    seen: set[tuple[str, str]] = set()
    total = 0
    counters: dict[str, int] = {}
    for m, message in enumerate(messages):
        if not isinstance(message, Mapping) or message.get("role") != "user":
            continue
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for p, part in enumerate(content):
            item = _parse_part(part, f"messages[{m}].content[{p}]", limits)
            if item is None:
                continue
            if item.identity in seen:
                continue
            seen.add(item.identity)
            if len(found) == limits.max_files:
                raise BadRequest(
                    f"Too many attached files: at most {limits.max_files} per request.",
                    param=item.param,
                    code="too_many_files",
                )
            if item.data is not None:
                total += len(item.data)
                if total > limits.max_total_bytes:
                    raise PayloadTooLarge(
                        f"The attached files add up to more than {limits.max_total_bytes} bytes.",
                        param=item.param,
                        code="attachments_too_large",
                    )
            name = None
            if item.file_id is None:
                name = unique_name(item.name or _numbered(item.unnamed, counters), names)
                names.add(name)
            found.append(
                Attachment(
                    param=item.param,
                    name=name,
                    data=item.data,
                    file_id=item.file_id,
                    media_type=item.media_type,
                )
            )
    return found


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``stem-2.ext``, ``stem-3.ext``… whichever ``taken`` does not hold yet."""
    if name not in taken:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, dot, ext = name, "", ""
    number = 2
    while f"{stem}-{number}{dot}{ext}" in taken:
        number += 1
    return f"{stem}-{number}{dot}{ext}"


@dataclass(frozen=True)
class _Part:
    """One attachment part as read, before it is named: by its client's ``name``, else
    ``unnamed`` (``("image", ".png")``) is numbered once the part is known to be new."""

    param: str
    data: bytes | None = None
    file_id: str | None = None
    media_type: str | None = None
    name: str | None = None
    unnamed: tuple[str, str] = ("attachment", ".bin")

    @property
    def identity(self) -> tuple[str, str]:
        """Equal for the same file sent again (a chat UI resends the conversation)."""
        if self.file_id is not None:
            return ("file_id", self.file_id)
        digest = hashlib.sha256(self.data or b"").hexdigest()
        return (self.name or "".join(self.unnamed), digest)


def _numbered(unnamed: tuple[str, str], counters: dict[str, int]) -> str:
    stem, extension = unnamed
    counters[stem] = counters.get(stem, 0) + 1
    return f"{stem}-{counters[stem]}{extension}"


def _parse_part(part: object, param: str, limits: AttachmentLimits) -> _Part | None:
    if not isinstance(part, Mapping):
        raise BadRequest("A content part must be an object.", param=param, code="invalid_value")
    kind = part.get("type")
    if kind in _TEXT_PARTS:
        return None
    if kind == "file":
        return _file_part(part.get("file"), param, limits)
    if kind == "image_url":
        return _image_part(part.get("image_url"), param, limits)
    if kind == "input_audio":
        return _audio_part(part.get("input_audio"), param, limits)
    raise BadRequest(
        f"Content parts of type {kind!r} cannot be given to an agent run; attach files as"
        " 'file', 'image_url' (a data: URL) or 'input_audio' parts.",
        param=f"{param}.type",
        code="unsupported_content_part",
    )


def _file_part(file: object, param: str, limits: AttachmentLimits) -> _Part:
    param = f"{param}.file"
    if not isinstance(file, Mapping):
        raise BadRequest("'file' must be an object.", param=param, code="invalid_value")
    file_id, file_data, filename = file.get("file_id"), file.get("file_data"), file.get("filename")
    if file_id is not None and file_data is not None:
        raise BadRequest(
            "Give 'file_id' or 'file_data', not both.", param=param, code="invalid_value"
        )
    if file_id is not None:
        if not isinstance(file_id, str) or not file_id:
            raise BadRequest(
                "'file_id' must be a file id.", param=f"{param}.file_id", code="invalid_value"
            )
        return _Part(param=param, file_id=file_id)
    if not isinstance(file_data, str) or not file_data:
        raise BadRequest(
            "A 'file' part needs 'file_id' (from /v1/files) or 'file_data' (base64).",
            param=param,
            code="invalid_value",
        )
    media_type, data = _decode(file_data, f"{param}.file_data", limits)
    if filename is None:
        extension = (mimetypes.guess_extension(media_type) if media_type else None) or ".bin"
        return _Part(param, data, media_type=media_type, unnamed=("attachment", extension))
    name = _safe_filename(filename, f"{param}.filename")
    return _Part(param, data, media_type=media_type, name=name)


def _image_part(image: object, param: str, limits: AttachmentLimits) -> _Part:
    param = f"{param}.image_url"
    url = image.get("url") if isinstance(image, Mapping) else None
    if not isinstance(url, str) or not url:
        raise BadRequest("'image_url.url' must be a string.", param=param, code="invalid_value")
    if not url.startswith("data:"):
        raise BadRequest(
            "Images are taken as data: URLs only (data:image/png;base64,…); the server does not"
            " fetch URLs for a run.",
            param=f"{param}.url",
            code="unsupported_media",
        )
    media_type, data = _decode(url, f"{param}.url", limits)
    extension = IMAGE_TYPES.get(media_type or "")
    if extension is None:
        raise BadRequest(
            f"Unsupported image type {media_type or 'unknown'!r}: send PNG, JPEG, GIF or WebP.",
            param=f"{param}.url",
            code="unsupported_media",
        )
    return _Part(param, data, media_type=media_type, unnamed=("image", extension))


def _audio_part(audio: object, param: str, limits: AttachmentLimits) -> _Part:
    param = f"{param}.input_audio"
    if not isinstance(audio, Mapping):
        raise BadRequest("'input_audio' must be an object.", param=param, code="invalid_value")
    audio_format = audio.get("format")
    if audio_format not in AUDIO_FORMATS:
        raise BadRequest(
            "'input_audio.format' must be 'wav' or 'mp3'.",
            param=f"{param}.format",
            code="unsupported_media",
        )
    raw = audio.get("data")
    if not isinstance(raw, str) or not raw:
        raise BadRequest(
            "'input_audio.data' must be base64.", param=f"{param}.data", code="invalid_value"
        )
    data = _base64(raw, f"{param}.data", limits)
    media_type = "audio/wav" if audio_format == "wav" else "audio/mpeg"
    return _Part(param, data, media_type=media_type, unnamed=("audio", f".{audio_format}"))


def _decode(value: str, param: str, limits: AttachmentLimits) -> tuple[str | None, bytes]:
    """The media type and bytes of a ``data:`` URL, or of bare base64 (no media type)."""
    if not value.startswith("data:"):
        return None, _base64(value, param, limits)
    header, comma, payload = value[5:].partition(",")
    if not comma:
        raise BadRequest("Malformed data: URL (no ',').", param=param, code="invalid_data_url")
    fields = header.split(";")
    media_type = fields[0].strip().lower() or None
    if "base64" in (f.strip().lower() for f in fields[1:]):
        return media_type, _base64(payload, param, limits)
    data = unquote_to_bytes(payload)
    _check_size(len(data), param, limits)
    return media_type, data


def _base64(value: str, param: str, limits: AttachmentLimits) -> bytes:
    compact = "".join(value.split())
    # Refused from its length, before decoding a byte of it.
    _check_size(len(compact) // 4 * 3 - compact[-2:].count("="), param, limits)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(
            f"Invalid base64 in '{param}': {exc}.", param=param, code="invalid_base64"
        ) from exc


def _check_size(size: int, param: str, limits: AttachmentLimits) -> None:
    if size > limits.max_file_bytes:
        raise PayloadTooLarge(
            f"An attached file is larger than the limit of {limits.max_file_bytes} bytes.",
            param=param,
            code="file_too_large",
        )


def _safe_filename(filename: object, param: str) -> str:
    """A client's file name as a name under /app/assets: bare names only, no way out."""
    if not isinstance(filename, str) or not filename.strip():
        raise BadRequest("'filename' must be a file name.", param=param, code="invalid_filename")
    if (
        "/" in filename
        or "\\" in filename
        or filename.strip() in (".", "..")
        or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in filename)
    ):
        raise BadRequest(
            f"Invalid file name {filename!r}: a bare name is expected, without directories,"
            " '..' or control characters.",
            param=param,
            code="invalid_filename",
        )
    return sanitize_filename(filename, default="attachment")
