"""Paths and names that come from outside: checked once, before they reach the store.

A relative path is refused (not repaired) when it could climb out of where it belongs;
an uploaded file's *name* is only a label, so it is sanitised instead. A run's result files
keep their paths, but with every character a URL, a zip or a terminal cannot carry replaced
(:func:`portable_path`), so that each one is reachable by its link and lands in the zip under
the same name.
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
# What a result's path may not hold: controls (C0, DEL, C1), lone surrogates (bytes that were
# not UTF-8), line and paragraph separators, the bidirectional controls that make a name read
# in another order than it is (RLO turns "txt.exe" into "exe.txt"), and backslashes.
_NOT_PORTABLE = re.compile(
    r"[\x00-\x1f\x7f-\x9f\\\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]"
)
_DRIVE = re.compile(r"^[A-Za-z]:")


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


def portable_path(path: str) -> str:
    """A result's relative ``path`` with what a URL, a zip or a terminal cannot carry replaced.

    Controls, separators, bidirectional controls and backslashes become ``_``; a name that is
    not UTF-8 (lone surrogates) gets ``\ufffd`` for each bad byte, as a tar reader shows it; a
    leading drive (``C:x.txt``) becomes ``C_x.txt``. The result is what
    :func:`clean_relative_path` makes of that (so it passes it unchanged), or
    :class:`UnsafePath` is raised (too long, a ``..`` component). A path that needs nothing is
    returned as it is.
    """
    replaced = _NOT_PORTABLE.sub(_replacement, path)
    replaced = _DRIVE.sub(lambda match: match[0][0] + "_", replaced)
    return clean_relative_path(replaced, what="result path")


def shown(text: str) -> str:
    """``text`` quoted for a message or a log, with what a terminal would act on escaped."""
    return "'" + _NOT_PORTABLE.sub(_escape, text).replace("'", "\\'") + "'"


def _replacement(match: re.Match[str]) -> str:
    return "\ufffd" if "\ud800" <= match[0] <= "\udfff" else "_"


def _escape(match: re.Match[str]) -> str:
    char = match[0]
    if "\udc80" <= char <= "\udcff":  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{ord(char) - 0xDC00:02x}"
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
