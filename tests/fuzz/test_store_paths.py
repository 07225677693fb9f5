"""Client paths and names: nothing that is accepted can leave the directory it names into."""

from __future__ import annotations

import os.path
import re
import unicodedata

from hypothesis import example, given
from hypothesis import strategies as st

from proxy.store.paths import (
    MAX_FILENAME_BYTES,
    UnsafePath,
    clean_prefix,
    clean_relative_path,
    sanitize_filename,
)

BASE = "/srv/blobs/collection"
BIDI_CONTROLS = frozenset(
    "\u200e\u200f\u061c\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)

# Path-like text: separators, dots and drive letters are what matter, plus anything at all.
path_text = st.text(alphabet="ab/.\\:C \x00\x1f\x7f\x85\x9b~é\u202e", max_size=30) | st.text(
    max_size=30
)


def _inside(base: str, relative: str) -> bool:
    joined = os.path.normpath(os.path.join(base, relative))
    return os.path.commonpath([base, joined]) == base and joined != base


@given(path_text)
def test_a_clean_relative_path_stays_inside_and_is_a_fixed_point(path: str) -> None:
    try:
        cleaned = clean_relative_path(path)
    except UnsafePath:
        return
    assert _inside(BASE, cleaned)
    segments = cleaned.split("/")
    assert all(segment not in ("", ".", "..") for segment in segments)
    assert not any(ord(ch) < 0x20 or ord(ch) == 0x7F or ch == "\\" for ch in cleaned)
    assert not re.match(r"[A-Za-z]:", cleaned)  # a Windows drive
    assert clean_relative_path(cleaned) == cleaned
    # Cleaning only drops empty and "." segments: the same file, never another one.
    assert os.path.normpath(path) == os.path.normpath(cleaned)


@given(path_text)
def test_a_clean_prefix_keeps_its_trailing_slash_and_stays_inside(prefix: str) -> None:
    try:
        cleaned = clean_prefix(prefix)
    except UnsafePath:
        return
    assert cleaned.endswith("/") == prefix.endswith("/")
    assert _inside(BASE, cleaned.rstrip("/"))


@given(st.none() | path_text | st.text(min_size=150, max_size=400))
@example(". .")
@example("x" * 199 + " tail")
@example("\x9b31mred")
@example("invoice\u202etxt.exe")
def test_a_sanitized_filename_is_one_safe_component(name: str | None) -> None:
    safe = sanitize_filename(name)
    assert safe
    assert "/" not in safe and "\\" not in safe
    assert safe not in (".", "..") and not safe.startswith(".")
    # No C0/C1 controls (a terminal obeys them) and no bidirectional overrides (they make
    # "exe.txt" of "txt.exe" on screen).
    assert not any(unicodedata.category(ch) == "Cc" or ch in BIDI_CONTROLS for ch in safe)
    assert safe == safe.strip()
    assert len(safe.encode()) <= MAX_FILENAME_BYTES
    assert safe == unicodedata.normalize("NFC", safe) or len(safe.encode()) == MAX_FILENAME_BYTES
    assert os.path.dirname(os.path.join(BASE, safe)) == BASE
    assert sanitize_filename(safe) == safe
