"""Content types, detected from the bytes and the name: a client's claim is never used.

Detection only labels a file; serving never trusts the label either (downloads go out as
attachments with ``nosniff``). Types a browser would run are served as octet-stream.
"""

from __future__ import annotations

import mimetypes
from types import MappingProxyType

OCTET_STREAM = "application/octet-stream"

#: Leading bytes of formats that are safe to recognise by their magic number.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"%PDF-", "application/pdf"),
    (b"PK\x03\x04", "application/zip"),
    (b"\x1f\x8b", "application/gzip"),
    (b"BZh", "application/x-bzip2"),
    (b"\xfd7zXZ\x00", "application/x-xz"),
    (b"\x28\xb5\x2f\xfd", "application/zstd"),
    (b"SQLite format 3\x00", "application/vnd.sqlite3"),
)
#: Zip containers whose extension tells the real type.
_ZIP_FAMILY = MappingProxyType(
    {
        ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        ".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        ".jar": "application/java-archive",
        ".whl": "application/zip",
    }
)
_TEXT_BY_EXTENSION = MappingProxyType(
    {
        ".md": "text/markdown",
        ".jsonl": "application/jsonl",
        ".ndjson": "application/jsonl",
        ".yaml": "application/yaml",
        ".yml": "application/yaml",
        ".toml": "application/toml",
        ".py": "text/x-python",
        ".ts": "text/plain",
        ".log": "text/plain",
    }
)
TEXT_APPLICATIONS = frozenset(
    {
        "application/json",
        "application/jsonl",
        "application/yaml",
        "application/toml",
        "application/x-sh",
        "application/sql",
    }
)
#: Types a browser renders or executes; never served under their own name.
ACTIVE_TYPES = frozenset(
    {
        "text/html",
        "application/xhtml+xml",
        "image/svg+xml",
        "text/xml",
        "application/xml",
        "text/javascript",
        "application/javascript",
        "application/x-javascript",
        "text/css",
    }
)

SNIFF_BYTES = 512


def detect_content_type(head: bytes, filename: str) -> str:
    """The content type of a file from its first bytes (:data:`SNIFF_BYTES`) and its name."""
    ext = "." + filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            if kind == "application/zip":
                return _ZIP_FAMILY.get(ext, kind)
            return kind
    if head[8:12] == b"WEBP" and head.startswith(b"RIFF"):
        return "image/webp"
    if not _looks_like_text(head):
        return OCTET_STREAM
    guessed = _TEXT_BY_EXTENSION.get(ext) or mimetypes.guess_type("x" + ext, strict=False)[0]
    if guessed and (guessed.startswith("text/") or guessed in TEXT_APPLICATIONS):
        kind = guessed
    else:
        kind = "text/plain"
    return f"{kind}; charset=utf-8" if kind.startswith("text/") else kind


def serving_type(content_type: str) -> str:
    """What a download may be labelled with: active content becomes octet-stream."""
    base = content_type.split(";", 1)[0].strip().lower()
    return OCTET_STREAM if base in ACTIVE_TYPES else content_type


def _looks_like_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the end of the sample is still text.
        return exc.start >= len(head) - 3 and exc.reason == "unexpected end of data"
    return True
