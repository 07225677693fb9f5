"""Paths and names that come from outside: checked once, before they reach the store.

A relative path is refused (not repaired) when it could climb out of where it belongs;
an uploaded file's *name* is only a label, so it is sanitised instead.
"""

from __future__ import annotations

import re
import unicodedata

MAX_PATH_LENGTH = 1024
MAX_FILENAME_BYTES = 200

# C0 and C1 controls (a terminal obeys them), bidirectional overrides and isolates (they
# show "exe.txt" for "txt.exe"), and what a shell or another file system reads specially.
_UNSAFE_NAME_CHARS = re.compile(
    r'[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069<>:"/\\|?*]'
)
_LEADING_DOTS_AND_SPACES = re.compile(r"^[\s.]+")


class UnsafePath(ValueError):
    """A path that is absolute, climbs with ``..``, or holds NUL, backslashes or controls."""


def clean_relative_path(path: str, *, what: str = "path") -> str:
    """``path`` as a normalised relative POSIX path, or :class:`UnsafePath`.

    Refused: empty paths, absolute paths (``/x``, ``C:x``), ``..`` segments, NUL and other
    control characters, backslashes. Empty and ``.`` segments are dropped (``a//./b`` →
    ``a/b``); a trailing slash is not allowed to hide a directory name.
    """
    if not path:
        raise UnsafePath(f"{what} is empty")
    if len(path) > MAX_PATH_LENGTH:
        raise UnsafePath(f"{what} is longer than {MAX_PATH_LENGTH} characters")
    if "\\" in path:
        raise UnsafePath(f"{what} must not contain backslashes")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        raise UnsafePath(f"{what} must not contain NUL or control characters")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise UnsafePath(f"{what} must be relative")
    segments = [segment for segment in path.split("/") if segment not in ("", ".")]
    if ".." in segments:
        raise UnsafePath(f"{what} must not contain '..'")
    if not segments:
        raise UnsafePath(f"{what} is empty")
    return "/".join(segments)


def clean_prefix(prefix: str) -> str:
    """A listing prefix: like :func:`clean_relative_path`, but a trailing ``/`` is kept."""
    cleaned = clean_relative_path(prefix, what="prefix")
    return cleaned + "/" if prefix.endswith("/") else cleaned


def sanitize_filename(name: str | None, *, default: str = "file") -> str:
    """A safe display and download name from whatever a client sent.

    Keeps the last path component, replaces control, bidirectional-override and shell-hostile
    characters, refuses ``.``/``..`` and leading dots, and caps the UTF-8 length while keeping
    the extension. Sanitising a sanitised name changes nothing.
    """
    name = unicodedata.normalize("NFC", name or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = _LEADING_DOTS_AND_SPACES.sub("", _UNSAFE_NAME_CHARS.sub("_", name)).strip()
    if not name:
        return default
    if len(name.encode()) > MAX_FILENAME_BYTES:
        stem, dot, ext = name.rpartition(".")
        if not dot or len(ext) > 16:
            stem, ext = name, ""
        budget = MAX_FILENAME_BYTES - len(ext.encode()) - (1 if ext else 0)
        stem = stem.encode()[:budget].decode("utf-8", "ignore")
        name = (f"{stem}.{ext}" if ext else stem).strip()
    return name
